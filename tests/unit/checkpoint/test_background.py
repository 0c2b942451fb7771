"""BackgroundWriter: one write at a time, errors surface later, memory freed, abandon."""

from __future__ import annotations

import errno
import gc
import logging
import pickle
import threading
import time
import weakref

import pytest

from ftharness.checkpoint.background import (
    AbandonOutcome,
    BackgroundWriteError,
    BackgroundWriter,
    WriteAbandoned,
    WriterBusyError,
)
from ftharness.checkpoint.durable import PIECE_BYTES


class Gate:
    """A job that blocks until the test opens it; records its thread."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self) -> None:
        self.thread = threading.current_thread()
        self.started.set()
        if not self.opened.wait(30):
            raise TimeoutError("the test never opened the gate")


def test_job_runs_on_another_thread_and_wait_returns_after_it():
    writer = BackgroundWriter()
    gate = Gate()
    writer.submit(gate, "ckpt-1")
    assert gate.started.wait(10)
    assert writer.in_flight == "ckpt-1"
    assert gate.thread is not threading.current_thread()
    gate.opened.set()
    writer.wait()
    assert writer.in_flight is None


def test_a_second_submit_while_one_is_in_flight_is_refused():
    writer = BackgroundWriter()
    gate = Gate()
    writer.submit(gate, "ckpt-1")
    try:
        with pytest.raises(WriterBusyError, match="ckpt-1 is still being written"):
            writer.submit(lambda: None, "ckpt-2")
    finally:
        gate.opened.set()
        writer.wait()


def test_make_room_waits_for_the_write_in_flight():
    writer = BackgroundWriter()
    gate = Gate()
    writer.submit(gate, "ckpt-1")
    assert gate.started.wait(10)
    threading.Timer(0.2, gate.opened.set).start()
    assert writer.make_room() >= 0.15
    writer.submit(lambda: None, "ckpt-2")  # room was made
    writer.wait()


def test_make_room_warns_when_saves_outpace_the_disk(caplog):
    writer = BackgroundWriter(slow_wait_seconds=0.05)
    gate = Gate()
    writer.submit(gate, "ckpt-7")
    assert gate.started.wait(10)
    threading.Timer(0.2, gate.opened.set).start()
    with caplog.at_level(logging.WARNING, logger="ftharness.checkpoint"):
        writer.make_room()
    assert "before the next checkpoint" in caplog.text
    assert "ckpt-7" in caplog.text


def test_wait_does_not_warn_for_a_write_it_was_asked_to_finish(caplog):
    writer = BackgroundWriter(slow_wait_seconds=0.05)
    gate = Gate()
    writer.submit(gate, "ckpt-7")
    threading.Timer(0.2, gate.opened.set).start()
    with caplog.at_level(logging.WARNING, logger="ftharness.checkpoint"):
        writer.wait()
    assert caplog.text == ""


def test_an_error_is_logged_at_once_and_raised_once_by_the_next_wait(caplog):
    writer = BackgroundWriter()
    failed = threading.Event()

    def fail() -> None:
        failed.set()
        raise OSError(errno.ENOSPC, "No space left on device")

    with caplog.at_level(logging.ERROR, logger="ftharness.checkpoint"):
        writer.submit(fail, "ckpt-25")
        assert failed.wait(10)
        writer._thread.join()  # the log line is written before the thread ends
    assert "writing ckpt-25 in the background failed" in caplog.text
    with pytest.raises(BackgroundWriteError, match="No space left on device") as raised:
        writer.wait()
    assert raised.value.description == "ckpt-25"
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC
    writer.wait()  # reported once, then the writer is usable again
    writer.submit(lambda: None, "ckpt-30")
    writer.wait()


def test_an_error_is_raised_by_the_next_submit_too():
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0, "ckpt-5")
    writer._thread.join()
    with pytest.raises(BackgroundWriteError, match="ckpt-5"):
        writer.submit(lambda: None, "ckpt-10")
    assert writer.in_flight is None  # the new job was not started


def test_a_failed_write_does_not_pin_the_snapshot_in_memory():
    class Snapshot(bytearray):
        pass

    writer = BackgroundWriter()
    snapshot = Snapshot(1024)
    alive = weakref.ref(snapshot)

    def write(data=snapshot) -> None:
        raise OSError(errno.EIO, f"I/O error after {len(data)} bytes")

    writer.submit(write, "ckpt-1")
    del snapshot, write
    writer._thread.join()
    gc.collect()
    assert alive() is None, "the stored error keeps the snapshot alive"
    with pytest.raises(BackgroundWriteError, match="I/O error after 1024 bytes"):
        writer.wait()


def test_the_error_pickles_with_its_facts():
    error = BackgroundWriteError("ckpt-9", "disk full")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.description, copy.reason, str(copy)) == (
        "ckpt-9",
        "disk full",
        "writing ckpt-9 in the background failed: disk full",
    )


def test_wait_with_nothing_in_flight_returns_at_once():
    assert BackgroundWriter().wait() < 0.1


# -- abandoning a write for the final checkpoint --------------------------------


class Disk:
    """A job that writes `abandonable` pieces into a list, pausing after the first."""

    def __init__(self, writer: BackgroundWriter, data: bytes) -> None:
        self.writer = writer
        self.data = data
        self.written: list[bytes] = []
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(self) -> None:
        for piece in self.writer.abandonable([memoryview(self.data)]):
            self.written.append(bytes(piece))
            if len(self.written) == 1:
                self.paused.set()
                assert self.resume.wait(30)


def test_abandonable_gives_the_bytes_in_pieces_without_copies():
    writer = BackgroundWriter()
    data = bytes(range(256)) * (PIECE_BYTES // 128 + 3)  # two pieces and a bit
    pieces = list(writer.abandonable([data, b"tail"]))
    assert [len(piece) for piece in pieces] == [
        PIECE_BYTES,
        PIECE_BYTES,
        len(data) % PIECE_BYTES,
        4,
    ]
    assert b"".join(pieces) == data + b"tail"
    assert pieces[0].obj is data  # a view of the caller's bytes


def test_abandon_stops_the_write_at_its_next_piece_and_raises_nothing_later(caplog):
    writer = BackgroundWriter()
    disk = Disk(writer, bytes(3 * PIECE_BYTES))
    writer.submit(disk, "ckpt-25")
    assert disk.paused.wait(10)
    threading.Timer(0.1, disk.resume.set).start()
    with caplog.at_level(logging.INFO, logger="ftharness.checkpoint"):
        assert writer.abandon() is AbandonOutcome.ABANDONED
    assert len(disk.written) == 1  # nothing written after the abandon
    assert writer.in_flight is None
    assert "the background write of ckpt-25 was abandoned" in caplog.text
    assert "failed" not in caplog.text
    writer.wait()  # no pending error
    writer.submit(lambda: None, "ckpt-30")  # and the writer is usable again
    writer.wait()


def test_a_write_past_its_last_piece_finishes_when_abandoned():
    writer = BackgroundWriter()
    gate = Gate()  # a job with no pieces left: the manifest, the rename
    writer.submit(gate, "ckpt-25")
    assert gate.started.wait(10)
    threading.Timer(0.1, gate.opened.set).start()
    assert writer.abandon() is AbandonOutcome.FINISHED
    assert gate.opened.is_set()


def test_a_write_that_failed_by_itself_is_not_raised_again_after_abandon(caplog):
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0, "ckpt-5")
    writer._thread.join()
    with caplog.at_level(logging.INFO, logger="ftharness.checkpoint"):
        assert writer.abandon() is AbandonOutcome.FAILED
    assert "writing ckpt-5 in the background failed" in caplog.text  # logged when it failed
    writer.wait()


def test_abandon_with_nothing_in_flight():
    writer = BackgroundWriter()
    assert writer.abandon() is AbandonOutcome.NOTHING_IN_FLIGHT
    writer.submit(lambda: None, "ckpt-1")
    writer.wait()
    assert writer.abandon() is AbandonOutcome.NOTHING_IN_FLIGHT


def test_the_next_write_is_not_abandoned_by_an_earlier_abandon():
    writer = BackgroundWriter()
    disk = Disk(writer, bytes(2 * PIECE_BYTES))
    disk.resume.set()
    writer.abandon()
    writer.submit(disk, "ckpt-1")
    writer.wait()
    assert b"".join(disk.written) == disk.data


def test_an_abandoned_write_cleans_up_beside_the_next_write_and_wait_waits_for_it():
    writer = BackgroundWriter()
    paused, cleaning, cleaned = threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        try:
            for _ in writer.abandonable([bytes(3 * PIECE_BYTES)]):
                paused.set()
                time.sleep(0.01)
        except WriteAbandoned:
            cleaning.set()  # removing its temporary directory, slowly
            assert cleaned.wait(30)
            raise

    writer.submit(write, "ckpt-25")
    assert paused.wait(10)
    assert writer.abandon() is AbandonOutcome.ABANDONED
    assert cleaning.wait(10)
    assert writer.in_flight is None
    final = threading.Event()
    writer.submit(final.set, "ckpt-27")  # the final write does not wait for the cleanup
    assert final.wait(10)
    threading.Timer(0.2, cleaned.set).start()
    writer.wait()
    assert cleaned.is_set()  # wait() returned only once the cleanup was done
