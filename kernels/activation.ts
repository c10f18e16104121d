/**
 * Elementwise kernels and column sums: exact (erf) GELU forward and backward, the in-place
 * residual add, and deterministic column sums (bias gradients).
 *
 * WGSL has no `erf`: {@link ERF_WGSL} is a float32 erf accurate to ~1e-7 absolute.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/** Invocations per workgroup of the elementwise kernels. */
const EW = 256;

/**
 * WGSL source of `fn erf_f32(a: f32) -> f32`, the error function in float32 with a maximum
 * absolute error of about 6e-8 given an accurate `exp` (checked against a float64 erf on a dense
 * grid over [-10, 10] in the tests). Include it in any shader that needs erf.
 *
 * The polynomials are Norbert Juffa's faithfully rounded `erff`
 * (https://stackoverflow.com/a/35148199): an odd polynomial for |a| ≤ 0.9277, and
 * `1 − exp(poly(|a|))` above, where `exp(r) ≤ 0.42` so the subtraction doesn't cancel.
 */
export const ERF_WGSL: string = /* wgsl */ `
fn erf_f32(a: f32) -> f32 {
  let t = min(abs(a), 10.0); // erf(10) is 1 in f32; the clamp keeps t*t finite
  let s = t * t;
  if (t > 0.927734375) {
    var r = fma(-1.72853470e-5, t, 3.83197126e-4);
    let u = fma(-3.88396438e-3, t, 2.42546219e-2);
    r = fma(r, s, u);
    r = fma(r, t, -1.06777877e-1);
    r = fma(r, t, -6.34846687e-1);
    r = fma(r, t, -1.28717512e-1);
    r = fma(r, t, -t);
    return sign(a) * (1.0 - exp(r));
  }
  var r = -5.96761703e-4;
  r = fma(r, s, 4.99119423e-3);
  r = fma(r, s, -2.67681349e-2);
  r = fma(r, s, 1.12819925e-1);
  r = fma(r, s, -3.76125336e-1);
  r = fma(r, s, 1.28379166e-1);
  return fma(r, a, a);
}`;

/** y = 0.5·x·(1 + erf(x/√2)), one element per invocation. */
const GELU = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (n)
const WG: u32 = ${EW}u;
${ERF_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (i >= params.n) { return; }
  let v = x[i];
  y[i] = 0.5 * v * (1.0 + erf_f32(v * 0.70710678118654752));
}`;

/** dx = dy · (Φ(x) + x·φ(x)) with Φ the normal CDF and φ its density. */
const GELU_BACKWARD = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> dy: array<f32>;       // (n)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>; // (n)
const WG: u32 = ${EW}u;
${ERF_WGSL}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (i >= params.n) { return; }
  let v = x[i];
  let cdf = 0.5 * (1.0 + erf_f32(v * 0.70710678118654752));
  let pdf = 0.39894228040143268 * exp(-0.5 * v * v);
  dx[i] = dy[i] * (cdf + v * pdf);
}`;

