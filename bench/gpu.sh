#!/usr/bin/env bash
# One command for a GPU machine with no package registry: specdec's benchmark suite beside the
# PyTorch eager f32 baseline on the same weights, and a side-by-side summary.
#
#   bash ../shared/device/prepare.sh            # on a machine with deno: packs .device/
#   source .device/env.sh && bash bench/gpu.sh [--quick] [--models RUN_DIR] [OUT_DIR]
#
# Without --models both sides decode the seeded random target/draft pair of the reference config
# (the suite's own models: low acceptance); --models RUN_DIR uses a train.ts run's trained
# target.safetensors and draft.safetensors on both sides.
# OUT_DIR defaults to $OUT when set, else bench/results/gpu-<date>. It receives:
#   check.json            fixed tokens and specdec's logits for them (from bench/export_check.ts)
#   specdec/              bench/report.ts output: <adapter>-<date>.json, .md, -speedup.svg
#   torch.json, torch.md  bench/torch_baseline.py output (same {meta, rows} shape)
#   summary.md            specdec vs torch per case, and the performance targets
#   *.log, env.txt        each stage's output; versions and the GPU
# Exported checkpoints (~150 MB) go to $CKPT_DIR (default /tmp/specdec-ckpt), not into OUT_DIR.
# TORCH_DEVICE (default cuda) and TORCH_ARGS (extra flags, e.g. "--small --sdpa") go to the
# baseline; PYTHON picks the interpreter (default python3).
# Each stage has a time cap (EXPORT_TIMEOUT 60 s, SPECDEC_TIMEOUT 210 s, TORCH_TIMEOUT 240 s) so
# the whole run stays under 10 minutes; a failed or timed-out stage is reported and the rest runs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=""
out=""
models=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick="--quick" ;;
    --models) models=$(cd "$2" && pwd) || exit 2; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) out=$1 ;;
  esac
  shift
done
out=${out:-${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}}
ckpt=${CKPT_DIR:-${TMPDIR:-/tmp}/specdec-ckpt}
python=${PYTHON:-python3}
mkdir -p "$out/specdec" "$ckpt"
out=$(cd "$out" && pwd)

if ! command -v deno >/dev/null && [ -f .device/env.sh ]; then
  # shellcheck disable=SC1091
  source .device/env.sh
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

log() { echo "[gpu.sh $(date +%T)] $*"; }
failed=()
# stage NAME SECONDS CMD...: runs CMD under a time cap, output to the terminal and OUT/NAME.log
stage() {
  local name=$1 limit=$2
  shift 2
  log "$name (cap ${limit} s): $*"
  local t0=$SECONDS rc
  if command -v timeout >/dev/null; then
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  else
    "$@" 2>&1 | tee "$out/$name.log"
  fi
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))")
    log "$name FAILED with exit $rc after $((SECONDS - t0)) s"
  else
    log "$name done in $((SECONDS - t0)) s"
  fi
}

{
  echo "date: $(date -Is)"
  echo "deno: $(deno --version 2>/dev/null | head -1)"
  echo "python: $($python --version 2>&1)"
  echo "torch: $($python -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
} > "$out/env.txt"
cat "$out/env.txt"

# (a) seeded target/draft checkpoints of the reference config and our logits for fixed tokens
rm -f "$ckpt/check.json" # never check against a previous run's file
stage export "${EXPORT_TIMEOUT:-60}" deno run -A --cached-only bench/export_check.ts "$ckpt" \
  ${models:+--models "$models"}
[ -f "$ckpt/check.json" ] && cp "$ckpt/check.json" "$out/check.json"

# (b) our suite, GPU-sized (reference config, batch 1 and 8, gamma 1..8)
stage specdec "${SPECDEC_TIMEOUT:-210}" deno run -A --cached-only bench/report.ts --out "$out/specdec" \
  $quick ${models:+--models "$models"}

# (c) the PyTorch eager baseline on the same weights, after checking it reproduces our logits
if $python -c 'import torch' 2>/dev/null; then
  if [ -f "$ckpt/check.json" ]; then
    weights=(--check-logits "$ckpt/check.json") # the checkpoints it names, logits checked first
  elif [ -n "$models" ]; then
    weights=(--target "$models/target.safetensors" --draft "$models/draft.safetensors")
  else
    weights=() # export failed: torch's own seeded init, no logits check
  fi
  # shellcheck disable=SC2086 # TORCH_ARGS is a list of extra flags
  stage torch "${TORCH_TIMEOUT:-240}" $python bench/torch_baseline.py "${weights[@]}" \
    --device "${TORCH_DEVICE:-cuda}" --json "$out/torch.json" $quick ${TORCH_ARGS:-}
