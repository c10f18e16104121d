/**
 * RMSNorm forward and backward: `y = x · rstd · weight` with `rstd = 1/sqrt(mean(x²) + eps)`
 * over each row of `x (T, C)`, like the reference's `RMSNorm` (eps = float32 epsilon).
 *
 * Row reductions run one workgroup per row with a tree reduction in workgroup memory (on
 * software adapters: 8 lanes per row, forward and backward); the weight gradient's reduction over
 * rows is deterministic (fixed order, no float atomics).
 *
 * @module
 */
import { type Dispatch, f32bits, type Gpu } from "./gpu.ts";
import { sumRows } from "./activation.ts";
import { rowWorkgroupSize, treeReduce } from "./rows.ts";

/** RMSNorm epsilon: float32 machine epsilon (2⁻²³ = 1.1920929e-7), as `torch.finfo(float32).eps`. */
export const RMS_EPS: number = 2 ** -23;

/** Rows of the weight-gradient reduction each workgroup of the first stage handles. */
const DW_CHUNK_ROWS = 512;

/** The same for the narrow kernel ({@link rmsNormDwNarrowCode}), whose lanes loop over rows. */
const DW_NARROW_CHUNK_ROWS = 512;

/** WGSL that sums `red[0..WG)` into `red[0]` (see {@link treeReduce}). */
const TREE_SUM: string = treeReduce("red[lid] + red[lid + s]");

/** Forward: one workgroup per row; writes y and the row's rstd. */
const rmsNormCode = (wg: number): string => /* wgsl */ `
struct P { T: u32, C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (T, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (T, C)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // (T)
const WG: u32 = ${wg}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= p.T) { return; }
  let base = row * p.C;
  var ss = 0.0;
  for (var c = lid; c < p.C; c += WG) {
    let v = x[base + c];
    ss = fma(v, v, ss);
  }
  red[lid] = ss;
  ${TREE_SUM}
  let r = 1.0 / sqrt(red[0] / f32(p.C) + p.eps);
  if (lid == 0u) { rstd[row] = r; }
  for (var c = lid; c < p.C; c += WG) {
    y[base + c] = x[base + c] * r * w[c];
  }
}`;

/**
 * Lanes per row of the narrow forward ({@link rmsNormNarrowCode}): one SIMD group of the
 * software adapter (lavapipe runs a workgroup 8 invocations at a time on one CPU thread).
 */
const NARROW_LANES = 8;

/**
 * Forward for software adapters: a workgroup of 8 lanes per row, reading vec4s when C % 4 = 0.
 * On lavapipe every storage or workgroup access is a loop over the SIMD lanes, and a workgroup
 * wider than one SIMD group pays for each barrier by switching between its groups: 32 to 256
 * lanes over a row of a few hundred values mostly wait. Lane l sums elements (or vec4s)
 * l, l+8, …, then a 3-step tree in workgroup memory: a fixed order, deterministic.
 */
const rmsNormNarrowCode = (vec: boolean): string => {
  const e = vec ? "vec4f" : "f32";
  return /* wgsl */ `
struct P { T: u32, C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<${e}>;          // (T, C)${vec ? " as vec4" : ""}
@group(0) @binding(2) var<storage, read> w: array<${e}>;          // (C)${vec ? " as vec4" : ""}
@group(0) @binding(3) var<storage, read_write> y: array<${e}>;    // (T, C)${vec ? " as vec4" : ""}
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>; // (T)
const WG: u32 = ${NARROW_LANES}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= p.T) { return; }
  let n = ${vec ? "p.C / 4u" : "p.C"}; // elements per row
  let base = row * n;
  var ss = ${e}();
  for (var c = lid; c < n; c += WG) {
    let v = x[base + c];
    ss = fma(v, v, ss);
  }
  red[lid] = ${vec ? "(ss.x + ss.y) + (ss.z + ss.w)" : "ss"};
  ${TREE_SUM}
  let r = 1.0 / sqrt(red[0] / f32(p.C) + p.eps);
  if (lid == 0u) { rstd[row] = r; }
  for (var c = lid; c < n; c += WG) {
    y[base + c] = x[base + c] * r * w[c];
  }
}`;
};

/**
 * Backward for dx, one workgroup per row:
 * `dx = rstd·w·dy − x · rstd³/C · Σ_c(w·dy·x)` (written or added).
 */
