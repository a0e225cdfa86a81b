"""The boot-diagnostics ring: offsets, rotation, persistence across a gateway restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.console.bootlog import META_NAME, BootLog, BootLogError


def test_read_returns_what_was_appended_with_offsets(tmp_path: Path) -> None:
    """A reader gets every byte the guest wrote, and `next` to continue from."""
    log = BootLog(tmp_path, capacity=64)
    log.append(b"hello ")
    log.append(b"world")
    contents, start, nxt, rotated = log.read(0)
    assert (contents, start, nxt, rotated) == (b"hello world", 0, 11, False)
    assert log.read(nxt) == (b"", 11, 11, False)
    log.append(b"!")
    assert log.read(nxt) == (b"!", 11, 12, False)
    log.close()


def test_max_bytes_pages_through_the_log(tmp_path: Path) -> None:
    """A reader can page with `max_bytes`, feeding `next` back as `start`."""
    log = BootLog(tmp_path, capacity=64)
    log.append(b"abcdefghij")
    pages, start = [], 0
    while True:
        page = log.read(start, max_bytes=4)
        if not page.contents:
            break
        pages.append(page.contents)
        start = page.next
    assert pages == [b"abcd", b"efgh", b"ij"]


def test_ring_keeps_newest_bytes_and_reports_rotation(tmp_path: Path) -> None:
    """Old output rotates away; asking for it says so and starts at the oldest kept byte."""
    log = BootLog(tmp_path, capacity=10)
    log.append(b"0123456789")
    log.append(b"abcd")
    assert (log.first, log.end) == (4, 14)
    page = log.read(0)
    assert page == (b"456789abcd", 4, 14, True)
    assert log.read(6) == (b"6789abcd", 6, 14, False)


def test_chunk_larger_than_ring_keeps_its_tail(tmp_path: Path) -> None:
    """A burst longer than the ring still advances offsets by its full length."""
    log = BootLog(tmp_path, capacity=8)
    log.append(b"x" * 5)
    log.append(bytes(range(20)))
    assert (log.first, log.end) == (17, 25)
    assert log.read().contents == bytes(range(12, 20))


def test_start_beyond_end_reads_nothing(tmp_path: Path) -> None:
    """A caller ahead of the guest gets no bytes and the current end."""
    log = BootLog(tmp_path, capacity=8)
    log.append(b"abc")
    assert log.read(100) == (b"", 3, 3, False)


def test_offsets_survive_a_restart(tmp_path: Path) -> None:
    """After a gateway restart, offsets go on from where they were; nothing restarts at 0."""
    log = BootLog(tmp_path, capacity=16)
    log.append(b"first boot\n")
    log.close()
    again = BootLog(tmp_path, capacity=16)
    assert again.end == 11
    again.append(b"second\n")
    assert again.end == 18
    assert again.read(11) == (b"second\n", 11, 18, False)
    assert again.read(0).contents == b"rst boot\nsecond\n"
    again.close()


def test_unclean_stop_never_mislabels_bytes(tmp_path: Path) -> None:
    """After a crash, bytes that may have been overwritten unrecorded are not served."""
    log = BootLog(tmp_path, capacity=1 << 20, flush_bytes=1 << 30, flush_interval=1e9)
    log.append(b"a" * 100)
    log.flush()
    log.append(b"b" * 100)  # not flushed: the sidecar still says end=100
    # Simulate a crash: the process dies without close().
    meta = json.loads((tmp_path / META_NAME).read_text())
    assert meta["end"] == 100
    assert meta["clean"] is False
    again = BootLog(tmp_path, capacity=1 << 20)
    page = again.read(0)
    assert page.next == 100
    assert page.contents == b"a" * 100
    assert again.end >= 200  # new output never reuses an offset a client may have seen


def test_after_a_crash_offsets_are_never_given_twice(tmp_path: Path) -> None:
    """A watcher received bytes up to offset 300 000 that the sidecar never recorded; the
    lab is killed. After the restart the new boot starts past every offset handed out, the
    lost offsets read as rotated, and the bytes flushed before the crash are still there."""
    log = BootLog(tmp_path, capacity=1 << 20, flush_bytes=1 << 30, flush_interval=1e9)
    log.append(b"old boot\n" * 1000)
    log.flush()
    flushed = log.end
    log.append(b"x" * 290_000)  # seen by clients, never flushed
    seen = log.end
    del log  # killed: no close()
    again = BootLog(tmp_path, capacity=1 << 20)
    assert again.end > seen
    start = again.end
    again.append(b"new boot\n")
    assert again.read(start).contents == b"new boot\n"
    assert again.read(0).contents == b"old boot\n" * 1000
    gone = again.read(flushed + 5)
    assert gone.rotated
    assert gone.start == start
    assert gone.contents == b"new boot\n"
    whole = again.read_kept()  # a blob download: both sides of the hole, in order
    assert whole.contents == b"old boot\n" * 1000 + b"new boot\n"
    assert whole.rotated
    again.close()
    reopened = BootLog(tmp_path, capacity=1 << 20)  # the hole is remembered
    assert reopened.read(0).contents == b"old boot\n" * 1000
    assert reopened.read(seen - 1).start == start
    reopened.close()


def test_capacity_change_keeps_newest_bytes(tmp_path: Path) -> None:
    """Shrinking the ring keeps the newest bytes under their original offsets."""
    log = BootLog(tmp_path, capacity=32)
    log.append(b"0123456789abcdef")
    log.close()
    small = BootLog(tmp_path, capacity=8)
    assert small.read() == (b"89abcdef", 8, 16, False)
    small.append(b"XY")
    assert small.read() == (b"abcdefXY", 10, 18, False)


def test_closed_log_refuses_use(tmp_path: Path) -> None:
    """Using a closed log is a clear error, not a crash on a stale file descriptor."""
    log = BootLog(tmp_path, capacity=8)
    log.close()
    log.close()
    with pytest.raises(BootLogError, match="closed"):
        log.append(b"x")


def test_corrupt_sidecar_starts_empty(tmp_path: Path) -> None:
    """A damaged sidecar of a new log is reported and the log starts again instead of
    failing the VM."""
    (tmp_path / META_NAME).write_text("{not json")
    log = BootLog(tmp_path, capacity=8)
    assert (log.first, log.end) == (0, 0)


def test_a_damaged_sidecar_never_restarts_offsets_below_the_reservation(tmp_path: Path) -> None:
    """Offsets a client may have seen are never given again, even when the sidecar is lost:
    the reservation carries them on."""
    log = BootLog(tmp_path, capacity=1 << 20, flush_bytes=1 << 30, flush_interval=1e9)
    log.append(b"a" * 5000)
    seen = log.end
    del log
    (tmp_path / META_NAME).write_text("{not json")
    again = BootLog(tmp_path, capacity=1 << 20)
    assert again.end >= seen
    assert again.read(0).rotated


def test_a_clean_reservation_loses_nothing(tmp_path: Path) -> None:
    """A crash right after a flush that reached the reservation keeps every byte."""
    log = BootLog(tmp_path, capacity=1 << 20, flush_bytes=1 << 30, flush_interval=1e9)
    log.append(b"k" * log.reserve_step)  # exactly up to the reservation made at open
    log.flush()
    kept = log.end
    del log
    again = BootLog(tmp_path, capacity=1 << 20)
    assert again.read(0).contents == b"k" * kept


def test_a_crash_after_a_disk_hole_never_serves_the_hole(tmp_path: Path) -> None:
    """A hole from a failing disk, then a crash: the old hole's offsets are never served
    as bytes (they are reported lost), whatever the recovery does."""
    log = FullDisk(tmp_path, capacity=1 << 20, flush_bytes=1 << 30, flush_interval=1e9)
    log.append(b"a" * 100)
    log.full = True
    with pytest.raises(BootLogError):
        log.append(b"b" * 100)
    log.full = False
    log.append(b"c" * 100)
    log.flush()
    log.append(b"d" * 300_000)  # past the reservation, never flushed
    del log
    again = BootLog(tmp_path, capacity=1 << 20)
    page = again.read(100)
    assert page.rotated
    assert b"\0" not in page.contents
    assert page.start >= 200


def test_the_reservation_and_the_sidecar_never_share_a_file(tmp_path: Path) -> None:
    """Appends (which move the reservation) while a worker thread flushes (which writes the
    sidecar): neither write fails nor leaves the other's content in its file."""
    import threading

    log = BootLog(tmp_path, capacity=1 << 16, flush_bytes=1 << 30, flush_interval=1e9)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            log.flush_to(log.flush_mark())

    worker = threading.Thread(target=flusher)
    worker.start()
    try:
        for _ in range(3000):
            log.append(b"z" * 100)
    finally:
        stop.set()
        worker.join()
    assert (tmp_path / "serial.reserve").read_bytes().strip().isdigit()
    assert json.loads((tmp_path / META_NAME).read_text())["version"] == 1
    log.close()


