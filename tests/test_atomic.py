"""How lowlux writes a file: under a temporary name beside it, moved into place only when complete."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lowlux.atomic import EXISTS, move_into_place, replacing, temp_beside, write_bytes
from lowlux.errors import OutputError


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def refusing(code: int, text: str):
    """A stand-in for an os call that fails as the filesystem would."""
    def call(*args):
        raise OSError(code, text)
    return call


class Failed(Exception):
    """A writer that stopped halfway."""


def test_a_temporary_name_is_hidden_beside_the_file_and_new_each_time(tmp_path):
    final = tmp_path / "out.tif"
    first, second = temp_beside(final), temp_beside(final)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith(f".out.tif.{os.getpid()}.") and first.name.endswith(".tmp")


def test_a_suffix_stands_in_for_the_name_s_own(tmp_path):
    """The form a clean-up of a killed writer's files finds by pattern: ``.<stem>.<pid>.*.tmp.tif``."""
    tmp = temp_beside(tmp_path / "a_lowlux.tif", "m", suffix=".tmp.tif")
    assert tmp.name.startswith(f".a_lowlux.{os.getpid()}.") and tmp.name.endswith("m.tmp.tif")
    tmp.write_bytes(b"left by a killed writer")
    assert list(tmp_path.glob(".a_lowlux.*.tmp.tif")) == [tmp]


def test_write_bytes_writes_the_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "new" / "folder" / "out.tif"
    assert write_bytes(final, b"whole", overwrite=False) == final
    assert final.read_bytes() == b"whole" and names(final.parent) == ["out.tif"]


def test_without_overwrite_an_existing_file_is_never_replaced(tmp_path):
    final = tmp_path / "out.tif"
    final.write_bytes(b"theirs")
    with pytest.raises(OutputError) as caught:
        write_bytes(final, b"ours", overwrite=False)
    assert caught.value.path == str(final) and caught.value.reason == EXISTS
    assert str(caught.value) == f"{final}: already exists (use --overwrite to replace it)"
    assert final.read_bytes() == b"theirs" and names(tmp_path) == ["out.tif"]


def test_with_overwrite_an_existing_file_is_replaced(tmp_path):
    final = tmp_path / "out.tif"
    final.write_bytes(b"old")
    write_bytes(final, b"new", overwrite=True)
    assert final.read_bytes() == b"new" and names(tmp_path) == ["out.tif"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "link", refusing(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(os, "replace", refusing(errno.ENOSPC, "No space left on device"))
    final = tmp_path / "out.tif"
    with pytest.raises(OutputError, match=r"out\.tif: cannot write \(No space left on device\)"):
        write_bytes(final, b"data", overwrite=False)
    assert names(tmp_path) == []


def test_a_name_taken_while_writing_is_not_clobbered(tmp_path):
    """The check before writing can be outrun; the hard link cannot."""
    final, tmp = tmp_path / "out.tif", tmp_path / ".out.tif.tmp"
    tmp.write_bytes(b"ours")
    final.write_bytes(b"appeared meanwhile")
    with pytest.raises(OutputError, match="already exists"):
        move_into_place(tmp, final, overwrite=False)
    assert final.read_bytes() == b"appeared meanwhile"


def test_without_hard_links_the_name_is_checked_then_renamed(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "link", refusing(errno.EPERM, "Operation not permitted"))
    final, tmp = tmp_path / "out.tif", tmp_path / ".out.tif.tmp"
    tmp.write_bytes(b"ours")
    move_into_place(tmp, final, overwrite=False)
    assert final.read_bytes() == b"ours" and names(tmp_path) == ["out.tif"]
    tmp.write_bytes(b"again")
    with pytest.raises(OutputError, match="already exists"):
        move_into_place(tmp, final, overwrite=False)
    assert final.read_bytes() == b"ours"


def test_replacing_replaces_the_file_when_the_block_ends(tmp_path):
    final = tmp_path / "weights.safetensors"
    final.write_text("old")
    with replacing(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # never a half-written file under the final name
    assert final.read_text() == "new" and names(tmp_path) == ["weights.safetensors"]


def test_replacing_removes_its_temporary_on_an_exception(tmp_path):
    final = tmp_path / "checkpoint.pt"
    final.write_text("old")
    with pytest.raises(Failed), replacing(final) as tmp:
        tmp.write_text("half")
        raise Failed
    assert final.read_text() == "old" and names(tmp_path) == ["checkpoint.pt"]


def test_replacing_creates_the_temporary_with_the_mode_asked_for(tmp_path):
    """A secret key is never readable by others, not while it is written and whatever the umask."""
    final = tmp_path / "server.key_secret"
    old = os.umask(0o077)
    try:
        with replacing(final, mode=0o644) as tmp:
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o644
        with replacing(final, mode=0o600) as tmp:
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
            tmp.write_text("secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(final.stat().st_mode) == 0o600 and final.read_text() == "secret"


def test_the_client_reports_a_taken_name_as_its_own_error(tmp_path):
    from lowlux.client import OutputExists, write_atomic

    final = tmp_path / "out.tif"
    final.write_bytes(b"theirs")
    with pytest.raises(OutputExists, match=r"out\.tif: already exists \(use --overwrite to replace it\)$"):
        write_atomic(final, b"ours", overwrite=False)
    assert final.read_bytes() == b"theirs" and names(tmp_path) == ["out.tif"]
    assert write_atomic(final, b"ours", overwrite=True).read_bytes() == b"ours"


def test_the_client_can_write_without_numpy():
    """``lowlux client`` writes its fetched outputs through this module and starts without numpy."""
    code = "import sys, lowlux.client.command; assert 'numpy' not in sys.modules and 'lowlux.atomic' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
