/**
 * Matrix multiplies in f32: the three GEMM layouts a linear layer needs (forward `y = x·Wᵀ`,
 * backward `dX = dY·W` and `dW = dYᵀ·X`), a GEMV for decode steps, and {@link linear}, which
 * picks between them. Sizes are uniform params, so one pipeline per variant (and, for variant
 * 3, per load width and GEMV row block) serves all shapes; every kernel guards its bounds,
 * numbers its tiles linearly over a grid split beyond 65535 workgroups, adds an optional bias
 * and can accumulate into `c`.
 *
 * Numbered variants, side by side in `bench/matmul_bench.ts` (GFLOPS on lavapipe, 2 shared
 * cores: v1 ~0.6 at 512³; v2 ~5 and v3 ~18–22 at 1024³):
 * - **1, naive**: one output per invocation. The baseline.
 * - **2, workgroup tiles**: 64×64 output tiles staged through workgroup memory in 16-deep
 *   k-slices (8 KiB), 16×16 invocations with 4×4 outputs each in named vec4 registers. The
 *   classic GPU kernel: the default on hardware adapters.
 * - **3, register tiles**: no workgroup memory; each invocation keeps an R×C block of outputs
 *   in named vec4 registers and loads its operands straight from storage, vec4-wide when the
 *   contiguous dimensions are multiples of 4 (a second pipeline takes the other sizes). On
 *   the software adapter (lavapipe) every storage or workgroup load is a per-lane loop costing
 *   ~20 cycles per component while an FMA is nearly free, so the kernel maximises FMAs per
 *   loaded component: (R+C) loads feed R·C FMAs. The default on software adapters.
 *
 * The GEMV ({@link gemvNT}) serves small M (decode steps, verification) reading each weight
 * once per block of up to 16 rows: on software adapters it is variant 3's register tiles and,
 * when K and N are multiples of 4 (the model's shapes), R = M (no padded rows) with a vec4
 * epilogue (bias, `c`); its sums run in the GEMMs' order, so a row gets the same bits whatever
 * M is. On hardware, a
 * workgroup per 4 output columns splits K over 64 invocations and reduces in workgroup memory
 * (coalesced weight reads).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/** Arguments of every matrix multiply; each function documents the shapes of `a`, `b`. */
export interface MatmulArgs {
  /** Left operand, f32 (shape per function). */
  a: GPUBuffer;
  /** Right operand, f32 (shape per function). */
  b: GPUBuffer;
  /** Output `(M, N)` f32, written (or added to, with `accumulate`). */
  c: GPUBuffer;
  /** Rows of `c`. */
  M: number;
  /** Columns of `c`. */
  N: number;
  /** Length of the reduction. */
  K: number;
  /** Optional `(N)` f32 added to every output row. */
  bias?: GPUBuffer;
  /** `c += a·b (+ bias)` instead of `c = a·b (+ bias)` (default false). */
  accumulate?: boolean;
  /** Label of the dispatch (default: the function's name). */
  label?: string;
  /**
   * Forces a numbered variant (1 naive, 2 workgroup tiles, 3 register tiles; for
   * {@link gemvNT}: 1 register tiles, 2 split-K), for benchmarks and tests. Default: the
   * fastest for the adapter.
   */
  variant?: number;
}

/** Operand layouts: c (M,N) = A(M,K)·B(K,N) where A, B are stored as the name says. */
type Layout = "NT" | "NN" | "TN";

/** Register tile of variant 3: R rows × C columns per invocation, WG invocations per workgroup. */
interface RegTile {
  /** Output rows per invocation (a multiple of 4, or 1 or 2 for the GEMV). */
  R: number;
  /** Output columns per invocation (a multiple of 4). */
  C: number;
  /** Invocations per workgroup, side by side along N. */
  WG: number;
}

/**
 * Variant 3 tiles of the GEMMs, vec4 loads. Measured at 1024³ on lavapipe (best of several
 * runs on a busy 2-core machine): 8×8 ~16 GFLOPS, 16×8 ~22, 16×16 ~21. Bigger tiles compile
 * much slower there (the register allocator; cold: 8×8 0.5 s, 16×8 1.9 s, 16×16 6 s).
 */