else
  failed+=("torch (PyTorch is not importable by $python)")
  log "skipping the torch baseline: $python cannot import torch"
fi

# (d) side by side
if command -v "$python" >/dev/null; then
  $python - "$out" <<'PY' | tee "$out/summary.md"
import glob, json, os, sys

out = sys.argv[1]
ours_files = sorted(glob.glob(os.path.join(out, "specdec", "*.json")))
ours = json.load(open(ours_files[-1])) if ours_files else {"meta": {}, "rows": []}
theirs = json.load(open(os.path.join(out, "torch.json"))) if os.path.exists(os.path.join(out, "torch.json")) else {"meta": {}, "rows": []}
O = {r["name"]: r for r in ours["rows"]}
T = {r["name"]: r for r in theirs["rows"]}


def f(v, d=1):
    return "—" if v is None else (f"{v:.{d}f}" if abs(v) < 1e5 else f"{v:.3g}")


def val(rows, name, key):
    r = rows.get(name)
    return None if r is None else (r["gpuMs"] if key == "gpuMs" else r["wallMs"] if key == "wallMs" else r["values"].get(key))


adapter = ours["meta"].get("adapter") or theirs["meta"].get("adapter") or "?"
print(f"# specdec vs PyTorch eager f32 — {adapter}\n")
print(f"specdec: {ours_files[-1] if ours_files else 'missing'}; torch {theirs['meta'].get('torch', 'missing')} on {theirs['meta'].get('adapter', '?')}")
lc = theirs["meta"].get("logitsCheck")
if lc:
    print(f"logits check (same weights, same math): max |torch − specdec| target {lc['target']:.3g}, draft {lc['draft']:.3g} → {'OK' if lc['ok'] else 'MISMATCH'}")
else:
    print("logits check: not run")

