/**
 * RMSNorm forward and backward: `y = x · rstd · weight` with `rstd = 1/sqrt(mean(x²) + eps)`
 * over each row of `x (T, C)`, like the reference's `RMSNorm` (eps = float32 epsilon).
 *
 * Two variants of each kernel:
 * - "wide" (hardware, where it was tuned): one workgroup of 32 to 256 invocations per row with a
 *   tree reduction in workgroup memory; dWeight by workgroups of 8 columns × 32 lanes.
 * - "narrow" (software adapters): a workgroup of 8 lanes per row, reading vec4s when C % 4 = 0;
 *   dWeight by lanes that each own a column and loop over rows. On lavapipe every storage or
 *   workgroup access is a loop over the SIMD lanes (8, run on one CPU thread), and a workgroup
 *   wider than one SIMD group pays for each barrier by switching between its groups: 32 to 256
 *   lanes over a row of a few hundred values mostly wait.
 *
 * Every reduction has a fixed order (no float atomics): results are deterministic.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { sumRows } from "./activation.ts";
import { rowWorkgroupSize } from "./rows.ts";

/** RMSNorm epsilon: float32 machine epsilon (2⁻²³ = 1.1920929e-7), as `torch.finfo(float32).eps`. */
export const RMS_EPS: number = 2 ** -23;

/** Rows of the weight-gradient reduction each workgroup of the first stage handles. */
const DW_CHUNK_ROWS = 512;

/** Lanes per row of the narrow kernels: one SIMD group of the software adapter. */
const NARROW_LANES = 8;

/**
 * Forward, one workgroup of WG lanes per row: lane l sums x² over columns l, l+WG, …, a tree
 * sums the lanes, then every lane writes its columns of y. Wide with WG = 32 to 256; narrow
 * (WG = 8) when C is not a multiple of 4.
 */
const rmsNormCode = (wg: number): string => /* wgsl */ `
struct Params { T: u32, C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (T, C)
@group(0) @binding(2) var<storage, read> weight: array<f32>;     // (C)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (T, C)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // (T)
const WG: u32 = ${wg}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let base = row * params.C;
  var ss = 0.0;
  for (var c = lid; c < params.C; c += WG) {
    let v = x[base + c];
    ss = fma(v, v, ss);
  }
  red[lid] = ss;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = 1.0 / sqrt(red[0] / f32(params.C) + params.eps);
  if (lid == 0u) { rstd[row] = r; }
  for (var c = lid; c < params.C; c += WG) {
    y[base + c] = x[base + c] * r * weight[c];
  }
}`;

/**
 * Forward, narrow with vec4 reads (C % 4 = 0): 8 lanes per row, lane l sums the vec4s l, l+8, …
 * of the row, then its four components pairwise, then a 3-step tree over the lanes.
 */
const RMS_NORM_NARROW_VEC4 = /* wgsl */ `
struct Params { T: u32, C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4f>;        // (T, C/4)
@group(0) @binding(2) var<storage, read> weight: array<vec4f>;   // (C/4)
@group(0) @binding(3) var<storage, read_write> y: array<vec4f>;  // (T, C/4)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // (T)
const WG: u32 = ${NARROW_LANES}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let n = params.C / 4u; // vec4s per row
  let base = row * n;
  var ss = vec4f();
  for (var c = lid; c < n; c += WG) {
    let v = x[base + c];
    ss = fma(v, v, ss);
  }
  red[lid] = (ss.x + ss.y) + (ss.z + ss.w);
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = 1.0 / sqrt(red[0] / f32(params.C) + params.eps);
  if (lid == 0u) { rstd[row] = r; }
  for (var c = lid; c < n; c += WG) {
    y[base + c] = x[base + c] * r * weight[c];
  }
}`;

/**
 * Backward for dx, `dx = rstd·w·dy − x · rstd³/C · Σ_c(w·dy·x)`, written or (`accumulate`,
 * baked in: one pipeline per flag, no branch in the write loop) added. One workgroup of `wg`
 * lanes per row: wide (32 to 256 lanes) on hardware; narrow (8 lanes, for C not a multiple of 4)
 * on software adapters. Lane l sums `w·dy·x` over columns l, l + wg, …, then a fixed tree.
 */