const rmsNormDxCode = (wg: number): string => /* wgsl */ `
struct P { T: u32, C: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (T, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;        // (C)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;     // (T)
@group(0) @binding(4) var<storage, read> dy: array<f32>;       // (T, C)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>; // (T, C)
const WG: u32 = ${wg}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.T) { return; }
  let base = row * p.C;
  var dot = 0.0;
  for (var c = lid; c < p.C; c += WG) {
    dot = fma(w[c] * dy[base + c], x[base + c], dot);
  }
  red[lid] = dot;
  ${TREE_SUM}
  let r = rstd[row];
  let k = red[0] * r * r * r / f32(p.C);
  for (var c = lid; c < p.C; c += WG) {
    var g = r * w[c] * dy[base + c] - x[base + c] * k;
    if (p.accumulate != 0u) { g = g + dx[base + c]; }
    dx[base + c] = g;
  }
}`;

/**
 * Backward for dx on software adapters, like {@link rmsNormNarrowCode}: 8 lanes per row, vec4
 * reads when C % 4 = 0, lane l sums `w·dy·x` over elements l, l+8, … then a fixed 3-step tree.
 * `accumulate` is baked in (one pipeline per flag) so the write loop has no branch.
 */
const rmsNormDxNarrowCode = (vec: boolean, accumulate: boolean): string => {
  const e = vec ? "vec4f" : "f32";
  const as = vec ? " as vec4" : "";
  const add = accumulate ? "dx[base + c] + " : "";
  return /* wgsl */ `
struct P { T: u32, C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<${e}>;        // (T, C)${as}
@group(0) @binding(2) var<storage, read> w: array<${e}>;        // (C)${as}
@group(0) @binding(3) var<storage, read> rstd: array<f32>;     // (T)
@group(0) @binding(4) var<storage, read> dy: array<${e}>;       // (T, C)${as}
@group(0) @binding(5) var<storage, read_write> dx: array<${e}>; // (T, C)${as}
const WG: u32 = ${NARROW_LANES}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= p.T) { return; }
  let n = ${vec ? "p.C / 4u" : "p.C"}; // elements per row
  let base = row * n;
  var d = ${e}();
  for (var c = lid; c < n; c += WG) {
    d = fma(w[c] * dy[base + c], x[base + c], d);
  }
  red[lid] = ${vec ? "(d.x + d.y) + (d.z + d.w)" : "d"};
  ${TREE_SUM}
  let r = rstd[row];
  let k = red[0] * r * r * r / f32(p.C);
  for (var c = lid; c < n; c += WG) {
    dx[base + c] = ${add}(r * w[c] * dy[base + c] - x[base + c] * k);
  }
}`;
};

/**
 * Backward for dWeight on software adapters, first stage: 8 lanes per workgroup, each lane owns
 * one column (a vec4 of columns when C % 4 = 0) and sums `dy·x·rstd` over the chunk's rows in
 * row order: no workgroup memory or barriers, deterministic. Writes `out[chunk, c]` (added to
 * when `accumulate`); with one chunk, `out` is dWeight itself.
 */
const rmsNormDwNarrowCode = (vec: boolean): string => {
  const e = vec ? "vec4f" : "f32";
  const as = vec ? " as vec4" : "";
  return /* wgsl */ `
struct P { T: u32, C: u32, chunkRows: u32, colBlocks: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<${e}>;         // (T, C)${as}
@group(0) @binding(2) var<storage, read> rstd: array<f32>;      // (T)
@group(0) @binding(3) var<storage, read> dy: array<${e}>;        // (T, C)${as}
@group(0) @binding(4) var<storage, read_write> out: array<${e}>; // (chunks, C)${as}
const WG: u32 = ${NARROW_LANES}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let block = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  let chunk = block / p.colBlocks;
  let n = ${vec ? "p.C / 4u" : "p.C"}; // elements per row
  let c = (block % p.colBlocks) * WG + lid;
  let t0 = chunk * p.chunkRows;
  if (t0 >= max(p.T, 1u) || c >= n) { return; }
  let t1 = min(p.T, t0 + p.chunkRows);
  var s = ${e}();
  for (var t = t0; t < t1; t++) {
    s = fma(dy[t * n + c] * x[t * n + c], ${e}(rstd[t]), s);
  }
  if (p.accumulate != 0u) { s = s + out[chunk * n + c]; }
  out[chunk * n + c] = s;
}`;
};

