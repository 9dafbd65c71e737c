#!/usr/bin/env bash
# Keep a training run's state in the repository, so that a later session on a new machine resumes it.
#
#   scripts/keep-run.sh runs/colour-photo          # copy its state into weights/training/colour-photo
#   scripts/keep-run.sh --restore colour-photo     # copy it back into runs/, then: lowlux train ... --resume
#
# runs/ is scratch (ignored by git) and does not outlive the machine. What is kept is what --resume needs
# (checkpoint.pt: model, optimiser, weight average, step, RNG states) and the run's record (config.json,
# eval.csv, log.csv): about 13 MB, rewritten in place, so commit it once a session, not at every checkpoint.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kept="$repo/weights/training"
files=(checkpoint.pt config.json eval.csv log.csv)

if [[ "${1:-}" == "--restore" ]]; then
    name="${2:?usage: keep-run.sh --restore NAME}"
    src="$kept/$name"
    [[ -f "$src/checkpoint.pt" ]] || { echo "keep-run: no kept run $src" >&2; exit 1; }
    dst="$repo/runs/$name"
    [[ -e "$dst/checkpoint.pt" ]] && { echo "keep-run: $dst already has a checkpoint; not overwritten" >&2; exit 1; }
    mkdir -p "$dst"
    for f in "${files[@]}"; do cp -p "$src/$f" "$dst/$f"; done
    echo "restored $dst (resume it with lowlux train --run-dir $dst ... --resume)"
    exit 0
fi

run="${1:?usage: keep-run.sh RUN_DIR | --restore NAME}"
[[ -f "$run/checkpoint.pt" ]] || { echo "keep-run: no checkpoint.pt in $run" >&2; exit 1; }
dst="$kept/$(basename "$run")"
mkdir -p "$dst"
for f in "${files[@]}"; do
    # temp file + rename: a copy cut short never replaces a good one
    cp -p "$run/$f" "$dst/.$f.tmp" && mv -f "$dst/.$f.tmp" "$dst/$f"
done
echo "kept $dst: step $(tail -n 1 "$dst/log.csv" | cut -d, -f1) of the log; commit it"