const GEMM_TILE: RegTile = { R: 16, C: 8, WG: 16 };
/** Variant 3 tiles of the GEMMs with scalar loads (sizes not multiples of 4: rare, compile fast). */
const GEMM_TILE_SCALAR: RegTile = { R: 8, C: 8, WG: 16 };
/**
 * Variant 1 GEMV columns per invocation and invocations per workgroup (R = the row block).
 * With R = 16 this is {@link GEMM_TILE}, so the two share a pipeline.
 */
const GEMV_C = 8, GEMV_WG = 16;
/** Largest M the GEMV serves in one row block; {@link linear} uses it up to this M. */
const GEMV_MAX_M = 16;
/** Largest row block of the vec4 GEMV (more rows are split into even blocks). */
const GEMV_VEC_MAX_R = 16;

// ---------------------------------------------------------------------------------------------
// WGSL pieces shared by the variants

/** Index of A(m, k) in `a` (scalar array) for a layout. */
function aIndex(layout: Layout, m: string, k: string): string {
  return layout === "TN" ? `(${k}) * p.M + (${m})` : `(${m}) * p.K + (${k})`;
}

/** Index of B(k, n) in `b` (scalar array) for a layout. */
function bIndex(layout: Layout, k: string, n: string): string {
  return layout === "NT" ? `(${n}) * p.K + (${k})` : `(${k}) * p.N + (${n})`;
}

/** What `a` and `b` hold, for the binding comments. */
function shapes(layout: Layout): [string, string] {
  return layout === "NT"
    ? ["(M, K)", "(N, K)"]
    : layout === "NN"
    ? ["(M, K)", "(K, N)"]
    : ["(K, M)", "(K, N)"];
}

/**
 * Header: params (sizes, tiling of the linear workgroup id, flags: 1 = bias, 2 = accumulate),
 * bindings, and `store4`, the guarded epilogue for four consecutive outputs of one row.
 */
function header(layout: Layout, elem: "f32" | "vec4f"): string {
  const [sa, sb] = shapes(layout);
  const v = elem === "vec4f" ? ", read as vec4 along its contiguous dimension" : "";
  return /* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, flags: u32, _p0: u32, _p1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<${elem}>;      // ${sa} f32${v}
@group(0) @binding(2) var<storage, read> b: array<${elem}>;      // ${sb} f32${v}
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N) f32, or 1 unused word
@group(0) @binding(4) var<storage, read_write> c: array<f32>;    // (M, N) f32

// c[row, col + j] (+)= v[j] + bias[col + j] for the j in 0..4 that are inside (M, N).
fn store4(row: u32, col: u32, v: vec4f) {
  if (row >= p.M) { return; }
  for (var j = 0u; j < 4u; j++) {
    let n = col + j;
    if (n < p.N) {
      let o = row * p.N + n;
      var x = v[j];
      if ((p.flags & 1u) != 0u) { x += bias[n]; }
      if ((p.flags & 2u) != 0u) { x += c[o]; }
      c[o] = x;
    }
  }
}
`;
}

/** Entry point whose workgroups are tiles numbered linearly over a grid split over x and y. */
function entry(wgx: number, wgy = 1): string {
  return /* wgsl */ `
@compute @workgroup_size(${wgx}, ${wgy})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid3: vec3u, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x; // linear tile id: the grid may be split over x and y
  if (t >= p.tiles) { return; }`;
}

/** Names `c{i}_{j}` of the vec4 accumulators of an R×C register tile (C/4 vec4 per row). */
function accs(R: number, C: number): string {
  const out: string[] = [];
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C / 4; j++) out.push(`var c${i}_${j} = vec4f(0.0);`);
  }
  return out.join(" ");
}

/**
 * Epilogue of an R×C register tile at rows m0.., columns n0..: the registers go to a private
 * array once, then one loop stores them (unrolled stores would multiply the code, and the
 * software adapter's compile time, by R·C/4).
 */
function stores(R: number, C: number): string {
  const out: string[] = [`var acc: array<vec4f, ${(R * C) / 4}>;`];
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C / 4; j++) out.push(`acc[${i * (C / 4) + j}] = c${i}_${j};`);
  }
  out.push(`for (var q = 0u; q < ${(R * C) / 4}u; q++) {
    store4(m0 + q / ${C / 4}u, n0 + (q % ${C / 4}u) * 4u, acc[q]);
  }`);
  return out.join("\n  ");
}

