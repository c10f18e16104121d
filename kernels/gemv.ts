/**
 * The WGSL of the GEMV variants behind {@link "./matmul.ts" | gemvNT}: `c (M, N) = a (M, K) · bᵀ`
 * with `b (N, K)`, for small M (decode steps, verification), reading each weight once per block
 * of rows. Tiles are numbered linearly over a grid split over x and y, like the GEMMs'.
 *
 * - {@link gemvRegisterTileCode} `"registerTile"` (software adapters): the GEMM's NT register
 *   tile ({@link NT_VEC4_STEP}) with R = the block's rows and a vec4 epilogue.
 * - {@link gemvSplitKCode} `"splitK"` (hardware): a workgroup per 4 output columns splits K over
 *   64 invocations (coalesced weight reads) and reduces in workgroup memory.
 *
 * @module
 */
import { NT_VEC4_STEP, type RegisterTile, STORE4 } from "./gemm.ts";
import { unrollLoops } from "./unroll.ts";

/**
 * `"registerTile"` when K and N are multiples of 4 (the model's shapes): the NT register tile of
 * kernels/gemm.ts (R rows × C columns per invocation, operands read as vec4 along K) with the
 * same arithmetic per output (k in order, then bias, then c), so every M gives the bits the
 * GEMMs give. Its epilogue stores vec4s: on software adapters every storage access is a loop
 * over the SIMD lanes with a bounds check per lane, so four scalar stores (each with a bias and,
 * accumulating, a `c` load) cost about four times one vec4 store.
 *
 * @param tile the register tile (R = the rows of a block, up to 16)
 * @returns the WGSL, unrolled
 */
export function gemvRegisterTileCode({ R, C, WG }: RegisterTile): string {
  return unrollLoops(/* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, hasBias: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4f>;       // (M, K), as vec4 along K
@group(0) @binding(2) var<storage, read> b: array<vec4f>;       // (N, K), as vec4 along K
@group(0) @binding(3) var<storage, read> bias: array<vec4f>;    // (N), or 4 unused words
@group(0) @binding(4) var<storage, read_write> c: array<vec4f>; // (M, N), as vec4 along N

const R: u32 = ${R}u;   // rows per invocation: the rows of a block
const C: u32 = ${C}u;    // columns per invocation
const C4: u32 = ${C / 4}u;   // vec4 columns per invocation
const WG: u32 = ${WG}u; // invocations per workgroup, side by side along N

// c[row, col..col+4] (+)= v + bias[col..col+4]; N % 4 = 0, so the four are in or out together.
fn store4v(row: u32, col: u32, v: vec4f) {
  if (row >= params.M || col >= params.N) { return; }
  let o = (row * params.N + col) / 4u;
  var x = v;
  if (params.hasBias != 0u) { x += bias[col / 4u]; }
  if (params.accumulate != 0u) { x += c[o]; }
  c[o] = x;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let K4 = params.K / 4u;
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R>; // row offsets of A(m0 + i, ·), clamped
  var bj: array<u32, C>; // row offsets of B(·, n0 + j), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * K4; }
  for (var j = 0u; j < C; j++) { /* unroll */ bj[j] = min(n0 + j, params.N - 1u) * K4; }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  for (var k = 0u; k < K4; k++) {${NT_VEC4_STEP}
  }
  for (var i = 0u; i < R; i++) { /* unroll */
    for (var q = 0u; q < C4; q++) { /* unroll */ store4v(m0 + i, n0 + 4u * q, acc[i * C4 + q]); }
  }
}`);
}

/**
 * `"splitK"`, NT layout: a workgroup computes 4 columns (n0..n0+4) for R rows (m0..m0+R); its 64
 * invocations stride over K (consecutive invocations read consecutive weights), keep R vec4
 * partial sums each, and reduce them by a tree in workgroup memory.
 *
 * @param R rows per workgroup
 * @returns the WGSL, unrolled
 */
export function gemvSplitKCode(R: number): string {
  return unrollLoops(/* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, hasBias: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;       // (M, K)
@group(0) @binding(2) var<storage, read> b: array<f32>;       // (N, K)
@group(0) @binding(3) var<storage, read> bias: array<f32>;    // (N), or unused words
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (M, N)

const R: u32 = ${R}u;  // rows per workgroup
const WG: u32 = 64u; // invocations splitting K
var<workgroup> red: array<vec4f, R * WG>; // [row][invocation] partial sums

${STORE4}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * 4u;
  var w: array<u32, 4>; // row offsets of the 4 weight rows, clamped
  for (var j = 0u; j < 4u; j++) { /* unroll */ w[j] = min(n0 + j, params.N - 1u) * params.K; }
  var s: array<vec4f, R>; // partial sums of rows m0 + i, columns n0..n0+4
  for (var k = lid; k < params.K; k += WG) {
    let bv = vec4f(b[w[0] + k], b[w[1] + k], b[w[2] + k], b[w[3] + k]);
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = a[min(m0 + i, params.M - 1u) * params.K + k];
      s[i] = fma(vec4f(av), bv, s[i]);
    }
  }
  for (var i = 0u; i < R; i++) { /* unroll */ red[i * WG + lid] = s[i]; }
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h = h >> 1u) {
    if (lid < h) {
      for (var i = 0u; i < R; i++) { red[i * WG + lid] += red[i * WG + lid + h]; }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    for (var i = 0u; i < R; i++) { store4(m0 + i, n0, red[i * WG]); }
  }
}`);
}