/**
 * Backward for dWeight, first stage: workgroup (8 columns × 32 lanes) sums
 * `dy·x·rstd` over one chunk of rows in a fixed order (lane-strided, then a tree over lanes)
 * into `out[chunk, c]`. With one chunk, `out` is dWeight itself and may be accumulated into.
 */
const RMS_NORM_DW = /* wgsl */ `
struct P { T: u32, C: u32, chunkRows: u32, colBlocks: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: P;
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
  let block = wid.x + wid.y * nwg.x;
  let chunk = block / p.colBlocks;
  let c0 = (block % p.colBlocks) * COLS;
  let t0 = chunk * p.chunkRows;
  if (t0 >= max(p.T, 1u)) { return; }
  let t1 = min(p.T, t0 + p.chunkRows);
  let c = c0 + lid.x;
  var s = 0.0;
  if (c < p.C) {
    for (var t = t0 + lid.y; t < t1; t += LANES) {
      s = fma(dy[t * p.C + c] * x[t * p.C + c], rstd[t], s);
    }
  }
  red[lid.y * COLS + lid.x] = s;
  workgroupBarrier();
  for (var h = LANES / 2u; h > 0u; h = h >> 1u) {
    if (lid.y < h) { red[lid.y * COLS + lid.x] += red[(lid.y + h) * COLS + lid.x]; }
    workgroupBarrier();
  }
  if (lid.y == 0u && c < p.C) {
    var v = red[lid.x];
    if (p.accumulate != 0u) { v = v + out[chunk * p.C + c]; }
    out[chunk * p.C + c] = v;
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
  const narrow = a.narrow ?? gpu.isSoftware;
  // vec4 bindings need at least 16 bytes: no vec4 reads of empty buffers
  const vec = a.C % 4 === 0 && a.C > 0 && a.T > 0;
  return gpu.kernel({
    label: `rmsNorm T=${a.T} C=${a.C}`,
    code: narrow ? rmsNormNarrowCode(vec) : rmsNormCode(rowWorkgroupSize(a.C)),
    buffers: [a.x, a.weight, a.y, a.rstd],
    params: [a.T, a.C, f32bits(RMS_EPS)],
    workgroups: a.T,
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
  const { T, C } = a;
  const narrow = a.narrow ?? gpu.isSoftware;
  // vec4 bindings need at least 16 bytes: no vec4 reads of empty buffers
  const vec = narrow && C % 4 === 0 && C > 0 && T > 0;
  const accDw = a.accumulateDw ? 1 : 0;
  const dispatches: Dispatch[] = [
    narrow
      ? gpu.kernel({
        label: `rmsNormBackward dx narrow T=${T} C=${C}`,
        code: rmsNormDxNarrowCode(vec, !!a.accumulateDx),
        buffers: [a.x, a.weight, a.rstd, a.dy, a.dx],
        params: [T, C],
        workgroups: T,
      })
      : gpu.kernel({
        label: `rmsNormBackward dx T=${T} C=${C}`,
        code: rmsNormDxCode(rowWorkgroupSize(C)),
        buffers: [a.x, a.weight, a.rstd, a.dy, a.dx],
        params: [T, C, a.accumulateDx ? 1 : 0],
        workgroups: T,
      }),
  ];
  const chunkRows = narrow ? DW_NARROW_CHUNK_ROWS : DW_CHUNK_ROWS;
  const chunks = Math.max(1, Math.ceil(T / chunkRows));
  // columns per workgroup: 8 (wide), or 8 lanes of one column or one vec4 of columns (narrow)
  const colBlocks = Math.ceil((vec ? C / 4 : C) / 8);
  // One chunk: reduce straight into dWeight. Several: partials (chunks, C), then their column sums.
  const partials = chunks === 1
    ? a.dWeight
    : gpu.buffer(`rmsNormBackward dWeight partials (${chunks}, ${C})`, chunks * C * 4);
  dispatches.push(gpu.kernel({
    label: `rmsNormBackward dWeight${narrow ? " narrow" : ""} T=${T} C=${C}`,
    code: narrow ? rmsNormDwNarrowCode(vec) : RMS_NORM_DW,
    buffers: [a.x, a.rstd, a.dy, partials],
    params: [T, C, chunkRows, colBlocks, chunks === 1 ? accDw : 0],
    workgroups: chunks * colBlocks,
  }));
  if (chunks > 1) {
    dispatches.push(
      sumRows(gpu, { x: partials, out: a.dWeight, M: chunks, N: C, accumulate: a.accumulateDw }),
    );
  }
  return dispatches;
}
