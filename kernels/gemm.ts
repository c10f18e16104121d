/**
 * The WGSL of the GEMM variants behind {@link "./matmul.ts" | matmulNT, matmulNN, matmulTN}:
 * `c (M, N) = A (M, K) · B (K, N)` where A and B are stored as the layout says (NT: `a (M, K)`,
 * `b (N, K)`; NN: `a (M, K)`, `b (K, N)`; TN: `a (K, M)`, `b (K, N)`).
 *
 * Every shader numbers its tiles linearly (`t = wid.x + wid.y · nwg.x`: the runtime splits a grid
 * over 65535 workgroups over x and y), guards its bounds, adds `bias` when `params.hasBias` is
 * set and adds into `c` when `params.accumulate` is.
 *
 * Variants (GFLOPS on lavapipe, 2 shared cores: naive ~0.6 at 512³; workgroupTile ~5 and
 * registerTile ~18–22 at 1024³, measured alone):
 * - {@link naiveCode} `"naive"`: one output per invocation. The baseline.
 * - {@link workgroupTileCode} `"workgroupTile"`: 64×64 output tiles staged through workgroup
 *   memory in 16-deep k-slices, 16×16 invocations with 4×4 outputs each. The classic GPU kernel:
 *   the default on hardware adapters.
 * - {@link registerTileCode} `"registerTile"`: no workgroup memory; each invocation keeps an R×C
 *   block of outputs in registers and loads its operands straight from storage, vec4-wide when
 *   the contiguous dimensions are multiples of 4 ({@link registerTileScalarCode} takes the other
 *   sizes). On lavapipe every storage or workgroup load is a per-lane loop costing ~20 cycles per
 *   component while an FMA is nearly free, so the kernel maximises FMAs per loaded component:
 *   (R + C) loads feed R·C FMAs. The default on software adapters.
 *
 * The register tiles' loops over the tile are unrolled by {@link unrollLoops} (measured: see
 * kernels/unroll.ts), so their private arrays become registers.
 *
 * @module
 */
import { unrollLoops } from "./unroll.ts";

/** Operand layouts: c (M,N) = A(M,K)·B(K,N) where A, B are stored as the name says. */
export type Layout = "NT" | "NN" | "TN";

/** A register tile: R rows × C columns per invocation, WG invocations side by side along N. */
export interface RegisterTile {
  /** Output rows per invocation (a multiple of 4 for TN). */
  R: number;
  /** Output columns per invocation (a multiple of 4). */
  C: number;
  /** Invocations per workgroup. */
  WG: number;
}

/**
 * Element strides of the layout-generic shaders ({@link naiveCode}, {@link workgroupTileCode},
 * {@link registerTileScalarCode}): A(m, k) = `a[m·aM + k·aK]`, B(k, n) = `b[n·bN + k·bK]`.
 *
 * @param layout how a and b are stored
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @returns the params fields aM, aK, bN, bK
 */
export function strides(
  layout: Layout,
  M: number,
  N: number,
  K: number,
): { aM: number; aK: number; bN: number; bK: number } {
  const a = layout === "TN" ? { aM: 1, aK: M } : { aM: K, aK: 1 };
  const b = layout === "NT" ? { bN: K, bK: 1 } : { bN: 1, bK: N };
  return { ...a, ...b };
}

/**
 * The guarded epilogue of the f32-output shaders: `c[row, col + j] (+)= v[j] + bias[col + j]`
 * for the j in 0..4 inside (M, N). Included in each shader with an f32 `c`.
 */
export const STORE4: string = /* wgsl */ `
fn store4(row: u32, col: u32, v: vec4f) {
  if (row >= params.M) { return; }
  for (var j = 0u; j < 4u; j++) {
    let n = col + j;
    if (n < params.N) {
      let o = row * params.N + n;
      var x = v[j];
      if (params.hasBias != 0u) { x += bias[n]; }
      if (params.accumulate != 0u) { x += c[o]; }
      c[o] = x;
    }
  }
}`;