// ---------------------------------------------------------------------------------------------
// Variant 1: naive

/** One output per invocation, 16×16 invocations per 16×16 tile. */
function naiveCode(layout: Layout): string {
  return header(layout, "f32") + entry(16, 16) + /* wgsl */ `
  let m = (t / p.tilesN) * 16u + lid3.y;
  let n = (t % p.tilesN) * 16u + lid3.x;
  if (m >= p.M || n >= p.N) { return; }
  var s = 0.0;
  for (var k = 0u; k < p.K; k++) { s = fma(a[${aIndex(layout, "m", "k")}], b[${
    bIndex(layout, "k", "n")
  }], s); }
  let o = m * p.N + n;
  if ((p.flags & 1u) != 0u) { s += bias[n]; }
  if ((p.flags & 2u) != 0u) { s += c[o]; }
  c[o] = s;
}`;
}

// ---------------------------------------------------------------------------------------------
// Variant 2: 64×64 workgroup tiles through workgroup memory

/** k-depth of the workgroup-memory slices of variant 2 (two 16×64 f32 slices = 8 KiB). */
const BK = 16;

/**
 * 16×16 invocations, each 4 rows × 4 columns of a 64×64 tile. Each k-slice of A (64×16) and
 * B (16×64) is loaded by all 256 invocations (4 elements each, consecutive invocations along
 * the operand's contiguous dimension), stored k-major so the inner loop reads one vec4 of A
 * rows and one vec4 of B columns per k.
 */