const rmsNormDxCode = (wg: number, accumulate: boolean): string => /* wgsl */ `
struct Params { T: u32, C: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (T, C)
@group(0) @binding(2) var<storage, read> weight: array<f32>;   // (C)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;     // (T)
@group(0) @binding(4) var<storage, read> dy: array<f32>;       // (T, C)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>; // (T, C)
const WG: u32 = ${wg}u;
const ACCUMULATE: bool = ${accumulate};
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let base = row * params.C;
  var d = 0.0;
  for (var c = lid; c < params.C; c += WG) {
    d = fma(weight[c] * dy[base + c], x[base + c], d);
  }
  red[lid] = d;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = rstd[row];
  let k = red[0] * r * r * r / f32(params.C);
  for (var c = lid; c < params.C; c += WG) {
    var g = r * weight[c] * dy[base + c] - x[base + c] * k;
    if (ACCUMULATE) { g = g + dx[base + c]; }
    dx[base + c] = g;
  }
}`;

/**
 * Backward for dx, narrow with vec4 reads (C % 4 = 0): 8 lanes per row, lane l sums `w·dy·x`
 * over the vec4s l, l+8, …, then its components pairwise, then a fixed 3-step tree.
 */
const rmsNormDxNarrowVec4Code = (accumulate: boolean): string => /* wgsl */ `
struct Params { T: u32, C: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4f>;        // (T, C/4)
@group(0) @binding(2) var<storage, read> weight: array<vec4f>;   // (C/4)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;       // (T)
@group(0) @binding(4) var<storage, read> dy: array<vec4f>;       // (T, C/4)
@group(0) @binding(5) var<storage, read_write> dx: array<vec4f>; // (T, C/4)
const WG: u32 = ${NARROW_LANES}u;
const ACCUMULATE: bool = ${accumulate};
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let n = params.C / 4u; // vec4s per row
  let base = row * n;
  var d = vec4f();
  for (var c = lid; c < n; c += WG) {
    d = fma(weight[c] * dy[base + c], x[base + c], d);
  }
  red[lid] = (d.x + d.y) + (d.z + d.w);
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = rstd[row];
  let k = red[0] * r * r * r / f32(params.C);
  for (var c = lid; c < n; c += WG) {
    var g = r * weight[c] * dy[base + c] - x[base + c] * k;
    if (ACCUMULATE) { g = g + dx[base + c]; }
    dx[base + c] = g;
  }
}`;

/**
 * Backward for dWeight, narrow, first stage: 8 lanes per workgroup, each lane owns one column
 * (E = f32) or a vec4 of columns (E = vec4f, C % 4 = 0) and sums `dy·x·rstd` over the chunk's
 * rows in row order: no workgroup memory or barriers. Writes `out[chunk, c]` (added to when
 * `accumulate`).
 */
const rmsNormDwNarrowCode = (vec4: boolean): string => /* wgsl */ `
alias E = ${vec4 ? "vec4f" : "f32"};
const WIDTH: u32 = ${vec4 ? 4 : 1}u; // columns per element of E
struct Params { T: u32, C: u32, chunkRows: u32, colBlocks: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<E>;         // (T, C/WIDTH)
@group(0) @binding(2) var<storage, read> rstd: array<f32>;    // (T)
@group(0) @binding(3) var<storage, read> dy: array<E>;        // (T, C/WIDTH)
@group(0) @binding(4) var<storage, read_write> out: array<E>; // (chunks, C/WIDTH)
const WG: u32 = ${NARROW_LANES}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blockIndex = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  let chunk = blockIndex / params.colBlocks;
  let n = params.C / WIDTH; // elements per row
  let c = (blockIndex % params.colBlocks) * WG + lid;
  let t0 = chunk * params.chunkRows;
  if (t0 >= max(params.T, 1u) || c >= n) { return; }
  let t1 = min(params.T, t0 + params.chunkRows);
  var s = E();
  for (var t = t0; t < t1; t++) {
    s = fma(dy[t * n + c] * x[t * n + c], E(rstd[t]), s);
  }
  if (params.accumulate != 0u) { s = s + out[chunk * n + c]; }
  out[chunk * n + c] = s;
}`;

/**
 * Backward for dWeight, wide, first stage: a workgroup of 8 columns × 32 lanes sums `dy·x·rstd`
 * over one chunk of rows (lane l takes rows l, l+32, …, then a tree over the lanes) into
 * `out[chunk, c]` (added to when `accumulate`).
 */
