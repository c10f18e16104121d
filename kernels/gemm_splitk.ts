/**
 * The WGSL of the split-K GEMM behind {@link "./matmul.ts" | matmulTNSplitK}: `c (M, N) = aᵀ·b`
 * with `a (K, M)`, `b (K, N)` when K is long and M×N small (a weight gradient `dW = dYᵀ·X`, K =
 * the token count), so a tiled GEMM would get only a few workgroups, each walking all of K.
 *
 * Two dispatches:
 * 1. partials: workgroup `w` computes output tile `w % tiles` over the K chunk `s = w / tiles`,
 *    `k ∈ [s·kChunk, min(K, (s + 1)·kChunk))`, and stores it (no bias, no accumulate) into slab
 *    `s` of `partial (S, M, N)`. Tiles × S workgroups in all. Register tiles as in kernels/gemm.ts:
 *    {@link splitKPartialCode} with vec4 loads (M and N multiples of 4), {@link
 *    splitKPartialScalarCode} for any sizes.
 * 2. reduce ({@link splitKReduceCode}): one invocation per output sums the S slabs in order
 *    s = 0, 1, …, S − 1, then adds `bias` and (with `accumulate`) `c`, the order the GEMMs use.
 *    The summation order is fixed by the sizes and S alone, so results are bit-reproducible
 *    (no float atomics).
 *
 * @module
 */
import type { RegisterTile } from "./gemm.ts";
import { unrollLoops } from "./unroll.ts";

/** Tile constants of the partial kernels. */
function tileHead({ R, C, WG }: RegisterTile): string {
  return /* wgsl */ `
const R: u32 = ${R}u;   // rows per invocation
const C: u32 = ${C}u;    // columns per invocation
const C4: u32 = ${C / 4}u;   // vec4 columns per invocation
const WG: u32 = ${WG}u; // invocations per workgroup, side by side along N`;
}

/**
 * Params of the partial kernels: sizes, tiling, the K chunk, and (scalar kernel) strides.
 * `store` writes one partial output into slab s, guarded by (M, N).
 */
function partialHead(scalar: boolean): string {
  const strides = scalar
    ? `
  aM: u32, aK: u32, // A(m, k) = a[m * aM + k * aK]
  bN: u32, bK: u32, // B(k, n) = b[n * bN + k * bK]`
    : "";
  const elem = scalar ? "f32" : "vec4f";
  const as = scalar ? "(M, K) or (K, M)" : "(K, M), as vec4 along its rows";
  const bs = scalar ? "(N, K) or (K, N)" : "(K, N), as vec4 along its rows";
  return /* wgsl */ `
struct Params {
  M: u32, N: u32, K: u32,
  tilesN: u32,      // output tiles along N
  tiles: u32,       // output tiles in all
  splits: u32,      // S: K chunks (slabs of partial)
  kChunk: u32,      // k per chunk (the last one may be shorter)${strides}
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<${elem}>;         // ${as}
@group(0) @binding(2) var<storage, read> b: array<${elem}>;         // ${bs}
@group(0) @binding(3) var<storage, read_write> partial: array<f32>; // (S, M, N)

// partial[s, row, col + j] = v[j] for the j in 0..4 inside (M, N)
fn store4(s: u32, row: u32, col: u32, v: vec4f) {
  if (row >= params.M) { return; }
  let base = (s * params.M + row) * params.N;
  for (var j = 0u; j < 4u; j++) {
    if (col + j < params.N) { partial[base + col + j] = v[j]; }
  }
}`;
}

/**
 * The partials with vec4 loads, TN layout only (M and N multiples of 4, none of M, N, K zero):
 * kernels/gemm.ts's TN register tile restricted to one K chunk. Invocation `lid` of workgroup `w`
 * computes rows m0..m0+R and columns n0..n0+C of tile `w % tiles` (indices clamped for loads as
 * there) over chunk `w / tiles`.
 *
 * @param tile the register tile (R a multiple of 4)
 * @returns the WGSL, unrolled
 */