/** Params of the layout-generic shaders: sizes, tiling, flags and the layout's strides. */
const GENERIC_PARAMS = /* wgsl */ `
struct Params {
  M: u32, N: u32, K: u32,
  tilesN: u32,      // tiles along N
  tiles: u32,       // tiles in all
  hasBias: u32,     // 1: add bias[n]
  accumulate: u32,  // 1: c += ..., else c = ...
  aM: u32, aK: u32, // A(m, k) = a[m * aM + k * aK]
  bN: u32, bK: u32, // B(k, n) = b[n * bN + k * bK]
}`;

/**
 * `"naive"`: one output per invocation, 16×16 invocations per 16×16 tile, any layout.
 *
 * @returns the WGSL
 */
export function naiveCode(): string {
  return /* wgsl */ `${GENERIC_PARAMS}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;      // (M, K) or (K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;      // (N, K) or (K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), or unused words
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (M, N)

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let m = (t / params.tilesN) * 16u + lid.y;
  let n = (t % params.tilesN) * 16u + lid.x;
  if (m >= params.M || n >= params.N) { return; }
  var s = 0.0;
  for (var k = 0u; k < params.K; k++) {
    s = fma(a[m * params.aM + k * params.aK], b[n * params.bN + k * params.bK], s);
  }
  let o = m * params.N + n;
  if (params.hasBias != 0u) { s += bias[n]; }
  if (params.accumulate != 0u) { s += c[o]; }
  c[o] = s;
}`;
}

/**
 * `"workgroupTile"`: 16×16 invocations, each 4 rows × 4 columns of a 64×64 tile, any layout.
 * Each 16-deep k-slice of A (64×16) and B (16×64) is loaded by all 256 invocations (4 elements
 * each, consecutive invocations along the operand's contiguous dimension so loads coalesce) and
 * stored k-major, so the inner loop reads one vec4 of A rows and one vec4 of B columns per k.
 *
 * @returns the WGSL
 */
export function workgroupTileCode(): string {
  return /* wgsl */ `${GENERIC_PARAMS}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;      // (M, K) or (K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;      // (N, K) or (K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), or unused words
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (M, N)

const BK: u32 = 16u; // k-depth of a slice: two 16×64 f32 slices = 8 KiB
var<workgroup> As: array<vec4f, 256>; // [k][m / 4]: A slice (64 rows × BK k), k-major
var<workgroup> Bs: array<vec4f, 256>; // [k][n / 4]: B slice (BK k × 64 columns)
${STORE4}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid3: vec3u, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let tm = (t / params.tilesN) * 64u;
  let tn = (t % params.tilesN) * 64u;
  var c0 = vec4f(0.0); var c1 = vec4f(0.0); var c2 = vec4f(0.0); var c3 = vec4f(0.0);
  for (var k0 = 0u; k0 < params.K; k0 += BK) {
    for (var s = 0u; s < 4u; s++) {
      let e = lid + 256u * s; // element e of the slice, decomposed along the contiguous dim
      {
        var mm = e / BK; var kk = e % BK;
        if (params.aK != 1u) { mm = e % 64u; kk = e / 64u; }
        let m = tm + mm; let k = k0 + kk;
        var v = 0.0;
        if (m < params.M && k < params.K) { v = a[m * params.aM + k * params.aK]; }
        As[kk * 16u + mm / 4u][mm % 4u] = v;
      }
      {
        var nn = e / BK; var kk = e % BK;
        if (params.bK != 1u) { nn = e % 64u; kk = e / 64u; }
        let n = tn + nn; let k = k0 + kk;
        var v = 0.0;
        if (n < params.N && k < params.K) { v = b[n * params.bN + k * params.bK]; }
        Bs[kk * 16u + nn / 4u][nn % 4u] = v;
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let av = As[kk * 16u + lid3.y];
      let bv = Bs[kk * 16u + lid3.x];
      c0 = fma(vec4f(av.x), bv, c0); c1 = fma(vec4f(av.y), bv, c1);
      c2 = fma(vec4f(av.z), bv, c2); c3 = fma(vec4f(av.w), bv, c3);
    }
    workgroupBarrier();
  }
  let m0 = tm + lid3.y * 4u;
  let n0 = tn + lid3.x * 4u;
  store4(m0, n0, c0); store4(m0 + 1u, n0, c1); store4(m0 + 2u, n0, c2); store4(m0 + 3u, n0, c3);
}`;
}