function tiledCode(layout: Layout): string {
  // Element e = lid + 256·s of a slice: (row-of-tile, k) decomposed along the contiguous dim.
  const aAlongK = layout !== "TN", bAlongK = layout === "NT";
  const loadA = aAlongK
    ? `let kk = e % ${BK}u; let mm = e / ${BK}u;`
    : `let mm = e % 64u; let kk = e / 64u;`;
  const loadB = bAlongK
    ? `let kk = e % ${BK}u; let nn = e / ${BK}u;`
    : `let nn = e % 64u; let kk = e / 64u;`;
  return header(layout, "f32") + /* wgsl */ `
var<workgroup> As: array<vec4f, ${BK * 16}>; // [k][m / 4]: A slice (64 rows × ${BK} k), k-major
var<workgroup> Bs: array<vec4f, ${BK * 16}>; // [k][n / 4]: B slice (${BK} k × 64 columns)
` + entry(16, 16) + /* wgsl */ `
  let tm = (t / p.tilesN) * 64u;
  let tn = (t % p.tilesN) * 64u;
  var c0 = vec4f(0.0); var c1 = vec4f(0.0); var c2 = vec4f(0.0); var c3 = vec4f(0.0);
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    for (var s = 0u; s < 4u; s++) {
      let e = lid + 256u * s;
      {
        ${loadA}
        let m = tm + mm; let k = k0 + kk;
        var v = 0.0;
        if (m < p.M && k < p.K) { v = a[${aIndex(layout, "m", "k")}]; }
        As[kk * 16u + mm / 4u][mm % 4u] = v;
      }
      {
        ${loadB}
        let n = tn + nn; let k = k0 + kk;
        var v = 0.0;
        if (n < p.N && k < p.K) { v = b[${bIndex(layout, "k", "n")}]; }
        Bs[kk * 16u + nn / 4u][nn % 4u] = v;
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
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

// ---------------------------------------------------------------------------------------------
// Variant 3: register tiles, straight from storage

/**
 * Whether variant 3 can read `a` and `b` as vec4 for these sizes: the dimension each operand
 * is read along (and its row length) must be a multiple of 4, and no size 0 (a vec4 binding
 * must be at least 16 bytes; empty operands may be 4-byte placeholders).
 */
function vec4Ok(layout: Layout, M: number, N: number, K: number): boolean {
  if (M === 0 || N === 0 || K === 0) return false;
  if (layout === "NT") return K % 4 === 0;
  if (layout === "NN") return K % 4 === 0 && N % 4 === 0;
  return M % 4 === 0 && N % 4 === 0;
}

/**
 * Variant 3: invocation `lid` of tile `t` computes rows m0..m0+R, columns n0..n0+C with
 * m0 = (t / tilesN)·R and n0 = (t % tilesN)·WG·C + lid·C. Row and column indices are clamped
 * into range for the loads (out-of-range outputs are computed from duplicates and dropped by
 * `store4`), so the inner loop has no branches.
 */
function regTileCode(layout: Layout, vec: boolean, tile: RegTile): string {
  const { R, C, WG } = tile;
  const L: string[] = [];
  const body: string[] = [];
  // R may be 1 or 2 (GEMV): vec4-along-m loads (TN) need R % 4 == 0, which the GEMV never uses.
  if (!vec) {
    // Scalar loads, one k per step: A(m_i, k) at ai_i + k·sa, B(k, n_j) at bj_j + k·sb.
    const sa = layout === "TN" ? "p.M" : "1u", sb = layout === "NT" ? "1u" : "p.N";
    for (let i = 0; i < R; i++) {
      const m = `min(m0 + ${i}u, p.M - 1u)`;
      L.push(`let ai${i} = ${layout === "TN" ? m : `${m} * p.K`};`);
    }
    for (let j = 0; j < C; j++) {
      const n = `min(n0 + ${j}u, p.N - 1u)`;
      L.push(`let bj${j} = ${layout === "NT" ? `${n} * p.K` : n};`);
    }
    for (let j = 0; j < C / 4; j++) {
      const q = [0, 1, 2, 3].map((u) => `b[bj${4 * j + u} + kb]`).join(", ");
      body.push(`let b${j} = vec4f(${q});`);
    }
    for (let i = 0; i < R; i++) {
      body.push(`{ let av = vec4f(a[ai${i} + ka]);`);
      for (let j = 0; j < C / 4; j++) body.push(`c${i}_${j} = fma(av, b${j}, c${i}_${j});`);
      body.push("}");
    }
    return header(layout, "f32") + entry(WG) + /* wgsl */ `
  let m0 = (t / p.tilesN) * ${R}u;
  let n0 = (t % p.tilesN) * ${WG * C}u + lid * ${C}u;
  ${L.join("\n  ")}
  ${accs(R, C)}
  var ka = 0u;
  var kb = 0u;
  for (var k = 0u; k < p.K; k++) {
    ${body.join("\n    ")}
    ka += ${sa};
    kb += ${sb};
  }
  ${stores(R, C)}
}`;
  }
  if (layout === "NT") {
    ntVec4Loop(R, C, L, body);
  } else if (layout === "NN") {
    // a (M, K/4) vec4 rows; b (K, N/4): per 4 k, 4·C/4 vec4 loads of B rows k..k+3.
    for (let i = 0; i < R; i++) L.push(`let ai${i} = min(m0 + ${i}u, p.M - 1u) * K4;`);
    for (let j = 0; j < C / 4; j++) L.push(`let bj${j} = min(n0 / 4u + ${j}u, N4 - 1u);`);
    body.push("let kb = k * 4u * N4;");
    for (let u = 0; u < 4; u++) {
      for (let j = 0; j < C / 4; j++) body.push(`let b${u}_${j} = b[kb + ${u}u * N4 + bj${j}];`);
    }
    for (let i = 0; i < R; i++) {
      body.push(`{ let av = a[ai${i} + k];`);
      for (let j = 0; j < C / 4; j++) {
        body.push(
          `c${i}_${j} = fma(vec4f(av.x), b0_${j}, fma(vec4f(av.y), b1_${j}, ` +
            `fma(vec4f(av.z), b2_${j}, fma(vec4f(av.w), b3_${j}, c${i}_${j}))));`,
        );
      }
      body.push("}");
    }
  } else {
    // a (K, M/4), b (K, N/4): per k, R/4 + C/4 vec4 loads and R·C FMAs.
    for (let i = 0; i < R / 4; i++) L.push(`let ai${i} = min(m0 / 4u + ${i}u, M4 - 1u);`);
    for (let j = 0; j < C / 4; j++) L.push(`let bj${j} = min(n0 / 4u + ${j}u, N4 - 1u);`);
    for (let i = 0; i < R / 4; i++) body.push(`let a${i} = a[k * M4 + ai${i}];`);
    for (let j = 0; j < C / 4; j++) body.push(`let b${j} = b[k * N4 + bj${j}];`);
    for (let i = 0; i < R; i++) {
      const ai = `vec4f(a${i >> 2}.${"xyzw"[i & 3]})`;
      for (let j = 0; j < C / 4; j++) body.push(`c${i}_${j} = fma(${ai}, b${j}, c${i}_${j});`);
    }
  }
  const loop = layout === "TN" ? "p.K" : "K4";
  return header(layout, "vec4f") + entry(WG) + /* wgsl */ `
  let K4 = p.K / 4u;
  let M4 = p.M / 4u;
  let N4 = p.N / 4u;
  let m0 = (t / p.tilesN) * ${R}u;
  let n0 = (t % p.tilesN) * ${WG * C}u + lid * ${C}u;
  ${L.join("\n  ")}
  ${accs(R, C)}
  for (var k = 0u; k < ${loop}; k++) {
    ${body.join("\n    ")}
  }
  ${stores(R, C)}
}`;
}

// ---------------------------------------------------------------------------------------------
// GEMV variant 1: register tiles with vec4 epilogue

/**
 * The NT register-tile inner loop over vec4 k steps, shared by the tiled GEMM and the GEMV so
 * both add each output in the same order (a row gets the same bits at any M): a (M, K/4) and
 * b (N, K/4) vec4 rows; per 4 k, R + C vec4 loads and R·C dot products.
 *
 * @param R rows of the register tile
 * @param C columns of the register tile (a multiple of 4)
 * @param setup receives the row-offset declarations
 * @param body receives the loop body's statements
 */
function ntVec4Loop(R: number, C: number, setup: string[], body: string[]): void {
  for (let i = 0; i < R; i++) setup.push(`let ai${i} = min(m0 + ${i}u, p.M - 1u) * K4;`);
  for (let j = 0; j < C; j++) setup.push(`let bj${j} = min(n0 + ${j}u, p.N - 1u) * K4;`);
  for (let j = 0; j < C; j++) body.push(`let b${j} = b[bj${j} + k];`);
  for (let i = 0; i < R; i++) {
    body.push(`{ let av = a[ai${i} + k];`);
    for (let j = 0; j < C / 4; j++) {
      const d = [0, 1, 2, 3].map((u) => `dot(av, b${4 * j + u})`).join(", ");
      body.push(`c${i}_${j} += vec4f(${d});`);
    }
    body.push("}");
  }
}

/**
 * Variant 1 of the GEMV when K and N are multiples of 4 (the model's shapes): variant 3's
 * register tiles (R rows × C columns per invocation, operands read as vec4 along K), with the
 * same arithmetic per output (k in order, then bias, then c), so every M gives the bits the
 * GEMMs give. Its epilogue stores vec4s: on software adapters every storage access is a loop
 * over the SIMD lanes with a bounds check per lane, so four scalar stores (each with a bias
 * and, accumulating, a `c` load) cost about four times one vec4 store.
 */
function gemvVecCode(tile: RegTile): string {
  const { R, C, WG } = tile;
  const L: string[] = [];
  const body: string[] = [];
  ntVec4Loop(R, C, L, body);
  const st: string[] = [];
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C / 4; j++) st.push(`store4v(m0 + ${i}u, n0 + ${4 * j}u, c${i}_${j});`);
  }
  return /* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, flags: u32, _p0: u32, _p1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4f>;       // (M, K) f32, as vec4 along K
@group(0) @binding(2) var<storage, read> b: array<vec4f>;       // (N, K) f32, as vec4 along K
@group(0) @binding(3) var<storage, read> bias: array<vec4f>;    // (N) f32, or 4 unused words
@group(0) @binding(4) var<storage, read_write> c: array<vec4f>; // (M, N) f32, as vec4 along N

// c[row, col..col+4] (+)= v + bias[col..col+4]; N % 4 = 0, so the four are in or out together.
fn store4v(row: u32, col: u32, v: vec4f) {
  if (row >= p.M || col >= p.N) { return; }
  let o = (row * p.N + col) / 4u;
  var x = v;
  if ((p.flags & 1u) != 0u) { x += bias[col / 4u]; }
  if ((p.flags & 2u) != 0u) { x += c[o]; }
  c[o] = x;
}
` + entry(WG) + /* wgsl */ `
  let K4 = p.K / 4u;
  let m0 = (t / p.tilesN) * ${R}u;
  let n0 = (t % p.tilesN) * ${WG * C}u + lid * ${C}u;
  ${L.join("\n  ")}
  ${accs(R, C)}
  for (var k = 0u; k < K4; k++) {
    ${body.join("\n    ")}
  }
  ${st.join("\n  ")}
}`;
}

// ---------------------------------------------------------------------------------------------
// GEMV variant 2: split K (hardware)

/** Invocations splitting K in the split-K GEMV. */
const SPLITK_WG = 64;

/**
 * Split-K GEMV, NT layout: a workgroup computes 4 columns (n0..n0+4) for R rows (m0..m0+R);
 * its 64 invocations stride over K (consecutive invocations read consecutive weights), keep
 * R vec4 partial sums each, and reduce them by a tree in workgroup memory.
 */
function splitKCode(R: number): string {
  const L: string[] = [];
  for (let i = 0; i < R; i++) L.push(`var s${i} = vec4f(0.0);`);
  const body: string[] = [];
  for (let i = 0; i < R; i++) {
    body.push(
      `{ let av = a[min(m0 + ${i}u, p.M - 1u) * p.K + k]; s${i} = fma(vec4f(av), bv, s${i}); }`,
    );
  }
  const red: string[] = [];
  for (let i = 0; i < R; i++) red.push(`red[${i}u * WG + lid] = s${i};`);
  const st: string[] = [];
  for (let i = 0; i < R; i++) st.push(`store4(m0 + ${i}u, n0, red[${i}u * WG]);`);
  return header("NT", "f32") + /* wgsl */ `
const WG: u32 = ${SPLITK_WG}u;
var<workgroup> red: array<vec4f, ${R * SPLITK_WG}>; // [row][invocation] partial sums
` + entry(SPLITK_WG) + /* wgsl */ `
  let m0 = (t / p.tilesN) * ${R}u;
  let n0 = (t % p.tilesN) * 4u;
  let w0 = min(n0, p.N - 1u) * p.K;
  let w1 = min(n0 + 1u, p.N - 1u) * p.K;
  let w2 = min(n0 + 2u, p.N - 1u) * p.K;
  let w3 = min(n0 + 3u, p.N - 1u) * p.K;
  ${L.join(" ")}
  for (var k = lid; k < p.K; k += WG) {
    let bv = vec4f(b[w0 + k], b[w1 + k], b[w2 + k], b[w3 + k]);
    ${body.join("\n    ")}
  }
  ${red.join(" ")}
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h = h >> 1u) {
    if (lid < h) {
      for (var i = 0u; i < ${R}u; i++) { red[i * WG + lid] += red[i * WG + lid + h]; }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    ${st.join("\n    ")}
  }
}`;
}

// ---------------------------------------------------------------------------------------------
// Dispatch builders

/** A 4-byte buffer bound in place of an absent bias, one per device. */
const noBias = new WeakMap<GPUDevice, GPUBuffer>();

function dummyBias(gpu: Gpu): GPUBuffer {
  let buf = noBias.get(gpu.device);
  if (!buf) noBias.set(gpu.device, buf = gpu.buffer("matmul no-bias (1) f32", 4));
  return buf;
}

/** Checks sizes: non-negative integers below 2³¹. */
function checkSizes(name: string, { M, N, K }: MatmulArgs): void {
  for (const [k, v] of [["M", M], ["N", N], ["K", K]] as const) {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** 31) {
      throw new Error(`specdec: ${name}: ${k} = ${v} must be an integer in [0, 2^31)`);
    }
  }
}

