"""quant_utils/csvio.py's atomic writers, which every file and folder the project writes goes through: a failure
leaves the old contents and no temp files; a dead writer's temp files and folders are cleaned up."""
import os
import stat

import pytest

from conftest import dead_pid
from quant_utils.csvio import atomic_file, atomic_folder, atomic_write_text, clean_stale_temps


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "one\n")
    assert path.read_text() == "one\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "one\n" and sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(f".out.txt.{os.getpid()}.")
        tmp.write_bytes(b"two")
    assert path.read_bytes() == b"two"


def test_atomic_folder_swaps_in_a_complete_folder_only(tmp_path):
    dest = tmp_path / "ref"
    with atomic_folder(dest) as tmp:
        (tmp / "a.png").write_bytes(b"a")
    assert sorted(p.name for p in dest.iterdir()) == ["a.png"] and stat.S_IMODE(dest.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError):
        with atomic_folder(dest) as tmp:
            (tmp / "b.png").write_bytes(b"b")
            raise RuntimeError("failed half way")
    assert sorted(p.name for p in dest.iterdir()) == ["a.png"]
    with atomic_folder(dest) as tmp:
        (tmp / "c.png").write_bytes(b"c")
    assert sorted(p.name for p in dest.iterdir()) == ["c.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # no temp or old folders left


def test_clean_stale_temps_removes_dead_writers_files_and_folders(tmp_path):
    dead = dead_pid()
    stale_file, stale_dir = tmp_path / f".ckpt.pth.{dead}.x1y2.tmp", tmp_path / f".q.{dead}.ab_c.tmp"
    live, own = tmp_path / ".ckpt.pth.1.x1y2.tmp", tmp_path / f".ckpt.pth.{os.getpid()}.zz.tmp"
    for p in (stale_file, live, own):
        p.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "weights").write_bytes(b"partial")
    assert clean_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, own.name])
