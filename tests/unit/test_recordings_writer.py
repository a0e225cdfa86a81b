"""The recorder and its writer thread, on real files and a real ``lab.db``: what is on
disk within a second, the bounds per session and in total, and a lab that stopped
without ending its recordings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.access.store import LabDatabase
from gateway.console.sessions import ConsoleSession, Output, Role
from gateway.recordings import RecordingNotFound, cast
from gateway.recordings.index import RecordingIndex
from gateway.recordings.recorder import LAB_STOPPED, Recorder
from gateway.recordings.settings import RecordingSettings
from gateway.recordings.writer import MAX_PENDING_BYTES, RecordingWriter
from gateway.testing.timeouts import scaled

VM_ID = "/subscriptions/s/resourceGroups/lab-rg/providers/Microsoft.Compute/virtualMachines/linux-1"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LabDatabase]:
    database = LabDatabase(tmp_path / "lab.db")
    yield database
    database.close()


def _recorder(tmp_path: Path, db: LabDatabase, **settings: object) -> Recorder:
    return Recorder(tmp_path / "recordings", db, RecordingSettings(**settings))  # type: ignore[arg-type]


def _session(sid: str, user: str = "alice") -> ConsoleSession:
    return ConsoleSession(sid, user, "linux-1", Role.WRITER)


def _wait_for(predicate: object, within: float) -> float:
    """Seconds until ``predicate()`` held; fails past ``within``. (A file on disk has no
    event to await: polled every 10 ms.)"""
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - began < within, "not on disk in time"
        time.sleep(0.01)
    return time.monotonic() - began


def test_what_happened_is_on_disk_within_a_second(tmp_path: Path, db: LabDatabase) -> None:
    recorder = _recorder(tmp_path, db)
    try:
        rec = recorder.start(_session("s1"), vm_id=VM_ID, door="websocket")
        assert rec is not None
        rec.message("Connected to the serial port of the VM.")
        rec.took([Output(0, b"linux-1 login: ")])
        rec.marker("SysRq h by alice (websocket)")
        row, path = None, None

        def written() -> bool:
            nonlocal row, path
            try:
                row, path = recorder.find(VM_ID, "s1")
            except RecordingNotFound:
                return False
            return "SysRq h" in path.read_text()

        assert _wait_for(written, scaled(1.0)) < 1.0  # a crash now would lose nothing
        assert row is not None
        assert row.ended is None
        recording = cast.parse(path.read_text())  # type: ignore[union-attr]
        assert [c for _, c, _ in recording.events] == ["o", "o", "m"]
        assert "linux-1 login: " in recording.output()
        assert not [c for _, c, _ in recording.events if c == "i"]
    finally:
        recorder.close()


def test_typed_bytes_are_kept_only_when_input_recording_is_on(
    tmp_path: Path, db: LabDatabase
) -> None:
    recorder = _recorder(tmp_path, db, record_input=True)
    rec = recorder.start(_session("s1"), vm_id=VM_ID, door="ssh")
    assert rec is not None
    assert rec.records_input
    rec.typed(b"serial-lab\r")
    rec.ended("client left")
    recorder.close()
    row, path = recorder.find(VM_ID, "s1")
    recording = cast.parse(path.read_text())
    assert recording.header["serial_console_lab"]["input"] is True
    assert (recording.events[0][1], recording.events[0][2]) == ("i", "serial-lab\r")
    assert (row.how, row.input, row.bytes) == ("client left", True, path.stat().st_size)


def test_a_session_stops_growing_at_its_bound_and_says_so(tmp_path: Path, db: LabDatabase) -> None:
    recorder = _recorder(tmp_path, db, session_bytes=4096)
    rec = recorder.start(_session("s1"), vm_id=VM_ID, door="websocket")
    assert rec is not None
    for i in range(100):
        rec.took([Output(i * 100, b"x" * 100)])
    rec.ended("client left", "The gateway is shutting down.")
    recorder.close()
    row, path = recorder.find(VM_ID, "s1")
    text = path.read_text()
    assert row.truncated
    assert len(text.encode()) <= 4096 + 300
    assert "reached the lab's limit of 4096 bytes" in cast.parse(text).output()
    assert "shutting down" not in text  # nothing after the bound
    assert rec.full  # the session posts no more output: it would not be kept


def test_a_disk_that_falls_behind_loses_recording_never_memory(
    tmp_path: Path, db: LabDatabase
) -> None:
    writer = RecordingWriter(tmp_path, RecordingIndex(db), RecordingSettings())  # not started
    chunk = [Output(0, b"z" * (1 << 20))]
    for _ in range(MAX_PENDING_BYTES // (1 << 20) + 10):
        writer.post(("s1", 0.0, "items", chunk), 1 << 20)
    assert writer.dropped == 10
    assert writer.posted_bytes - writer.taken_bytes <= MAX_PENDING_BYTES
    writer.drain()  # an unknown session's entries are taken and forgotten
    assert writer.posted_bytes == writer.taken_bytes


def test_past_the_total_the_oldest_finished_recordings_go_first(
    tmp_path: Path, db: LabDatabase
) -> None:
    recorder = _recorder(tmp_path, db, total_bytes=6000)
    running = recorder.start(_session("running"), vm_id=VM_ID, door="websocket")
    assert running is not None
    running.took([Output(0, b"r" * 1500)])
    for n in range(4):
        rec = recorder.start(_session(f"old{n}"), vm_id=VM_ID, door="websocket")
        assert rec is not None
        rec.took([Output(0, b"y" * 1500)])
        rec.ended("client left")
        recorder.writer.drain()  # one after the other, as sessions end
    _wait_for(lambda: len(recorder.sessions(VM_ID)) < 5, scaled(3.0))
    kept = [row.id for row in recorder.sessions(VM_ID)]
    assert "running" in kept  # never removed while it runs
    assert "old3" in kept
    assert "old0" not in kept  # the oldest went first
    assert not list((tmp_path / "recordings").rglob("*old0.cast"))
    assert sum(row.bytes for row in recorder.sessions(VM_ID)) <= 6000
    recorder.close()


def test_a_lab_that_stopped_without_ending_a_recording_ends_it_at_the_next_start(
    tmp_path: Path, db: LabDatabase
) -> None:
    first = _recorder(tmp_path, db)
    rec = first.start(_session("s1"), vm_id=VM_ID, door="websocket")
    assert rec is not None
    rec.took([Output(0, b"booting\r\n")])
    first.close()
    # What a lab killed mid-session leaves: a row with no end.
    db.execute("UPDATE recordings SET ended = NULL, how = '', bytes = 0 WHERE id = 's1'")

    second = _recorder(tmp_path, db)
    try:
        row, path = second.find(VM_ID, "s1")
        assert row.how == LAB_STOPPED
        assert row.bytes == path.stat().st_size
        assert "booting" in cast.parse(path.read_text()).output()
    finally:
        second.close()


def test_an_unknown_session_says_how_to_find_one(tmp_path: Path, db: LabDatabase) -> None:
    recorder = _recorder(tmp_path, db)
    try:
        with pytest.raises(RecordingNotFound, match="serial-console recording list"):
            recorder.find(VM_ID, "nope")
        assert recorder.start(_session("x"), vm_id=VM_ID, door="ssh") is not None
    finally:
        recorder.close()
    off = _recorder(tmp_path, db, enabled=False)
    try:
        assert off.start(_session("y"), vm_id=VM_ID, door="ssh") is None
    finally:
        off.close()