/**
 * Builds the dispatch: params (M, N, K, tiles along N, tile count, flags), bindings
 * a, b, bias (or the dummy), c, and `tiles` workgroups (split over x and y by the runtime).
 */
function build(
  gpu: Gpu,
  name: string,
  code: string,
  args: MatmulArgs,
  tileRows: number,
  tileCols: number,
): Dispatch {
  const { M, N, K } = args;
  const tilesN = Math.ceil(N / tileCols);
  const tiles = tilesN * Math.ceil(M / tileRows);
  const flags = (args.bias ? 1 : 0) | (args.accumulate ? 2 : 0);
  const d = gpu.kernel({
    label: args.label ?? name,
    code,
    buffers: [args.a, args.b, args.bias ?? dummyBias(gpu), args.c],
    params: [M, N, K, tilesN, tiles, flags, 0, 0],
    workgroups: Math.max(tiles, 1),
  });
  // Nothing to compute (M or N is 0): encode() skips a dispatch with a zero count.
  return tiles === 0 ? { ...d, workgroups: [0, 1, 1] } : d;
}

/** The default GEMM variant for the adapter: register tiles on software, workgroup tiles on hardware. */
function defaultVariant(gpu: Gpu): number {
  return gpu.isSoftware ? 3 : 2;
}