print("\n## Decoding (tokens/s over all rows; wall time includes the host, GPU time excludes it for specdec)\n")
print("| case | specdec tok/s GPU | specdec tok/s wall | torch tok/s wall | specdec/torch (wall) | specdec speedup GPU / wall | torch speedup wall | acceptedMean specdec / torch | specdec readbacks/token |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
names = [r["name"] for r in ours["rows"] if r["group"].startswith("decoding")]
names += [n for n in T if T[n]["group"].startswith("decoding") and n not in names]
for n in names:
    ow, tw = val(O, n, "wallTokensPerSec"), val(T, n, "wallTokensPerSec")
    ratio = ow / tw if ow and tw else None
    sp = f"{f(val(O, n, 'speedup'), 2)} / {f(val(O, n, 'wallSpeedup'), 2)}" if n.startswith("spec") else ""
    tsp = f(val(T, n, "wallSpeedup"), 2) if n.startswith("spec") else ""
    acc = f"{f(val(O, n, 'acceptedMean'), 2)} / {f(val(T, n, 'acceptedMean'), 2)}" if n.startswith("spec") else ""
    print(f"| {n} | {f(val(O, n, 'tokensPerSec'), 0)} | {f(ow, 0)} | {f(tw, 0)} | {f(ratio, 2)} | {sp} | {tsp} | {acc} | {f(val(O, n, 'readbacksPerToken'), 4)} |")

print("\n## Training step (forward + backward + clip + Adam)\n")
print("| case | specdec GPU ms | specdec wall ms | torch GPU ms | torch wall ms | torch/specdec (wall) |")
print("|---|---:|---:|---:|---:|---:|")
train = {}  # role → (our row name, torch row name): matched by role, names carry the sizes
for role in ("target", "draft"):
    on = next((k for k in O if k.startswith(f"train step {role} ")), None)
    tn = next((k for k in T if k.startswith(f"train step {role} ")), None)
    train[role] = (on, tn)
    ow, tw = val(O, on, "wallMs") if on else None, val(T, tn, "wallMs") if tn else None
    label = on if on == tn or not tn else f"{on} / torch: {tn}" if on else tn
    print(f"| {label} | {f(val(O, on, 'gpuMs') if on else None, 2)} | {f(ow, 2)} | {f(val(T, tn, 'gpuMs') if tn else None, 2)} | {f(tw, 2)} | {f(tw / ow if ow and tw else None, 2)} |")

print("\n## GEMM (f32 GFLOP/s, GPU time)\n")
print("| size | specdec best (case) | torch x @ w.T |")
print("|---|---:|---:|")
groups = sorted({r["group"] for r in ours["rows"] + theirs["rows"] if r["group"].startswith("gemm ")}, key=lambda g: (len(g), g))
best_ours = {}
for g in groups:
    cand = [r for r in ours["rows"] if r["group"] == g and "gflops" in r["values"]]
    b = max(cand, key=lambda r: r["values"]["gflops"]) if cand else None
    best_ours[g] = b["values"]["gflops"] if b else None
    t = next((r["values"]["gflops"] for r in theirs["rows"] if r["group"] == g), None)
    where = f" ({b['name']})" if b else ""
    print(f"| {g[5:]} | {f(best_ours[g], 0)}{where} | {f(t, 0)} |")

# performance targets of the issue (bench/README.md); peak f32 from a small table, or F32_PEAK_TFLOPS
peaks = [("H100 PCIe", 51.2), ("H100", 66.9), ("H200", 66.9), ("A100", 19.5), ("L40S", 91.6), ("L4", 30.3), ("A10", 31.2)]
peak = float(os.environ.get("F32_PEAK_TFLOPS") or next((p for k, p in peaks if k in adapter), 0)) or None
print("\n## Targets (reference config, batch 1)\n")


def verdict(ok):
    return "—" if ok is None else ("PASS" if ok else "FAIL")


b_ours, b_torch = val(O, "base decoding B1", "wallTokensPerSec"), val(T, "base decoding B1", "wallTokensPerSec")
x = b_ours / b_torch if b_ours and b_torch else None
print(f"- base decoding ≥ 3× torch eager tokens/s (wall): {f(x, 2)}× → {verdict(None if x is None else x >= 3)}")
spec1 = [O[n] for n in O if n.startswith("speculative decoding B1 ")]
best = max(spec1, key=lambda r: r["values"].get("wallSpeedup", 0), default=None)
if best:
    v = best["values"]
    print(f"- speculative ≥ 2.5× our base (best: {best['name']}): GPU {f(v.get('speedup'), 2)}×, wall {f(v.get('wallSpeedup'), 2)}× → {verdict(v.get('wallSpeedup', 0) >= 2.5)}")
    of = v.get("wallSpeedup", 0) / v["predictedSpeedup"] if v.get("predictedSpeedup") else None
    print(f"- ≥ 90% of Leviathan's predicted speedup {f(v.get('predictedSpeedup'), 2)}× (α {f(v.get('alpha'), 3)}, c {f(v.get('c'), 3)}): GPU {f(v.get('ofPredicted'), 2)}, wall {f(of, 2)} → {verdict(None if of is None else of >= 0.9)}")
else:
    print("- speculative decoding: no specdec result")
rb = [(r["values"]["readbacksPerToken"], r["name"]) for r in ours["rows"] if "B1" in r["group"] and "readbacksPerToken" in r["values"]]
worst = max(rb, default=None)
print(f"- ≤ 1 host readback per 64 tokens: worst {f(worst[0] if worst else None, 4)}{f' ({worst[1]})' if worst else ''} (limit {1/64:.4f}) → {verdict(worst[0] <= 1 / 64 if worst else None)}")
g = best_ours.get("gemm 2048×512×1536")
if g is None:
    print(f"- GEMM 2048×512×1536 f32 ≥ 40% of peak: not in specdec's suite; closest square sizes above; peak {f(peak, 1)} TFLOPS")
else:
    print(f"- GEMM 2048×512×1536 f32 ≥ 40% of peak: {f(g, 0)} GFLOP/s = {f(100 * g / (peak * 1000) if peak else None, 1)}% of {f(peak, 1)} TFLOPS → {verdict(g >= 0.4 * peak * 1000 if peak else None)}")
for role, (on, tn) in train.items():
    ow, tw = val(O, on, "wallMs") if on else None, val(T, tn, "wallMs") if tn else None
    print(f"- training step {role} at least as fast as torch: specdec {f(ow, 2)} ms vs torch {f(tw, 2)} ms (wall) → {verdict(ow <= tw if ow and tw else None)}")
PY
fi

if [ ${#failed[@]} -gt 0 ]; then
  log "stages that failed: ${failed[*]}"
  log "results in $out"
  exit 1
fi
log "all stages done; results in $out"
