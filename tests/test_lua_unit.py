"""The darktable plugin's Lua unit tests (tests/lua/, a mocked darktable), one pytest test each.

They need the `lua5.4` interpreter (Debian: apt-get install lua5.4); without it they skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LUA_DIR = Path(__file__).resolve().parent / "lua"
LUA = shutil.which("lua5.4")


def _lua_tests() -> list:
    if LUA is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="lua5.4 is not installed (apt-get install lua5.4)"),
                             id="lua5.4-missing")]
    listed = subprocess.run([LUA, str(LUA_DIR / "run.lua"), "--list"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:  # a broken test file: report it as one failing test
        return [pytest.param(listed.stdout + listed.stderr, id="lua-test-files-load")]
    return [pytest.param(name, id=name) for name in listed.stdout.splitlines() if name.strip()]


@pytest.mark.parametrize("name", _lua_tests())
def test_lua(name: str) -> None:
    if name is None or "::" not in name:
        pytest.fail(f"the Lua test files do not load:\n{name}")
    result = subprocess.run([LUA, str(LUA_DIR / "run.lua"), name], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout
