/**
 * Optimizer kernels: the global gradient L2 norm (a deterministic two-level sum of squares), the
 * clip coefficient and Adam's bias corrections (one tiny kernel per step), the Adam update, and a
 * fill-with-zero kernel for `zero_grad`.
 *
 * A step is `gradSumSquares` once per parameter buffer, then `adamFinalize` once, then
 * `adamUpdate` once per parameter buffer, all in one compute pass. Everything that changes per
 * step (the step count t, the norm, the clip coefficient, the skip flag) lives in the small
 * {@link STATS_WORDS}-word `stats` buffer on the GPU, so the host never waits inside a step.
 *
 * @module
 */
import { type Dispatch, type Gpu, grid } from "./gpu.ts";

/** Threads per workgroup of every kernel here. */
const WG = 256;
/**
 * Elements each Adam-update invocation updates (WG apart, so reads stay coalesced). One per
 * invocation spent lavapipe's time on per-invocation work (index, stats, bounds): 8 took 55 ms
 * instead of 88 for 2.4 M parameters (busy 2-core machine); 16 gained little more.
 */
const ADAM_PER = 8;
/**
 * Gradient elements summed by one workgroup of {@link gradSumSquares}: 32 per thread (8 spent
 * twice the time on lavapipe, in workgroups and their reduction trees).
 */
export const SUMSQ_CHUNK: number = WG * 32;

/** Words (4 bytes each) of the `stats` buffer; field order as in {@link StatsWord}. */
export const STATS_WORDS = 8;

/**
 * Word offsets in the `stats` buffer (read these with `Gpu.readF32` / `Gpu.readU32`).
 * f32 words: `norm`, `coef`, `stepSize`, `bc2Sqrt`; u32 words: `skip`, `step`, `skipped`.
 */
export const StatsWord: {
  readonly norm: 0;
  readonly coef: 1;
  readonly skip: 2;
  readonly step: 3;
  readonly stepSize: 4;
  readonly bc2Sqrt: 5;
  readonly skipped: 6;
} = { norm: 0, coef: 1, skip: 2, step: 3, stepSize: 4, bc2Sqrt: 5, skipped: 6 };

/** The WGSL declaration of the `stats` buffer, shared by the kernels that bind it. */
const STATS_STRUCT = /* wgsl */ `
struct Stats {
  norm: f32,      // total L2 norm of all gradients (before clipping), this step
  coef: f32,      // what every gradient is multiplied by this step (1 without clipping)
  skip: u32,      // 1: this step was skipped (non-finite norm with skipNonFinite)
  step: u32,      // Adam steps taken (torch's state["step"])
  stepSize: f32,  // lr / (1 - beta1^t)
  bc2Sqrt: f32,   // sqrt(1 - beta2^t)
  skipped: u32,   // steps skipped so far
  pad: u32,
}`;

/** Per-workgroup partial sums of g² over one gradient buffer (see {@link gradSumSquares}). */
const SUMSQ = /* wgsl */ `
struct Params { n: u32, offset: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;            // (n) f32
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;  // (total partials) f32
const WG: u32 = ${WG}u;
const CHUNK: u32 = ${SUMSQ_CHUNK}u; // elements per workgroup: WG × 8
var<workgroup> acc: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let group = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  let groups = (params.n + CHUNK - 1u) / CHUNK;
  // A 2-D grid may overshoot: those workgroups must not write over the next buffer's partials.
  // The condition is uniform over the workgroup, so the barriers below stay in uniform flow.
  if (group >= groups) { return; }
  let base = group * CHUNK;
  var s = 0.0;
  for (var k = 0u; k < ${SUMSQ_CHUNK / WG}u; k++) {
    let i = base + k * WG + lid;  // coalesced: neighbouring threads read neighbouring floats
    if (i < params.n) {
      let g = grad[i];
      s += g * g;
    }
  }
  // Fixed tree order: the same inputs always give the same bits (no float atomics).
  acc[lid] = s;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (lid < w) { acc[lid] += acc[lid + w]; }
    workgroupBarrier();
  }
  if (lid == 0u) { partials[params.offset + group] = acc[0]; }
}`;

/**
 * Sums all partials, then sets the norm, the clip coefficient, the skip flag, the step count and
 * the bias-corrected step size for this step (one workgroup).
 */
const FINALIZE = /* wgsl */ `
${STATS_STRUCT}
struct Params {
  count: u32,         // partial sums
  clip: u32,          // 1: clip the gradients to maxNorm
  maxNorm: f32,
  skipNonFinite: u32, // 1: a NaN/Inf norm skips the step
  lnBeta1: f32,       // ln beta1, from float64
  lnBeta2: f32,       // ln beta2, from float64
}
struct Hyper { lr: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;  // (count) f32
@group(0) @binding(2) var<storage, read> hyper: Hyper;          // (1): written by the host per step
@group(0) @binding(3) var<storage, read_write> stats: Stats;    // (STATS_WORDS)
const WG: u32 = ${WG}u;
var<workgroup> acc: array<f32, WG>;

// Bit tests: WGSL compilers may assume floats are finite and fold x != x away.
fn nonFinite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u; }
fn isNan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

// exp(x) - 1 for x <= 0 without the cancellation of exp(x) - 1 near 0: 1 - 0.999^1 computed as
// 1 - exp(ln 0.999) in f32 would lose ~4 significant digits of bias_correction2.
fn expm1Neg(x: f32) -> f32 {
  if (x > -0.5) {
    // Taylor series in Horner form: x (1 + x/2 (1 + x/3 (1 + ...))); the x^13/13! term is < 1e-13.
    var s = 1.0;
    for (var k = 12; k >= 2; k--) { s = 1.0 + x * s / f32(k); }
    return x * s;
  }
  return exp(x) - 1.0;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < params.count; i += WG) { s += partials[i]; }
  acc[lid] = s;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (lid < w) { acc[lid] += acc[lid + w]; }
    workgroupBarrier();
  }
  if (lid != 0u) { return; }
  let sumSq = acc[0];
  let total = sqrt(sumSq);
  stats.norm = total;
  if (params.skipNonFinite != 0u && nonFinite(sumSq)) {
    // Like a GradScaler-skipped step: params, moments and the step count stay as they are.
    stats.skip = 1u;
    stats.skipped += 1u;
    return;
  }
  stats.skip = 0u;
  var coef = 1.0;
  if (params.clip != 0u) {
    // torch: clip_coef = max_norm / (total_norm + 1e-6); grads *= clamp(clip_coef, max=1).
    let d = total + 1e-6;
    if (isNan(d)) {
      coef = d;  // clamp keeps NaN: every gradient becomes NaN, as in torch
    } else if (nonFinite(d)) {
      coef = 0.0;  // max / inf; spelled out since GPU division is only specified in range
    } else {
      coef = min(params.maxNorm / d, 1.0);
    }
  }
  stats.coef = coef;
  let t = stats.step + 1u;
  stats.step = t;
  // 1 - beta^t = -expm1(t ln beta); the host passes ln beta from float64.
  let bc1 = -expm1Neg(f32(t) * params.lnBeta1);
  let bc2 = -expm1Neg(f32(t) * params.lnBeta2);
  stats.stepSize = hyper.lr / bc1;
  stats.bc2Sqrt = sqrt(bc2);
}`;

/** The Adam update of one parameter buffer, one element per thread. */
const adamCode = (vec: boolean): string => /* wgsl */ `
${STATS_STRUCT}
struct Params { n: u32, w1: f32, beta2: f32, omb2: f32, eps: f32 } // n: in elements of E
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<E>;    // (n) E
@group(0) @binding(2) var<storage, read> grad: array<E>;           // (n) E, unscaled
@group(0) @binding(3) var<storage, read_write> expAvg: array<E>;   // (n) E, m
@group(0) @binding(4) var<storage, read_write> expAvgSq: array<E>; // (n) E, v
@group(0) @binding(5) var<storage, read> stats: Stats;               // (STATS_WORDS)
alias E = ${vec ? "vec4f" : "f32"}; // vec4f when the size is a multiple of 4
const WG: u32 = ${WG}u;
const PER: u32 = ${ADAM_PER}u; // elements per invocation
const CHUNK: u32 = ${WG * ADAM_PER}u; // elements per workgroup: WG × PER

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  if (stats.skip != 0u) { return; }
  let coef = stats.coef;
  let stepSize = stats.stepSize;
  let bc2Sqrt = stats.bc2Sqrt;
  let base = (wid.x + wid.y * nwg.x) * CHUNK + lid; // the grid may be split over x and y
  for (var k = 0u; k < PER; k++) {
    let i = base + k * WG; // coalesced: neighbouring invocations update neighbouring floats
    if (i >= params.n) { break; }
    // Clipping scales g on the fly (torch scales the stored gradient first: same f32 product).
    let g = grad[i] * coef;
    let m0 = expAvg[i];
    // torch: exp_avg.lerp_(grad, 1 - beta1), with lerp's two branches for accuracy.
    var m: E;
    if (params.w1 < 0.5) { m = m0 + params.w1 * (g - m0); } else { m = g - (g - m0) * (1.0 - params.w1); }
    // torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let v = expAvgSq[i] * params.beta2 + params.omb2 * g * g;
    expAvg[i] = m;
    expAvgSq[i] = v;
    // torch: denom = sqrt(v) / sqrt(bias_correction2) + eps; param.addcdiv_(m, denom, -step_size)
    let denom = sqrt(v) / bc2Sqrt + params.eps;
    param[i] = param[i] - stepSize * (m / denom);
  }
}`;