/** Builds a GEMM of `layout` with the requested or default variant. */
function gemm(gpu: Gpu, layout: Layout, name: string, args: MatmulArgs): Dispatch {
  checkSizes(name, args);
  const variant = args.variant ?? defaultVariant(gpu);
  if (variant === 1) return build(gpu, name, naiveCode(layout), args, 16, 16);
  if (variant === 2) return build(gpu, name, tiledCode(layout), args, 64, 64);
  if (variant === 3) {
    const vec = vec4Ok(layout, args.M, args.N, args.K);
    const t = vec ? GEMM_TILE : GEMM_TILE_SCALAR;
    return build(gpu, name, regTileCode(layout, vec, t), args, t.R, t.WG * t.C);
  }
  throw new Error(`specdec: ${name}: unknown variant ${variant} (1, 2 or 3)`);
}

/**
 * `c (M, N) = a (M, K) · bᵀ` with `b (N, K)` (+ bias, or +=): the forward of a linear layer
 * `y = x·Wᵀ` with torch's `[out, in]` weights.
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (N, K)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulNT, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (2, 3)", new Float32Array([1, 2, 3, 4, 5, 6]));
 * const w = gpu.upload("w (1, 3)", new Float32Array([1, 0, -1]));
 * const y = gpu.buffer("y (2, 1)", 2 * 4);
 * gpu.run("y = x·wᵀ", [matmulNT(gpu, { a: x, b: w, c: y, M: 2, N: 1, K: 3 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [-2, -2]
 * ```
 */
