"""Atomic, durable file writes (canonstore/atomic.py): the old file or the new one, never half, never a leftover."""

import json
import os

import pytest

from canonstore import atomic
from canonstore.atomic import write_file_atomic, write_file_atomic_with, write_json_atomic


def test_a_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    path = tmp_path / "sub" / "progress.json"
    write_file_atomic(path, "first")  # creates the folder too
    write_file_atomic(path, b"\x00second")
    assert path.read_bytes() == b"\x00second" and os.listdir(path.parent) == ["progress.json"]
    write_file_atomic(path, "température")
    assert path.read_bytes() == "température".encode()


def test_json_is_written_as_json_dumps_with_a_newline(tmp_path):
    value = {"b": [1, 2.5, None], "a": "x"}
    write_json_atomic(tmp_path / "m.json", value, indent=1, sort_keys=True)
    assert (tmp_path / "m.json").read_text() == json.dumps(value, indent=1, sort_keys=True) + "\n"


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_copy(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_file_atomic_with(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["best.pt"]


def test_the_data_reaches_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or fsync(fd)
    )
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(("replace", str(b))) or replace(a, b))
    path = tmp_path / "scores.json"
    write_file_atomic_with(path, lambda tmp: tmp.write_text("{}"))
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == f"{path}.tmp-{os.getpid()}" and events[1][1] == str(path) and events[2][1] == str(tmp_path)


def test_removing_a_tree_refuses_a_folder_without_our_marker(tmp_path):
    from canonstore.atomic import mark, remove_tree
    from canonstore.errors import StoreError

    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "paper.txt").write_text("a user's file")
    with pytest.raises(StoreError, match="no .canonstore-staging marker"):
        remove_tree(theirs)
    assert (theirs / "paper.txt").read_text() == "a user's file"
    mark(theirs, "store")  # marked: ours to remove, the marker last
    remove_tree(theirs)
    assert not theirs.exists()