const RMS_NORM_DW_WIDE = /* wgsl */ `
struct Params { T: u32, C: u32, chunkRows: u32, colBlocks: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (T, C)
@group(0) @binding(2) var<storage, read> rstd: array<f32>;      // (T)
@group(0) @binding(3) var<storage, read> dy: array<f32>;        // (T, C)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (chunks, C)
const COLS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> red: array<f32, 256>; // (LANES, COLS)

@compute @workgroup_size(8, 32)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let blockIndex = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  let chunk = blockIndex / params.colBlocks;
  let c0 = (blockIndex % params.colBlocks) * COLS;
  let t0 = chunk * params.chunkRows;
  if (t0 >= max(params.T, 1u)) { return; }
  let t1 = min(params.T, t0 + params.chunkRows);
  let c = c0 + lid.x;
  var s = 0.0;
  if (c < params.C) {
    for (var t = t0 + lid.y; t < t1; t += LANES) {
      s = fma(dy[t * params.C + c] * x[t * params.C + c], rstd[t], s);
    }
  }
  red[lid.y * COLS + lid.x] = s;
  workgroupBarrier();
  for (var h = LANES / 2u; h > 0u; h = h >> 1u) {
    if (lid.y < h) { red[lid.y * COLS + lid.x] += red[(lid.y + h) * COLS + lid.x]; }
    workgroupBarrier();
  }
  if (lid.y == 0u && c < params.C) {
    var v = red[lid.x];
    if (params.accumulate != 0u) { v = v + out[chunk * params.C + c]; }
    out[chunk * params.C + c] = v;
  }
}`;

/**
 * RMSNorm forward over the rows of `x (T, C)`: `y = x · rstd · weight`, and the per-row
 * `rstd = 1/sqrt(mean(x²) + eps)` saved for {@link rmsNormBackward}.
 *
 * @param gpu the runtime
 * @param a buffers and sizes: `x (T, C)`, `weight (C)`, out `y (T, C)` (not `x`), out `rstd (T)`;
 *   `narrow` forces the kernel with 8 lanes per row (true) or the one with 32 to 256 (false).
 *   Default: narrow on software adapters (3 to 10 times faster there at C = 128, T = 6 to
 *   2048), wide on hardware, where it was tuned
 * @returns one dispatch (one workgroup per row)
 * @example
 * ```ts
 * import { requestGpu, rmsNorm } from "@x/specdec";
 * const gpu = await requestGpu();
 * const T = 4, C = 8;
 * const x = gpu.upload("x (T, C)", new Float32Array(T * C).fill(2));
 * const weight = gpu.upload("w (C)", new Float32Array(C).fill(1));
 * const y = gpu.buffer("y (T, C)", T * C * 4), rstd = gpu.buffer("rstd (T)", T * 4);
 * gpu.run("norm", [rmsNorm(gpu, { x, weight, y, rstd, T, C })]);
 * console.log(await gpu.readF32(y)); // all ≈ 1
 * ```
 */
export function rmsNorm(
  gpu: Gpu,
  a: {
    x: GPUBuffer;
    weight: GPUBuffer;
    y: GPUBuffer;
    rstd: GPUBuffer;
    T: number;
    C: number;
    narrow?: boolean;
  },
): Dispatch {
  const { x, weight, y, rstd, T, C } = a;
  const narrow = a.narrow ?? gpu.isSoftware;
  // vec4 bindings need at least 16 bytes: no vec4 reads of empty buffers
  const vec4 = C % 4 === 0 && C > 0 && T > 0;
  return gpu.kernel({
    label: `rmsNorm T=${T} C=${C}`,
    code: narrow && vec4
      ? RMS_NORM_NARROW_VEC4
      : rmsNormCode(narrow ? NARROW_LANES : rowWorkgroupSize(C)),
    params: { T, C, eps: RMS_EPS },
    buffers: { x, weight, y, rstd },
    workgroups: T,
  });
}