export function matmulNT(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "NT", "matmulNT", args);
}

/**
 * `c (M, N) = a (M, K) · b (K, N)` (+ bias, or +=): the input gradient of a linear layer,
 * `dX = dY·W`.
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (K, N)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulNN, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (2, 3)", new Float32Array([1, 0, 0, 0, 1, 1]));
 * const dx = gpu.buffer("dx (1, 3)", 3 * 4);
 * gpu.run("dx = dy·w", [matmulNN(gpu, { a: dy, b: w, c: dx, M: 1, N: 3, K: 2 })]);
 * console.log(await gpu.readF32(dx)); // Float32Array [1, 2, 2]
 * ```
 */
export function matmulNN(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "NN", "matmulNN", args);
}

/**
 * `c (M, N) = aᵀ · b` with `a (K, M)`, `b (K, N)` (+ bias, or +=): the weight gradient of a
 * linear layer, `dW = dYᵀ·X` (use `accumulate` to add into a gradient buffer).
 *
 * @param gpu the runtime
 * @param args `a (K, M)`, `b (K, N)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulTN, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (2, 1)", new Float32Array([1, 2]));
 * const x = gpu.upload("x (2, 2)", new Float32Array([1, 1, 3, 0]));
 * const dw = gpu.buffer("dw (1, 2)", 2 * 4);
 * gpu.run("dw = dyᵀ·x", [matmulTN(gpu, { a: dy, b: x, c: dw, M: 1, N: 2, K: 2 })]);
 * console.log(await gpu.readF32(dw)); // Float32Array [7, 1]
 * ```
 */
export function matmulTN(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "TN", "matmulTN", args);
}

/** Row block of the GEMV for M rows: the next power of two ≥ M, at most {@link GEMV_MAX_M}. */
function gemvRows(M: number): number {
  let r = 1;
  while (r < M && r < GEMV_MAX_M) r *= 2;
  return r;
}

/**
 * Row block of the vec4 GEMV for M rows: M itself up to {@link GEMV_VEC_MAX_R} (no padded rows
 * whose loads and dot products are thrown away), else the most even split into blocks of at
 * most that many rows.
 */
