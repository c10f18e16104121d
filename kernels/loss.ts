/**
 * Softmax cross-entropy over rows of logits, with its gradient fused in, and a deterministic
 * sum of per-row losses.
 *
 * Cross-entropy has three variants, one whole shader each: loss only (evaluation), loss and
 * gradient into `dLogits` (training), and loss and gradient written in place over the logits.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/** Target value meaning "no loss at this row" (loss 0, zero gradient row). */
export const IGNORE: number = 0xffffffff;

/** Bits of a quiet NaN, passed as a uniform: WGSL rejects NaN constants in shader code. */
const NAN_BITS = 0x7fc00000;

/**
 * Invocations per row of cross-entropy. 32 whatever V: on lavapipe a workgroup of 256 per row
 * (V = 256) took 12–20 ms at T = 260 against 2.4 ms with 32 (fewer barrier levels and idle
 * invocations per row); a byte vocabulary gives each invocation 8 logits.
 */
const CE_WG = 32;

/** Invocations of the {@link sumLoss} workgroup. */
const SUM_WG = 256;

/** What a cross-entropy kernel writes: the loss, also the gradient, or the gradient in place. */
type CrossEntropyMode = "loss" | "grad" | "gradInPlace";

/**
 * One workgroup per row t: m = max logits, sum = Σ exp(l − m), loss = log(sum) − (l[target] − m);
 * ignored rows: loss 0; a target ≥ V that isn't IGNORE: NaN, so the bug shows. With `"grad"` also
 * dLogits = scale·(softmax − onehot) (zero rows where ignored, NaN rows for a bad target); with
 * `"gradInPlace"` the gradient overwrites the logits (`logits` read-write, no `dLogits`): the
 * target's logit is read before the barriers, and each invocation overwrites only the logits it
 * alone reads after them.
 */
const crossEntropyCode = (wg: number, mode: CrossEntropyMode): string => /* wgsl */ `
struct Params { T: u32, V: u32, ${mode === "loss" ? "" : "scale: f32, "}nanBits: u32 }
@group(0) @binding(0) var<uniform> params: Params;
${
  mode === "gradInPlace"
    ? `@group(0) @binding(1) var<storage, read_write> logits: array<f32>; // (T, V), then dLogits`
    : `@group(0) @binding(1) var<storage, read> logits: array<f32>;       // (T, V)`
}
@group(0) @binding(2) var<storage, read> targets: array<u32>;      // (T) u32
@group(0) @binding(3) var<storage, read_write> losses: array<f32>; // (T)${
  mode === "grad"
    ? "\n@group(0) @binding(4) var<storage, read_write> dLogits: array<f32>; // (T, V)"
    : ""
}
const WG: u32 = ${wg}u;
const IGNORE: u32 = 0xffffffffu;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let base = row * params.V;
  let tgt = targets[row];
  let ignored = tgt == IGNORE;
  let valid = tgt < params.V;
  // read before the barriers below (in place, the gradient overwrites the row afterwards)
  var lt = 0.0;
  if (valid) { lt = logits[base + tgt]; }

  var m = -3.4028234663852886e38;
  for (var v = lid; v < params.V; v += WG) { m = max(m, logits[base + v]); }
  red[lid] = m;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  m = red[0];
  workgroupBarrier(); // everyone has read the max before red is reused

  var sum = 0.0;
  for (var v = lid; v < params.V; v += WG) { sum += exp(logits[base + v] - m); }
  red[lid] = sum;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  sum = red[0];

  if (lid == 0u) {
    var loss = 0.0;
    if (valid) { loss = log(sum) - (lt - m); } // shift first: exact for big logits
    else if (!ignored) { loss = bitcast<f32>(params.nanBits); }
    losses[row] = loss;
  }
