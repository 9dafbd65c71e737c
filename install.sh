#!/usr/bin/env bash
# Set up lowlux on this machine: a virtual environment in .venv with torch, lowlux and its test
# tools, and the darktable plugin when darktable is installed.
#
#   ./install.sh                  CPU torch (pinned), lowlux, tests; plugin into darktable if present
#   ./install.sh --gpu            the CUDA build of torch from PyPI instead (several GB)
#   ./install.sh --no-darktable   leave darktable's configuration alone
#   ./install.sh --darktable-only install (or update) only the darktable plugin
#
# Environment: PYTHON (interpreter to use, default python3), LOWLUX_TORCH (torch requirement,
# default torch==2.13.0), DARKTABLE_CONFIG (default ~/.config/darktable), LOWLUX_EXECUTABLE (the
# lowlux command the plugin runs, default this checkout's .venv/bin/lowlux).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

gpu=0
darktable=auto
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --no-darktable) darktable=no ;;
    --darktable-only) darktable=only ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }

# The darktable plugin: lua/lowlux/ (lowlux.lua, lib/, and lowlux.path naming the lowlux command)
# goes into <config>/lua/lowlux/, a folder of its own as lua-scripts' script_manager expects.
# With script_manager (darktable's lua-scripts) it starts lowlux: no line in luarc, the user starts
# it once in script_manager. Without it luarc gets `require "lowlux/lowlux"` (once).
install_darktable_plugin() {
  local config="${DARKTABLE_CONFIG:-$HOME/.config/darktable}"
  local lua_dir="$config/lua" luarc="$config/luarc"
  local exe="${LOWLUX_EXECUTABLE:-$here/.venv/bin/lowlux}"
  say "installing the darktable plugin into $lua_dir/lowlux"
  mkdir -p "$lua_dir/lowlux/lib"
  cp lua/lowlux/lowlux.lua "$lua_dir/lowlux/lowlux.lua"
  cp lua/lowlux/lib/*.lua "$lua_dir/lowlux/lib/"
  # The plugin finds the worker through this file (the preferences can override it).
  printf '%s\n' "$exe" > "$lua_dir/lowlux/lowlux.path"
  touch "$luarc"
  # The old layout (lua/lowlux.lua, required as "lowlux") made script_manager fail at start-up:
  # remove it, and its line in luarc, when this script wrote them.
  if [ -f "$lua_dir/lowlux.lua" ] && grep -q 'lowlux.lua - restore extremely dark raw photos' "$lua_dir/lowlux.lua"; then
    say "removing the old $lua_dir/lowlux.lua"
    rm -f "$lua_dir/lowlux.lua" "$lua_dir/lowlux.path"
  fi
  if [ ! -f "$lua_dir/lowlux.lua" ]; then drop_luarc_line "$luarc" 'lowlux'; fi
  local require_re="^[[:space:]]*require[[:space:]]*\(?[[:space:]]*[\"']"
  if grep -Eq "${require_re}tools/script_manager[\"']" "$luarc" || [ -f "$lua_dir/tools/script_manager.lua" ]; then
    drop_luarc_line "$luarc" 'lowlux/lowlux'  # script_manager starts it (luarc would start it regardless)
    say "darktable: restart it, then start lowlux once in script_manager (category lowlux);"
    say "           the lowlux module is in the lighttable's right panel"
  else
    # once only, whichever way it was written: require "lowlux/lowlux", require('lowlux/lowlux'), ...
    if ! grep -Eq "${require_re}lowlux/lowlux[\"']" "$luarc"; then
      # a last line without its newline would swallow ours
      if [ -s "$luarc" ] && [ -n "$(tail -c 1 "$luarc")" ]; then echo >> "$luarc"; fi
      echo 'require "lowlux/lowlux"' >> "$luarc"
    fi
    say "darktable: restart it; the lowlux module is in the lighttable's right panel"
  fi
}

# Remove the lines of luarc that are just `require "NAME"` (any quotes, parentheses, spacing).
drop_luarc_line() {
  local luarc="$1" name="$2" kept
  local line_re="^[[:space:]]*require[[:space:]]*\(?[[:space:]]*[\"']${name}[\"'][[:space:]]*\)?[[:space:]]*;?[[:space:]]*$"
  if grep -Eq "$line_re" "$luarc"; then
    kept="$(grep -Ev "$line_re" "$luarc" || true)"
    if [ -n "$kept" ]; then printf '%s\n' "$kept" > "$luarc"; else : > "$luarc"; fi
  fi
}

if [ "$darktable" = only ]; then
  install_darktable_plugin
  exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: lowlux needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

# torch first and pinned: an open range would pull the multi-GB CUDA build onto CPU machines.
if [ "$gpu" = 1 ]; then
  torch_req="${LOWLUX_TORCH:-torch>=2.4}"
else
  torch_req="${LOWLUX_TORCH:-torch==2.13.0}"
fi
say "installing $torch_req"
"${pip[@]}" install -q "$torch_req"

say "installing lowlux and its test tools"
"${pip[@]}" install -q -e ".[fast,train,test]"

if [ "$darktable" = auto ] && { command -v darktable >/dev/null 2>&1 || [ -d "${DARKTABLE_CONFIG:-$HOME/.config/darktable}" ]; }; then
  install_darktable_plugin
fi

say "done: $(.venv/bin/lowlux --version) with torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
say "try:  .venv/bin/lowlux demo      or      .venv/bin/lowlux enhance YOUR.RAW"