function gemvVecRows(M: number): number {
  const blocks = Math.max(1, Math.ceil(M / GEMV_VEC_MAX_R));
  return Math.max(1, Math.ceil(M / blocks));
}

/** A 16-byte buffer bound in place of an absent bias read as vec4, one per device. */
const noBias4 = new WeakMap<GPUDevice, GPUBuffer>();

/** Builds the vec4 GEMV's dispatch (like {@link build}, with a vec4-sized placeholder bias). */
function buildGemvVec(gpu: Gpu, args: MatmulArgs, tile: RegTile): Dispatch {
  const { M, N, K } = args;
  let dummy = noBias4.get(gpu.device);
  if (!dummy) noBias4.set(gpu.device, dummy = gpu.buffer("gemv no-bias (4) f32", 16));
  const tilesN = Math.ceil(N / (tile.C * tile.WG));
  const tiles = tilesN * Math.ceil(M / tile.R);
  const flags = (args.bias ? 1 : 0) | (args.accumulate ? 2 : 0);
  return gpu.kernel({
    label: args.label ?? "gemvNT",
    code: gemvVecCode(tile),
    buffers: [args.a, args.b, args.bias ?? dummy, args.c],
    params: [M, N, K, tilesN, tiles, flags, 0, 0],
    workgroups: tiles,
  });
}

/**
 * Matrix-vector product for decode steps, with {@link matmulNT} semantics:
 * `c (M, N) = a (M, K) · bᵀ` with `b (N, K)` (+ bias, or +=). Fast for small M (1..16):
 * the rows of a block are computed together, so each weight is read once per block of up to
 * 16 rows (variant 1 takes exactly M rows when K and N are multiples of 4).
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (N, K)`, `c (M, N)`, optional `bias (N)`, `accumulate`;
 *   `variant` 1 (register tiles, default on software adapters) or 2 (split K, default on
 *   hardware)
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { gemvNT, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (3, 2)", new Float32Array([1, 0, 0, 1, 1, 1]));
 * const y = gpu.buffer("y (1, 3)", 3 * 4);
 * gpu.run("y = x·wᵀ", [gemvNT(gpu, { a: x, b: w, c: y, M: 1, N: 3, K: 2 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [1, 2, 3]
 * ```
 */
export function gemvNT(gpu: Gpu, args: MatmulArgs): Dispatch {
  checkSizes("gemvNT", args);
  const R = gemvRows(args.M);
  const variant = args.variant ?? (gpu.isSoftware ? 1 : 2);
  if (variant === 1) {
    if (vec4Ok("NT", args.M, args.N, args.K) && args.N % 4 === 0) {
      const tile = { R: gemvVecRows(args.M), C: GEMV_C, WG: gpu.isSoftware ? 8 : GEMV_WG };
      return buildGemvVec(gpu, args, tile);
    }
    const tile = { R, C: GEMV_C, WG: GEMV_WG };
    const code = regTileCode("NT", vec4Ok("NT", args.M, args.N, args.K), tile);
    return build(gpu, "gemvNT", code, args, R, GEMV_C * GEMV_WG);
  }
  if (variant === 2) return build(gpu, "gemvNT", splitKCode(R), args, R, 4);
  throw new Error(`specdec: gemvNT: unknown variant ${variant} (1 or 2)`);
}

/**
 * A linear layer's forward with {@link matmulNT} semantics, `c = a·bᵀ (+ bias)`: the GEMV for
 * M ≤ 16 rows (decode steps), the tiled GEMM otherwise.
 *
 * @param gpu the runtime
 * @param args `a (M, K)` inputs, `b (N, K)` weights `[out, in]`, `c (M, N)`, optional
 *   `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { linear, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (1, 2)", new Float32Array([3, 4]));
 * const bias = gpu.upload("bias (1)", new Float32Array([0.5]));
 * const y = gpu.buffer("y (1, 1)", 4);
 * gpu.run("linear", [linear(gpu, { a: x, b: w, bias, c: y, M: 1, N: 1, K: 2 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [11.5]
 * ```
 */
export function linear(gpu: Gpu, args: MatmulArgs): Dispatch {
  const { variant: _, ...rest } = args;
  return args.M <= GEMV_MAX_M ? gemvNT(gpu, rest) : matmulNT(gpu, rest);
}
