"""Serial bytes as websocket text: nothing lost, nothing altered, however the reads fall."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.console.utf8 import TextSplitter, split


def _joined(frames: list[str | bytes]) -> bytes:
    return b"".join(f.encode() if isinstance(f, str) else f for f in frames)


@given(
    st.lists(st.one_of(st.text().map(str.encode), st.binary(max_size=8)), max_size=12).map(
        b"".join
    ),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40),
)
def test_any_bytes_in_any_reads_come_out_whole(data: bytes, cuts: list[int]) -> None:
    splitter = TextSplitter()
    frames: list[str | bytes] = []
    at, n = 0, 0
    while at < len(data):
        size = cuts[n % len(cuts)]
        frames += splitter.feed(data[at : at + size])
        at, n = at + size, n + 1
    frames += splitter.flush()
    assert _joined(frames) == data
    for frame in frames:
        if isinstance(frame, bytes):  # binary frames hold only what no text frame could
            assert not split(frame) or all(isinstance(f, bytes) for f in split(frame))


def test_a_character_split_across_reads_goes_out_whole_as_text() -> None:
    splitter = TextSplitter()
    snowman = "☃".encode()
    assert splitter.feed(b"a" + snowman[:2]) == ["a"]
    assert splitter.feed(snowman[2:] + b"b") == ["☃b"]


def test_bytes_that_are_not_utf8_go_in_binary_frames_in_their_place() -> None:
    assert split(b"ok \xff\xfe then \xc3\xa9") == ["ok ", b"\xff\xfe", " then é"]
