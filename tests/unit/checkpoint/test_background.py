"""BackgroundWriter: one write at a time, errors surface later, memory freed."""

from __future__ import annotations

import errno
import gc
import logging
import pickle
import threading
import weakref

import pytest

from ftharness.checkpoint.background import (
    BackgroundWriteError,
    BackgroundWriter,
    WriterBusyError,
)


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