/**
 * Whether {@link registerTileCode} can read `a` and `b` as vec4 for these sizes: the dimension
 * each operand is read along (and its row length) must be a multiple of 4, and no size 0 (a vec4
 * binding must be at least 16 bytes; empty operands may be 4-byte placeholders).
 *
 * @param layout how a and b are stored
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @returns true when the vec4 shader serves these sizes
 */
export function vec4Ok(layout: Layout, M: number, N: number, K: number): boolean {
  if (M === 0 || N === 0 || K === 0) return false;
  if (layout === "NT") return K % 4 === 0;
  if (layout === "NN") return K % 4 === 0 && N % 4 === 0;
  return M % 4 === 0 && N % 4 === 0;
}

/**
 * One k-step (4 k) of the NT register tile with vec4 loads: R + C vec4 loads and R·C dot
 * products. Shared, word for word, by {@link registerTileCode} ("NT") and the GEMV
 * (kernels/gemv.ts) so both add each output in the same order: a row gets the same bits at any M.
 * Reads `a`, `b`, `ai`, `bj`, `k`; adds into `acc`.
 */
export const NT_VEC4_STEP: string = /* wgsl */ `
    var bv: array<vec4f, C>; // B(n0 + j, 4k..4k+4)
    for (var j = 0u; j < C; j++) { /* unroll */ bv[j] = b[bj[j] + k]; }
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = a[ai[i] + k]; // A(m0 + i, 4k..4k+4)
      for (var q = 0u; q < C4; q++) { /* unroll */
        acc[i * C4 + q] += vec4f(dot(av, bv[4u * q]), dot(av, bv[4u * q + 1u]),
                                 dot(av, bv[4u * q + 2u]), dot(av, bv[4u * q + 3u]));
      }
    }`;