def test_the_reservation_is_written_in_place_on_a_full_disk(tmp_path: Path) -> None:
    """Moving the reservation needs no new space (a full disk must not stop it)."""
    log = BootLog(tmp_path, capacity=1 << 20)
    inode = (tmp_path / "serial.reserve").stat().st_ino
    log.append(b"q" * (log.reserve_step + 1))
    assert (tmp_path / "serial.reserve").stat().st_ino == inode
    assert int((tmp_path / "serial.reserve").read_bytes()) >= log.end
    log.close()


class FullDisk(BootLog):
    """A ring whose writes fail with ENOSPC while ``full`` is set."""

    full = False

    def _write_at(self, offset: int, data: bytes) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super()._write_at(offset, data)


def test_bytes_a_full_disk_did_not_take_are_a_hole_and_the_rest_stays(tmp_path: Path) -> None:
    """While the disk is full the bytes keep their offsets but are reported lost; the bytes
    before stay readable, and the log goes on when space returns."""
    log = FullDisk(tmp_path, capacity=1 << 20)
    log.append(b"before\n")
    log.full = True
    for _ in range(3):
        with pytest.raises(BootLogError, match="No space left"):
            log.append(b"x" * 100)
    log.full = False
    log.append(b"after\n")
    assert log.end == 7 + 300 + 6
    assert log.read(0).contents == b"before\n"
    gone = log.read(7)
    assert gone.rotated
    assert (gone.start, gone.contents) == (307, b"after\n")
    assert log.read_kept().contents == b"before\nafter\n"
    log.close()