${
  mode === "loss" ? "" : `
  let k = params.scale / sum;
  for (var v = lid; v < params.V; v += WG) {
    var g = 0.0;
    if (valid) { g = exp(logits[base + v] - m) * k - select(0.0, params.scale, v == tgt); }
    else if (!ignored) { g = bitcast<f32>(params.nanBits); }
    ${
    mode === "gradInPlace"
      ? "logits[base + v] = g; // each invocation rewrites only what it alone reads"
      : "dLogits[base + v] = g;"
  }
  }`
}
}`;

/** out[0] (+)= scale · Σ losses: one workgroup, invocation i sums i, i+256, … then a tree. */
const SUM_LOSS = /* wgsl */ `
struct Params { T: u32, scale: f32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> losses: array<f32>;    // (T)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (1)
const WG: u32 = ${SUM_WG}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var t = lid; t < params.T; t += WG) { acc += losses[t]; }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    var v = params.scale * red[0];
    if (params.accumulate != 0u) { v = v + out[0]; }
    out[0] = v;
  }
}`;

/**
 * Softmax cross-entropy per row of `logits (T, V)`: `losses[t] = −log softmax(logits[t])[target]`
 * (numerically stable: the row max is subtracted), 0 where `targets[t] == IGNORE`. With
 * `dLogits`, also writes the gradient of `scale · Σ_t losses[t]`: `scale·(softmax − onehot)`,
 * zero rows where ignored (every row is overwritten). A target ≥ V other than IGNORE gives NaN.
 *
 * @param gpu the runtime
 * @param a `logits (T, V)`, `targets (T) u32`, out `losses (T)`, optional out `dLogits (T, V)`
 *   (may be `logits` itself: the gradient then overwrites the logits in place, saving a
 *   (T, V) buffer), sizes, and the gradient `scale` (e.g. 1/count for a mean)
 * @returns one dispatch (one workgroup per row)
 * @example
 * ```ts
 * import { crossEntropy, IGNORE, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const logits = gpu.upload("logits (2, 2)", new Float32Array([0, 0, 5, 1]));
 * const targets = gpu.upload("targets (2)", new Uint32Array([1, IGNORE]));
 * const losses = gpu.buffer("losses (2)", 8), dLogits = gpu.buffer("dLogits (2, 2)", 16);
 * gpu.run("ce", [crossEntropy(gpu, { logits, targets, losses, dLogits, T: 2, V: 2, scale: 1 })]);
 * console.log(await gpu.readF32(losses)); // [0.6931, 0]
 * ```
 */
export function crossEntropy(
  gpu: Gpu,
  a: {
    logits: GPUBuffer;
    targets: GPUBuffer;
    losses: GPUBuffer;
    dLogits?: GPUBuffer;
    T: number;
    V: number;
    scale: number;
  },
): Dispatch {
  const { logits, targets, losses, dLogits, T, V, scale } = a;
  const wg = CE_WG;
  if (dLogits === undefined) {
    return gpu.kernel({
      label: `crossEntropy T=${T} V=${V}`,
      code: crossEntropyCode(wg, "loss"),
      params: { T, V, nanBits: NAN_BITS },
      buffers: { logits, targets, losses },
      workgroups: T,
    });
  }
  const params = { T, V, scale, nanBits: NAN_BITS };
  if (dLogits === logits) {
    return gpu.kernel({
      label: `crossEntropy+grad in place T=${T} V=${V}`,
      code: crossEntropyCode(wg, "gradInPlace"),
      params,
      buffers: { logits, targets, losses },
      workgroups: T,
    });
  }
  return gpu.kernel({
    label: `crossEntropy+grad T=${T} V=${V}`,
    code: crossEntropyCode(wg, "grad"),
    params,
    buffers: { logits, targets, losses, dLogits },
    workgroups: T,
  });
}

/**
 * Sum of per-row losses: `out[0] (+)= scale · Σ_t losses[t]`, a fixed-order tree reduction in
 * one workgroup (deterministic, any T).
 *
 * @param gpu the runtime
 * @param a `losses (T)`, out `out (1)`, `T`, `scale` (e.g. 1/count for a mean); `accumulate`
 *   adds to `out[0]` instead of overwriting it (micro-batches)
 * @returns one dispatch
 * @example
 * ```ts
 * import { requestGpu, sumLoss } from "@x/specdec";
 * const gpu = await requestGpu();
 * const losses = gpu.upload("losses (3)", new Float32Array([1, 2, 3]));
 * const out = gpu.buffer("loss (1)", 4);
 * gpu.run("mean loss", [sumLoss(gpu, { losses, out, T: 3, scale: 1 / 3 })]);
 * console.log(await gpu.readF32(out)); // [2]
 * ```
 */
export function sumLoss(
  gpu: Gpu,
  a: { losses: GPUBuffer; out: GPUBuffer; T: number; scale: number; accumulate?: boolean },
): Dispatch {
  return gpu.kernel({
    label: `sumLoss T=${a.T}`,
    code: SUM_LOSS,
    params: { T: a.T, scale: a.scale, accumulate: a.accumulate ? 1 : 0 },
    buffers: { losses: a.losses, out: a.out },
    workgroups: 1,
  });
}