/** Writes zeros over the first n floats of a buffer. */
const FILL_ZERO = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> buf: array<f32>; // (≥ n) f32
const WG: u32 = ${WG}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (i < params.n) { buf[i] = 0.0; }
}`;

/**
 * How many partial sums {@link gradSumSquares} writes for a buffer of `n` floats.
 *
 * @param n gradient elements
 * @returns ceil(n / SUMSQ_CHUNK)
 */
export function sumSquaresPartials(n: number): number {
  return Math.ceil(n / SUMSQ_CHUNK);
}

/**
 * Partial sums of squares of one gradient buffer: `partials[offset + j] = Σ g[i]²` over the j-th
 * chunk of {@link SUMSQ_CHUNK} elements, in a fixed order (deterministic).
 *
 * @param gpu the runtime
 * @param args `grad (n) f32`; `partials (≥ offset + sumSquaresPartials(n)) f32`; `gridLimit`
 *   (tests only) splits the workgroups over x and y below the device's 65535
 * @returns the dispatch
 */
export function gradSumSquares(
  gpu: Gpu,
  args: { grad: GPUBuffer; partials: GPUBuffer; n: number; offset: number; gridLimit?: number },
): Dispatch {
  return gpu.kernel({
    label: `grad sum of squares (${args.n})`,
    code: SUMSQ,
    params: { n: args.n, offset: args.offset },
    buffers: { grad: args.grad, partials: args.partials },
    workgroups: grid(sumSquaresPartials(args.n), args.gridLimit),
  });
}

/**
 * The once-per-step kernel: total norm `sqrt(Σ partials)`, clip coefficient (torch
 * `clip_grad_norm_`), skip flag, step count `t += 1`, `stepSize = lr / (1 − β1^t)` and
 * `bc2Sqrt = sqrt(1 − β2^t)`, all into `stats`.
 *
 * @param gpu the runtime
 * @param args `partials (count) f32`; `hyper (1) f32` = [lr], written by the host;
 *   `stats (STATS_WORDS)` read-write; `maxNorm` (Infinity: no clipping); `skipNonFinite`: a
 *   NaN/Inf norm skips the step (sets `skip`, leaves `step`); `beta1`, `beta2` in [0, 1)
 * @returns the dispatch
 */
export function adamFinalize(
  gpu: Gpu,
  args: {
    partials: GPUBuffer;
    count: number;
    hyper: GPUBuffer;
    stats: GPUBuffer;
    maxNorm: number;
    skipNonFinite: boolean;
    beta1: number;
    beta2: number;
  },
): Dispatch {
  const clip = Number.isFinite(args.maxNorm);
  // ln 0 = -inf: any large negative finite value gives beta^t = 0 in f32 just as well.
  const ln = (b: number) => b > 0 ? Math.log(b) : -1e4;
  return gpu.kernel({
    label: "adam finalize (norm, clip, bias correction)",
    code: FINALIZE,
    params: {
      count: args.count,
      clip: clip ? 1 : 0,
      maxNorm: clip ? args.maxNorm : 0,
      skipNonFinite: args.skipNonFinite ? 1 : 0,
      lnBeta1: ln(args.beta1),
      lnBeta2: ln(args.beta2),
    },
    buffers: { partials: args.partials, hyper: args.hyper, stats: args.stats },
    workgroups: 1,
  });
}

/**
 * The Adam update of one parameter buffer (torch.optim.Adam, no weight decay, no amsgrad),
 * reading the clip coefficient, step size and bias correction from `stats`, and doing nothing
 * when `stats.skip` is set.
 *
 * @param gpu the runtime
 * @param args `param (n) f32` updated; `grad (n) f32` (read, left unscaled); `expAvg (n) f32`
 *   and `expAvgSq (n) f32` updated; `stats (STATS_WORDS)` from {@link adamFinalize};
 *   `gridLimit` (tests only) splits the workgroups over x and y below the device's 65535
 * @returns the dispatch
 */
export function adamUpdate(
  gpu: Gpu,
  args: {
    param: GPUBuffer;
    grad: GPUBuffer;
    expAvg: GPUBuffer;
    expAvgSq: GPUBuffer;
    stats: GPUBuffer;
    n: number;
    beta1: number;
    beta2: number;
    eps: number;
    gridLimit?: number;
  },
): Dispatch {
  // vec4 elements when they fit: lavapipe then updates ~2x faster (a quarter of the index
  // and bounds work); the arithmetic is the same per float.
  const vec = args.n % 4 === 0;
  const units = vec ? args.n / 4 : args.n;
  return gpu.kernel({
    label: `adam update (${args.n})`,
    code: adamCode(vec),
    // 1 − β computed in float64 then rounded, like torch's Python-float scalars.
    params: {
      n: units,
      w1: 1 - args.beta1,
      beta2: args.beta2,
      omb2: 1 - args.beta2,
      eps: args.eps,
    },
    buffers: {
      param: args.param,
      grad: args.grad,
      expAvg: args.expAvg,
      expAvgSq: args.expAvgSq,
      stats: args.stats,
    },
    workgroups: grid(Math.ceil(units / (WG * ADAM_PER)), args.gridLimit),
  });
}

/**
 * Zeroes the first `n` floats of `buffer` (gradient reset between steps).
 *
 * @param gpu the runtime
 * @param args `buffer (≥ n) f32`, `n`
 * @returns the dispatch
 */
export function fillZero(gpu: Gpu, args: { buffer: GPUBuffer; n: number }): Dispatch {
  return gpu.kernel({
    label: `zero (${args.n})`,
    code: FILL_ZERO,
    params: { n: args.n },
    buffers: { buf: args.buffer },
    workgroups: Math.ceil(args.n / WG),
  });
}