/**
 * RMSNorm backward: `dx` (one workgroup per row) and `dWeight = Σ_t dy·x·rstd` (a fixed-order
 * reduction over rows: one pass when T ≤ 512, else per-chunk partials in an internal buffer
 * allocated here, then {@link sumRows} over the chunks).
 *
 * @param gpu the runtime
 * @param a buffers and sizes: `x (T, C)`, `weight (C)`, `rstd (T)` from {@link rmsNorm},
 *   `dy (T, C)`, out `dx (T, C)`, out `dWeight (C)`; `accumulateDx` / `accumulateDw` add to the
 *   outputs instead of overwriting them (residual stream, gradient accumulation); `narrow`
 *   forces the kernels with 8 lanes per row for dx and 8 lanes looping over rows for dWeight
 *   (true) or the wide ones (false). Default: narrow on software adapters (5 to 9 times faster
 *   there at C = 128, T = 130 to 2048; 2 to 3 times at T = 7, C = 33), wide on hardware
 * @returns the dispatches, to encode in order
 * @example
 * ```ts
 * import { requestGpu, rmsNorm, rmsNormBackward } from "@x/specdec";
 * const gpu = await requestGpu();
 * const T = 4, C = 8, bytes = T * C * 4;
 * const x = gpu.upload("x (T, C)", new Float32Array(T * C).fill(2));
 * const weight = gpu.upload("w (C)", new Float32Array(C).fill(1));
 * const y = gpu.buffer("y (T, C)", bytes), rstd = gpu.buffer("rstd (T)", T * 4);
 * const dy = gpu.upload("dy (T, C)", new Float32Array(T * C).fill(1));
 * const dx = gpu.buffer("dx (T, C)", bytes), dWeight = gpu.buffer("dw (C)", C * 4);
 * gpu.run("norm fwd+bwd", [
 *   rmsNorm(gpu, { x, weight, y, rstd, T, C }),
 *   ...rmsNormBackward(gpu, { x, weight, rstd, dy, dx, dWeight, T, C, accumulateDx: true }),
 * ]);
 * console.log(await gpu.readF32(dWeight)); // all ≈ 4
 * ```
 */
export function rmsNormBackward(
  gpu: Gpu,
  a: {
    x: GPUBuffer;
    weight: GPUBuffer;
    rstd: GPUBuffer;
    dy: GPUBuffer;
    dx: GPUBuffer;
    dWeight: GPUBuffer;
    T: number;
    C: number;
    accumulateDx?: boolean;
    accumulateDw?: boolean;
    narrow?: boolean;
  },
): Dispatch[] {
  const { x, weight, rstd, dy, dx, T, C } = a;
  const narrow = a.narrow ?? gpu.isSoftware;
  const accumulateDx = !!a.accumulateDx;
  // vec4 bindings need at least 16 bytes: no vec4 reads of empty buffers
  const vec4 = narrow && C % 4 === 0 && C > 0 && T > 0;
  const dispatches: Dispatch[] = [
    narrow
      ? gpu.kernel({
        label: `rmsNormBackward dx narrow T=${T} C=${C}`,
        code: vec4
          ? rmsNormDxNarrowVec4Code(accumulateDx)
          : rmsNormDxCode(NARROW_LANES, accumulateDx),
        params: { T, C },
        buffers: { x, weight, rstd, dy, dx },
        workgroups: T,
      })
      : gpu.kernel({
        label: `rmsNormBackward dx T=${T} C=${C}`,
        code: rmsNormDxCode(rowWorkgroupSize(C), accumulateDx),
        params: { T, C },
        buffers: { x, weight, rstd, dy, dx },
        workgroups: T,
      }),
  ];
  const chunkRows = DW_CHUNK_ROWS;
  const chunks = Math.max(1, Math.ceil(T / chunkRows));
  // columns per workgroup: 8 (wide), or 8 lanes of one column or one vec4 of columns (narrow)
  const colBlocks = Math.ceil((vec4 ? C / 4 : C) / 8);
  // One chunk: reduce straight into dWeight. Several: partials (chunks, C), then their column sums.
  const out = chunks === 1
    ? a.dWeight
    : gpu.buffer(`rmsNormBackward dWeight partials (${chunks}, ${C})`, chunks * C * 4);
  const accumulate = chunks === 1 && a.accumulateDw ? 1 : 0;
  dispatches.push(gpu.kernel({
    label: `rmsNormBackward dWeight${narrow ? " narrow" : ""} T=${T} C=${C}`,
    code: narrow ? rmsNormDwNarrowCode(vec4) : RMS_NORM_DW_WIDE,
    params: { T, C, chunkRows, colBlocks, accumulate },
    buffers: { x, rstd, dy, out },
    workgroups: chunks * colBlocks,
  }));
  if (chunks > 1) {
    dispatches.push(
      sumRows(gpu, { x: out, out: a.dWeight, M: chunks, N: C, accumulate: a.accumulateDw }),
    );
  }
  return dispatches;
}