/** Bindings of the vec4 register tiles (f32 output: `c` rows need not be multiples of 4). */
function vec4Bindings(sa: string, sb: string): string {
  return /* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, hasBias: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4f>;    // ${sa}, as vec4 along its rows
@group(0) @binding(2) var<storage, read> b: array<vec4f>;    // ${sb}, as vec4 along its rows
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), or unused words
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (M, N)`;
}

/**
 * `"registerTile"` with vec4 loads ({@link vec4Ok}): invocation `lid` of tile `t` computes rows
 * m0..m0+R, columns n0..n0+C with m0 = (t / tilesN)·R and n0 = (t % tilesN)·WG·C + lid·C. Row and
 * column indices are clamped into range for the loads (out-of-range outputs are computed from
 * duplicates and dropped by `store4`), so the inner loop has no branches. The accumulators go to
 * a second array once at the end, whose store loop stays a loop (unrolled stores would multiply
 * the code, and lavapipe's compile time, by R·C/4).
 *
 * @param layout how a and b are stored; one template per layout
 * @param tile the register tile
 * @returns the WGSL, unrolled
 */
export function registerTileCode(layout: Layout, tile: RegisterTile): string {
  const code = { NT: registerTileNT, NN: registerTileNN, TN: registerTileTN }[layout](tile);
  return unrollLoops(code);
}

/** Tile constants and the tile's position, common to the register tiles. */
function tileHead({ R, C, WG }: RegisterTile): string {
  return /* wgsl */ `
const R: u32 = ${R}u;   // rows per invocation
const C: u32 = ${C}u;    // columns per invocation
const C4: u32 = ${C / 4}u;   // vec4 columns per invocation
const WG: u32 = ${WG}u; // invocations per workgroup, side by side along N`;
}

/** NT: a (M, K/4) and b (N, K/4) vec4 rows; per 4 k, R + C loads ({@link NT_VEC4_STEP}). */
function registerTileNT(tile: RegisterTile): string {
  return /* wgsl */ `${vec4Bindings("(M, K)", "(N, K)")}
${tileHead(tile)}
${STORE4}

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
  var out: array<vec4f, R * C4>; // acc stays in registers only while every index is constant
  for (var q = 0u; q < R * C4; q++) { /* unroll */ out[q] = acc[q]; }
  for (var q = 0u; q < R * C4; q++) { store4(m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`;
}

/** NN: a (M, K/4) vec4 rows, b (K, N/4); per 4 k, R + 4·C/4 vec4 loads (B rows 4k..4k+4). */
function registerTileNN(tile: RegisterTile): string {
  return /* wgsl */ `${vec4Bindings("(M, K)", "(K, N)")}
${tileHead(tile)}
${STORE4}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let K4 = params.K / 4u;
  let N4 = params.N / 4u;
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R>;  // row offsets of A(m0 + i, ·), clamped
  var bj: array<u32, C4>; // vec4 column of B(·, n0 + 4j), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * K4; }
  for (var j = 0u; j < C4; j++) { /* unroll */ bj[j] = min(n0 / 4u + j, N4 - 1u); }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  for (var k = 0u; k < K4; k++) {
    let kb = k * 4u * N4;
    var bv: array<vec4f, 4 * C4>; // B(4k + u, n0 + 4j..) at bv[u * C4 + j]
    for (var u = 0u; u < 4u; u++) { /* unroll */
      for (var j = 0u; j < C4; j++) { /* unroll */ bv[u * C4 + j] = b[kb + u * N4 + bj[j]]; }
    }
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = a[ai[i] + k];
      for (var j = 0u; j < C4; j++) { /* unroll */
        acc[i * C4 + j] = fma(vec4f(av.x), bv[j], fma(vec4f(av.y), bv[C4 + j],
                          fma(vec4f(av.z), bv[2u * C4 + j], fma(vec4f(av.w), bv[3u * C4 + j],
                          acc[i * C4 + j]))));
      }
    }
  }
  var out: array<vec4f, R * C4>; // acc stays in registers only while every index is constant
  for (var q = 0u; q < R * C4; q++) { /* unroll */ out[q] = acc[q]; }
  for (var q = 0u; q < R * C4; q++) { store4(m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`;
}

/** TN: a (K, M/4) and b (K, N/4); per k, R/4 + C/4 vec4 loads and R·C FMAs. */
function registerTileTN(tile: RegisterTile): string {
  return /* wgsl */ `${vec4Bindings("(K, M)", "(K, N)")}
${tileHead(tile)}
const R4: u32 = ${tile.R / 4}u; // vec4 rows per invocation
${STORE4}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let M4 = params.M / 4u;
  let N4 = params.N / 4u;
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R4>; // vec4 column of A(m0 + 4i.., ·), clamped
  var bj: array<u32, C4>; // vec4 column of B(·, n0 + 4j..), clamped
  for (var i = 0u; i < R4; i++) { /* unroll */ ai[i] = min(m0 / 4u + i, M4 - 1u); }
  for (var j = 0u; j < C4; j++) { /* unroll */ bj[j] = min(n0 / 4u + j, N4 - 1u); }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  for (var k = 0u; k < params.K; k++) {
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
  for (var q = 0u; q < R * C4; q++) { store4(m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`;
}

/**
 * `"registerTile"` with scalar loads, any layout (sizes that are not multiples of 4: rare, and
 * the shader compiles fast): per k, R + C loads and R·C FMAs, A(m_i, k) at `ai[i] + k·aK` and
 * B(k, n_j) at `bj[j] + k·bK`. Tiling and clamping as in {@link registerTileCode}.
 *
 * @param tile the register tile
 * @returns the WGSL, unrolled
 */
export function registerTileScalarCode(tile: RegisterTile): string {
  return unrollLoops(/* wgsl */ `${GENERIC_PARAMS}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;      // (M, K) or (K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;      // (N, K) or (K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N), or unused words
@group(0) @binding(4) var<storage, read_write> c: array<f32>; // (M, N)
${tileHead(tile)}
${STORE4}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R>; // offsets of A(m0 + i, 0), clamped
  var bj: array<u32, C>; // offsets of B(0, n0 + j), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * params.aM; }
  for (var j = 0u; j < C; j++) { /* unroll */ bj[j] = min(n0 + j, params.N - 1u) * params.bN; }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  var ka = 0u; // k · aK
  var kb = 0u; // k · bK
  for (var k = 0u; k < params.K; k++) {
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
  for (var q = 0u; q < R * C4; q++) { store4(m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`);
}
