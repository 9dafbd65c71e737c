#!/usr/bin/env bash
# Set up lowlux on this machine: a virtual environment in .venv with torch, lowlux and its test
# tools, and the darktable plugin when darktable is installed.
#
#   ./install.sh                  CPU torch (pinned), lowlux, tests; plugin into darktable if present
#   ./install.sh --gpu            the CUDA build of torch from PyPI instead (several GB)
#   ./install.sh --no-darktable   leave darktable's configuration alone
#
# Environment: PYTHON (interpreter to use, default python3), LOWLUX_TORCH (torch requirement,
# default torch==2.13.0), DARKTABLE_CONFIG (default ~/.config/darktable).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

gpu=0
darktable=auto
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --no-darktable) darktable=no ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }

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
  if [ -f lua/lowlux.lua ]; then
    config="${DARKTABLE_CONFIG:-$HOME/.config/darktable}"
    say "installing the darktable plugin into $config/lua"
    mkdir -p "$config/lua"
    cp lua/lowlux.lua "$config/lua/lowlux.lua"
    # The plugin finds the worker through this file (the preferences can override it).
    printf '%s\n' "$here/.venv/bin/lowlux" > "$config/lua/lowlux.path"
    luarc="$config/luarc"
    touch "$luarc"
    # once only, whichever way it was written: require "lowlux", require('lowlux'), ...
    if ! grep -Eq "^[[:space:]]*require[[:space:]]*\(?[[:space:]]*[\"']lowlux[\"']" "$luarc"; then
      # a last line without its newline would swallow ours
      if [ -s "$luarc" ] && [ -n "$(tail -c 1 "$luarc")" ]; then echo >> "$luarc"; fi
      echo 'require "lowlux"' >> "$luarc"
    fi
    say "darktable: restart it; the lowlux module is in the lighttable's right panel"
  fi
fi

say "done: $(.venv/bin/lowlux --version) with torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
say "try:  .venv/bin/lowlux demo      or      .venv/bin/lowlux enhance YOUR.RAW"
