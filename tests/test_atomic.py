"""Atomic writes: complete under the name, or the old version and no leftovers."""

from __future__ import annotations

import os
import stat

import pytest

from qradaptor.atomic import atomic_dir, atomic_file, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "plan.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    write_text(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_folder_is_replaced_only_once_complete(tmp_path) -> None:
    final = tmp_path / "adapter"
    with atomic_dir(final) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(final) as folder:
        (folder / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    with atomic_dir(final) as folder:
        (folder / "c").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_files_and_folders_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o077)  # a user who keeps everything private
    try:
        write_text(tmp_path / "config.json", "{}")
        with atomic_dir(tmp_path / "run") as folder:
            (folder / "a").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