export function splitKPartialCode(tile: RegisterTile): string {
  return unrollLoops(/* wgsl */ `${partialHead(false)}
${tileHead(tile)}
const R4: u32 = ${tile.R / 4}u; // vec4 rows per invocation

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let w = wid.x + wid.y * nwg.x;
  if (w >= params.tiles * params.splits) { return; }
  let s = w / params.tiles;
  let t = w % params.tiles;
  let k0 = s * params.kChunk;
  let k1 = min(params.K, k0 + params.kChunk);
  let M4 = params.M / 4u;
  let N4 = params.N / 4u;
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R4>; // vec4 column of A(m0 + 4i.., ·), clamped
  var bj: array<u32, C4>; // vec4 column of B(·, n0 + 4j..), clamped
  for (var i = 0u; i < R4; i++) { /* unroll */ ai[i] = min(m0 / 4u + i, M4 - 1u); }
  for (var j = 0u; j < C4; j++) { /* unroll */ bj[j] = min(n0 / 4u + j, N4 - 1u); }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  for (var k = k0; k < k1; k++) {
    var av: array<vec4f, R4>;
    var bv: array<vec4f, C4>;
    for (var i = 0u; i < R4; i++) { /* unroll */ av[i] = a[k * M4 + ai[i]]; }
    for (var j = 0u; j < C4; j++) { /* unroll */ bv[j] = b[k * N4 + bj[j]]; }
    for (var i = 0u; i < R; i++) { /* unroll */
      for (var j = 0u; j < C4; j++) { /* unroll */
        acc[i * C4 + j] = fma(vec4f(av[i / 4u][i % 4u]), bv[j], acc[i * C4 + j]);
      }
    }
  }
  var out: array<vec4f, R * C4>; // acc stays in registers only while every index is constant
  for (var q = 0u; q < R * C4; q++) { /* unroll */ out[q] = acc[q]; }
  for (var q = 0u; q < R * C4; q++) { store4(s, m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`);
}

/**
 * The partials with scalar loads, any layout and sizes (strides as kernels/gemm.ts's
 * `strides()`): per k, R + C loads and R·C FMAs over chunk `w / tiles`.
 *
 * @param tile the register tile
 * @returns the WGSL, unrolled
 */
export function splitKPartialScalarCode(tile: RegisterTile): string {
  return unrollLoops(/* wgsl */ `${partialHead(true)}
${tileHead(tile)}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let w = wid.x + wid.y * nwg.x;
  if (w >= params.tiles * params.splits) { return; }
  let s = w / params.tiles;
  let t = w % params.tiles;
  let k0 = s * params.kChunk;
  let k1 = min(params.K, k0 + params.kChunk);
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R>; // offsets of A(m0 + i, 0), clamped
  var bj: array<u32, C>; // offsets of B(0, n0 + j), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * params.aM; }
  for (var j = 0u; j < C; j++) { /* unroll */ bj[j] = min(n0 + j, params.N - 1u) * params.bN; }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  var ka = k0 * params.aK; // k · aK
  var kb = k0 * params.bK; // k · bK
  for (var k = k0; k < k1; k++) {
    var bv: array<vec4f, C4>; // B(k, n0 + 4q..4q+4)
    for (var q = 0u; q < C4; q++) { /* unroll */
      bv[q] = vec4f(b[bj[4u * q] + kb], b[bj[4u * q + 1u] + kb],
                    b[bj[4u * q + 2u] + kb], b[bj[4u * q + 3u] + kb]);
    }
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = vec4f(a[ai[i] + ka]);
      for (var q = 0u; q < C4; q++) { /* unroll */
        acc[i * C4 + q] = fma(av, bv[q], acc[i * C4 + q]);
      }
    }
    ka += params.aK;
    kb += params.bK;
  }
  var out: array<vec4f, R * C4>; // acc stays in registers only while every index is constant
  for (var q = 0u; q < R * C4; q++) { /* unroll */ out[q] = acc[q]; }
  for (var q = 0u; q < R * C4; q++) { store4(s, m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`);
}

/** Invocations per workgroup of {@link splitKReduceCode}. */
export const REDUCE_WG = 64;

/**
 * The reduction: output `o` of `c (M, N)` is `Σ_s partial[s, o]` summed in order s = 0..S−1,
 * then `+ bias[n]` (with `hasBias`), then `+ c[o]` (with `accumulate`). One output per
 * invocation, {@link REDUCE_WG} per workgroup, numbered linearly over a split grid.
 *
 * @returns the WGSL
 */
export function splitKReduceCode(): string {
  return /* wgsl */ `
struct Params {
  MN: u32,          // outputs: M·N
  N: u32,
  splits: u32,      // S: slabs of partial
  hasBias: u32,     // 1: add bias[n]
  accumulate: u32,  // 1: c += ..., else c = ...
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>; // (S, M, N)
@group(0) @binding(2) var<storage, read> bias: array<f32>;    // (N), or unused words
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // (M, N)

@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let o = (wid.x + wid.y * nwg.x) * ${REDUCE_WG}u + lid;
  if (o >= params.MN) { return; }
  var x = partial[o];
  for (var s = 1u; s < params.splits; s++) { x += partial[s * params.MN + o]; }
  if (params.hasBias != 0u) { x += bias[o % params.N]; }
  if (params.accumulate != 0u) { x += c[o]; }
  c[o] = x;
}`;
}
