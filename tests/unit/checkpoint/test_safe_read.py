from __future__ import annotations

import os
import socket

import pytest

from ftharness.checkpoint.safe_read import (
    NotRegularFileError,
    TooLargeError,
    open_regular,
    read_regular,
    regular_object_size,
)


def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert read_regular(tmp_path, "a.bin", limit=3) == b"abc"
    with open_regular(tmp_path, "a.bin") as file:
        assert file.read() == b"abc"


def test_more_bytes_than_allowed_are_never_read(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(TooLargeError) as raised:
        read_regular(tmp_path, "big", limit=99)
    assert (raised.value.size, raised.value.limit) == (100, 99)


def make_special(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink to a regular file":
        (path.parent / "target").write_bytes(b"secret")
        path.symlink_to(path.parent / "target")
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()


@pytest.mark.parametrize(
    "kind", ["fifo", "symlink to /dev/zero", "symlink to a regular file", "directory", "socket"]
)
def test_anything_but_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    make_special(tmp_path / "entry", kind)
    with pytest.raises(NotRegularFileError):
        open_regular(tmp_path, "entry")  # a FIFO would block here without O_NONBLOCK


def test_a_symlinked_directory_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a").write_bytes(b"a")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(NotRegularFileError, match="link is a symlink or a file, not a directory"):
        open_regular(tmp_path / "link", "a")


@pytest.mark.parametrize("name", ["../a", "a/b", "..", ".", "", "a\0b"])
def test_a_name_must_be_one_path_component(tmp_path, name):
    with pytest.raises(ValueError, match="not one path component"):
        open_regular(tmp_path, name)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path, "absent")


def test_errors_pickle():
    import pickle

    error = pickle.loads(pickle.dumps(NotRegularFileError("/x/y", "a FIFO")))
    assert (error.path, error.kind) == ("/x/y", "a FIFO")
    too_large = pickle.loads(pickle.dumps(TooLargeError("/x", 5, 4)))
    assert (too_large.size, too_large.limit) == (5, 4)


@pytest.mark.parametrize(
    "info",
    [
        {"name": "x", "type": "other", "size": 0},
        {"name": "x", "type": "file", "size": 0, "islink": True},
        {"name": "x", "type": "directory", "size": 0},
        {"name": "x", "type": "file", "size": None},
    ],
)
def test_a_store_object_must_be_a_plain_file(info):
    with pytest.raises(NotRegularFileError):
        regular_object_size(info)


def test_a_store_file_has_its_size():
    assert regular_object_size({"name": "x", "type": "file", "size": 7}) == 7
