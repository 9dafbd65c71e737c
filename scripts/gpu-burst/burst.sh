#!/bin/bash
# On a borrowed GPU machine, from the repository root, with .burst/ carried (prepare.py):
# a training burst in two phases (lr 1e-4, then 1e-5), then the GPU rows of `lowlux bench`.
# Then, where prepare.py --wheels carried the pipeline's packages, the file -> TIFF/DNG rows (E2E).
# Each part has its own limit (seconds; 0 skips it): A, B, BENCH, E2E. SIGTERM makes the training save
# its checkpoint; --foreground sends it to the trainer alone, not to its data-loader processes.
set -u
export PYTHONPATH=worker${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
A=${A:-290}; B=${B:-100}; BENCH=${BENCH:-170}; E2E=${E2E:-0}; RUN=${RUN:-.burst/run}; DEVICE=${DEVICE:-cuda}; OUT=${OUT:-.burst/out}
mkdir -p "$OUT"
{ date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; lscpu | grep -E 'Model name|^CPU\(s\)'
  python3 -c 'import torch, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.backends.cudnn.version())'; } > "$OUT/machine.txt" 2>&1
common=(train --run-dir "$RUN" --source clean=.burst/photos --eld-noise .burst/eld --no-darktable-noise
  --output-space linear-camera-wb --steps 1000000 --crop 448 --batch "${BATCH:-32}" --workers "${WORKERS:-14}" --threads 2
  --eval-every 0 --ema 0.999 --colour-weight 1.0 --device "$DEVICE" --bf16 --checkpoint-minutes 1 --log-every 200 ${EXTRA:-})
# phase A starts from .burst/init.safetensors, or resumes the checkpoint prepare.py put in the run
# (or named in checkpoint-from: a checkpoint the working tree carries anyway, weights/training/)
[ -f "$RUN"/checkpoint-from ] && [ ! -f "$RUN"/checkpoint.pt ] && cp "$(cat "$RUN"/checkpoint-from)" "$RUN"/checkpoint.pt
start=(--resume); [ -f .burst/init.safetensors ] && start=(--init-weights .burst/init.safetensors)
[ -f .burst/init.safetensors ] || [ -f "$RUN"/checkpoint.pt ] || { A=0; B=0; }  # prepared for the file bench alone
[ "$A" -gt 0 ] && timeout --foreground -k 30 -s TERM "$A" python3 -m lowlux "${common[@]}" \
  "${start[@]}" --lr-drop-at 1000000 > "$OUT/train-a.log" 2>&1
echo "phase A rc=$?" >> "$OUT/machine.txt"
[ "$B" -gt 0 ] && timeout --foreground -k 30 -s TERM "$B" python3 -m lowlux "${common[@]}" --lr-drop-at 0 --resume \
  > "$OUT/train-b.log" 2>&1
echo "phase B rc=$?" >> "$OUT/machine.txt"
cp "$RUN"/checkpoint.pt "$RUN"/last.safetensors "$RUN"/log.csv "$OUT"/ 2>/dev/null
bench=(bench --device "$DEVICE" --sizes "${SIZES:-2848x4256}" --no-e2e --no-accuracy --runs 10 --warmup 2
  --only "${ONLY:-fp16 autocast,bf16,torch.compile}" --row-timeout "${ROW_TIMEOUT:-300}"
  --json "$OUT/bench.json" --markdown "$OUT/bench.md")
[ "$BENCH" -gt 0 ] && env -u OMP_NUM_THREADS -u MKL_NUM_THREADS -u OPENBLAS_NUM_THREADS \
  timeout --foreground -k 20 -s TERM "$BENCH" python3 -m lowlux "${bench[@]}" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/machine.txt"; date >> "$OUT/machine.txt"
# The file -> TIFF/DNG rows: one file, then an overlapped batch, with the shipped weights (stages profiled).
if [ "$E2E" -gt 0 ] && ls .burst/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps --target .burst/site .burst/wheels/*.whl > "$OUT/wheels.log" 2>&1
  export PYTHONPATH=$PYTHONPATH:.burst/site
  e2e=(bench --device "$DEVICE" --sizes "${SIZES:-2848x4256}" --only none --no-accuracy --no-peak --runs "${E2E_RUNS:-5}"
    --batch-files "${BATCH_FILES:-24}" ${DECODE_THREADS:+--decode-threads "$DECODE_THREADS"}
    --e2e-format both --json "$OUT/e2e.json" --markdown "$OUT/e2e.md")
  env -u OMP_NUM_THREADS -u MKL_NUM_THREADS -u OPENBLAS_NUM_THREADS \
    timeout --foreground -k 20 -s TERM "$E2E" python3 -m lowlux "${e2e[@]}" > "$OUT/e2e.log" 2>&1
  echo "e2e rc=$?" >> "$OUT/machine.txt"; date >> "$OUT/machine.txt"
fi