/** x += y, one element per invocation. */
const ADD = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (n)
@group(0) @binding(2) var<storage, read> y: array<f32>;       // (n)
const WG: u32 = ${EW}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (i >= params.n) { return; }
  x[i] = x[i] + y[i];
}`;

/**
 * Column sums of `x (M, N)`: a workgroup of 8 columns × 32 lanes; lane l sums rows l, l+32, …
 * in order, then a tree over the lanes: a fixed order, so results are deterministic.
 */
const SUM_ROWS = /* wgsl */ `
struct Params { M: u32, N: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (M, N)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (N)
const COLS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> red: array<f32, 256>; // (LANES, COLS)

@compute @workgroup_size(8, 32)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let c0 = (wid.x + wid.y * nwg.x) * COLS; // the grid may be split over x and y
  if (c0 >= params.N) { return; }
  let c = c0 + lid.x;
  var s = 0.0;
  if (c < params.N) {
    for (var m = lid.y; m < params.M; m += LANES) { s += x[m * params.N + c]; }
  }
  red[lid.y * COLS + lid.x] = s;
  workgroupBarrier();
  for (var h = LANES / 2u; h > 0u; h = h >> 1u) {
    if (lid.y < h) { red[lid.y * COLS + lid.x] += red[(lid.y + h) * COLS + lid.x]; }
    workgroupBarrier();
  }
  if (lid.y == 0u && c < params.N) {
    var v = red[lid.x];
    if (params.accumulate != 0u) { v = v + out[c]; }
    out[c] = v;
  }
}`;

/**
 * Exact GELU, `y = 0.5·x·(1 + erf(x/√2))` (torch `F.gelu` default), elementwise.
 *
 * @param gpu the runtime
 * @param a `x (n)`, out `y (n)` (a different buffer), `n`
 * @returns one dispatch
 * @example
 * ```ts
 * import { gelu, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (3)", new Float32Array([-1, 0, 1]));
 * const y = gpu.buffer("y (3)", 12);
 * gpu.run("gelu", [gelu(gpu, { x, y, n: 3 })]);
 * console.log(await gpu.readF32(y)); // [-0.1587, 0, 0.8413]
 * ```
 */
export function gelu(gpu: Gpu, a: { x: GPUBuffer; y: GPUBuffer; n: number }): Dispatch {
  return gpu.kernel({
    label: `gelu n=${a.n}`,
    code: GELU,
    params: { n: a.n },
    buffers: { x: a.x, y: a.y },
    workgroups: Math.ceil(a.n / EW),
  });
}

/**
 * GELU backward: `dx = dy · gelu'(x)` with `gelu'(x) = Φ(x) + x·φ(x)`.
 *
 * @param gpu the runtime
 * @param a `x (n)` (the forward input), `dy (n)`, out `dx (n)`, `n`
 * @returns one dispatch
 */
export function geluBackward(
  gpu: Gpu,
  a: { x: GPUBuffer; dy: GPUBuffer; dx: GPUBuffer; n: number },
): Dispatch {
  return gpu.kernel({
    label: `geluBackward n=${a.n}`,
    code: GELU_BACKWARD,
    params: { n: a.n },
    buffers: { x: a.x, dy: a.dy, dx: a.dx },
    workgroups: Math.ceil(a.n / EW),
  });
}

/**
 * In-place add, `x += y` (residual connections, gradient sums).
 *
 * @param gpu the runtime
 * @param a `x (n)` updated in place, `y (n)` (a different buffer), `n`
 * @returns one dispatch
 */
export function add(gpu: Gpu, a: { x: GPUBuffer; y: GPUBuffer; n: number }): Dispatch {
  return gpu.kernel({
    label: `add n=${a.n}`,
    code: ADD,
    params: { n: a.n },
    buffers: { x: a.x, y: a.y },
    workgroups: Math.ceil(a.n / EW),
  });
}

/**
 * Column sums, narrow (software adapters): one invocation per column summing rows 0, 1, … in
 * order, 64 columns per workgroup, no barriers. The wide kernel's 32 lanes per column and their
 * reduction tree cost lavapipe 1.5x more (3.2 against 2.1 ms at M = 516, N = 512).
 */
const SUM_ROWS_NARROW = /* wgsl */ `
struct Params { M: u32, N: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (M, N)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (N)
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let c = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (c >= params.N) { return; }
  var s = 0.0;
  for (var m = 0u; m < params.M; m++) { s += x[m * params.N + c]; }
  if (params.accumulate != 0u) { s = s + out[c]; }
  out[c] = s;
}`;

/**
 * Column sums `out[c] (+)= Σ_m x[m, c]` of `x (M, N)` in a fixed order (deterministic): bias
 * gradients. One pass; each workgroup handles 8 columns over all M rows (wide), or 64 columns
 * with one invocation each (narrow).
 *
 * @param gpu the runtime
 * @param a `x (M, N)`, out `out (N)`, sizes; `accumulate` adds to `out` instead of overwriting;
 *   `narrow` picks the one-invocation-per-column kernel (default: on software adapters)
 * @returns one dispatch
 * @example
 * ```ts
 * import { requestGpu, sumRows } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (2, 3)", new Float32Array([1, 2, 3, 4, 5, 6]));
 * const out = gpu.buffer("out (3)", 12);
 * gpu.run("bias grad", [sumRows(gpu, { x, out, M: 2, N: 3 })]);
 * console.log(await gpu.readF32(out)); // [5, 7, 9]
 * ```
 */
export function sumRows(
  gpu: Gpu,
  a: { x: GPUBuffer; out: GPUBuffer; M: number; N: number; accumulate?: boolean; narrow?: boolean },
): Dispatch {
  const narrow = a.narrow ?? gpu.isSoftware;
  return gpu.kernel({
    label: `sumRows${narrow ? " narrow" : ""} M=${a.M} N=${a.N}`,
    code: narrow ? SUM_ROWS_NARROW : SUM_ROWS,
    params: { M: a.M, N: a.N, accumulate: a.accumulate ? 1 : 0 },
    buffers: { x: a.x, out: a.out },
    workgroups: Math.ceil(a.N / (narrow ? 64 : 8)),
  });
}
