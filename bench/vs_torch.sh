#!/usr/bin/env bash
# Base decoding side by side with PyTorch eager on the same weights and CPU, alternated:
# `bench/report.ts` (specdec, the software adapter) then `bench/torch_baseline.py --device cpu
# --threads 2`, ROUNDS times, batch 1, prompt 128 → 512 (issue 10's comparison). On a shared
# machine whose speed swings from one minute to the next, alternating keeps a slow minute from
# landing on one side only; compare the totals (or the per-round ratios) of the wall columns.
#
#   bash bench/vs_torch.sh RUN_DIR [ROUNDS] [OUT_DIR]
#
# RUN_DIR holds train.ts's checkpoint/{target,draft}.safetensors. Needs python3 with torch
# (Debian: python3-torch; torch_baseline.py reads the safetensors files itself).
set -euo pipefail
run=${1:?usage: bash bench/vs_torch.sh RUN_DIR [ROUNDS] [OUT_DIR]}
rounds=${2:-6}
out=${3:-$(mktemp -d)}
ckpt=$run/checkpoint
[[ -f $ckpt/target.safetensors ]] || { echo "vs_torch: no $ckpt/target.safetensors" >&2; exit 2; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
python=${PYTHON:-/usr/bin/python3}
cd "$(dirname "$0")/.."
for r in $(seq 1 "$rounds"); do
  deno run -A bench/report.ts --filter "base decoding B1" --prompt 128 --seq-len 512 \
    --models "$ckpt" --reps 2 --out "$out/specdec-$r" 2>&1 | grep "^| decoding" | sed "s/^/specdec $r /"
  "$python" bench/torch_baseline.py --device cpu --threads 2 --small --filter "base decoding B1" \
    --prompt 128 --seq-len 512 --target "$ckpt/target.safetensors" \
    --draft "$ckpt/draft.safetensors" --reps 2 2>&1 | grep "^| decoding" | sed "s/^/torch $r /"
done
