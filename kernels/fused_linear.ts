/**
 * GEMVs of the fused small-M forward (decode and verification steps): the RMSNorm that feeds a
 * linear layer folded into its prologue, and its consumer folded into the epilogue.
 *
 * - {@link fusedNormLinear} `y = epilogue(RMSNorm(x) · Wᵀ)` with epilogue
 *   - `"none"`: store (the final norm + logits);
 *   - `"biasGelu"`: `gelu(y + bias)`, exact erf (the feed-forward input);
 *   - `"rotaryKv"`: the qkv projection with rotary applied to q and k at each row's position
 *     (read from `start`), q stored into `qkv (T, 3, H, D)` and k, v written straight into the KV
 *     cache: RMSNorm + linear + rotary + kvWrite in one dispatch.
 *
 * Bits: every output is computed with the arithmetic of the unfused kernels on software
 * adapters, in the same order whatever M: the narrow vec4 RMSNorm's sum (8 lanes over vec4s,
 * components pairwise, a 3-step tree), `x · rstd · weight`, the register-tile GEMV's
 * `acc += dot(a₄, w₄)` over k in order, then bias, GELU or rotary as those kernels compute them.
 * A verification forward of γ + 1 tokens and γ + 1 one-token steps therefore give the same bits,
 * and so do the fused and the unfused paths (tests/fused_linear_test.ts checks both).
 *
 * ## Where a small dispatch's time goes on the software adapter (bench/dispatch_bench.ts)
 *
 * Mesa 22.3 lavapipe (llvmpipe, LLVM 15, AVX2, 8-lane SIMD), 2 cores shared with other jobs
 * (load average 4.4 to 5.7 while measured, so absolute times are ~2× a quiet machine's; the
 * ratios held over repeated runs). GEMV `y (512) = W (512, 128) · x`, 65 536 multiply-adds,
 * µs per dispatch, 20 to 30 dispatches per timed pass, best of 3 to 5 alternated rounds:
 *
 * | suspected cause                         | variants                                  | µs            |
 * | --------------------------------------- | ----------------------------------------- | ------------- |
 * | fixed cost of a dispatch                | empty dispatch (1 × 1 invocation)         | 18 to 25      |
 * | workgroup size (8 workgroups)           | 1 / 8 / 32 / 64 / 256 lanes               | 1075 / 880 / 916 / 889 / 904 |
 * | workgroup count (8 lanes)               | 1 / 4 / 16 / 64 / 256 / 1024 workgroups   | 970 / 710 / 673 / 574 / 956 / 974 |
 * | barriers (8 lanes × 8, 64 × 1)          | 0 / 1 / 8 / 32 per invocation             | 941 / 927 / 972 / 931; 914 / 931 / 1088 / 991 |
 * | params uniform vs WGSL constants        | sizes read from the uniform / constants   | 771 / 929     |
 * | storage loads f32 vs vec4               | 4× the loads of 1 word / vec4 loads       | 986 / 946     |
 * | private array, dynamic vs unrolled      | 8-column tile in a loop / unrolled        | 565 / 560 (1 column: 690) |
 * | uniform addresses (lane = row, W shared)| 1 lane × 8 wg / 8 lanes × 8 wg            | 953 / 7385    |
 * | the loads themselves                    | same loops, fma on registers, no loads    | 56 to 70      |
 * | weights through a uniform binding       | W/4 (64 KiB) as uniform / as storage      | 127 / 192     |
 *
 * So the time is neither a fixed cost of the dispatch (an empty one is ~20 µs) nor workgroup
 * shape, barriers or register arrays (all within the noise), but the loads: llvmpipe turns each
 * storage load into a loop over the SIMD lanes and the components, with a mask and bounds test
 * per lane, even when every lane loads the same address (eight lanes loading one shared weight
 * cost 8× one lane). The cost is ~5 to 7 ns per 32-bit word an active lane loads, against ~0.5 ns
 * of arithmetic per loaded word: a GEMV costs its weight words (read once each) plus its
 * activation words (read once per lane) plus the stores, and that is all. Uniform bindings
 * load ~1.5× faster but hold 64 KiB (a quarter of one weight here, far less on hardware).
 *
 * The design that follows: each weight word is loaded once per block of up to 16 rows (a lane
 * keeps every row of the block in registers, so a verification forward reads the weights once),
 * a lane owns 8 output columns so each activation vec4 is loaded once per 8 columns, 8 lanes
 * per workgroup (one SIMD group, no idle lanes) and a few workgroups (2 cores), and fusion saves
 * what it can: the separate norm, rotary, kvWrite and GELU dispatches (20+ µs each plus their
 * loads and stores of the activations). The RMSNorm prologue costs each workgroup a share of one
 * row's loads (its 8 lanes split the row, as the narrow RMSNorm does) plus one norm-weight vec4
 * per k step, shared by the rows of the block.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { ERF_WGSL } from "./activation.ts";
import { RMS_EPS } from "./norm.ts";
import { unrollLoops } from "./unroll.ts";

/** Lanes per workgroup: one SIMD group of the software adapter. */
const WG = 8;
/** Output columns per lane (two vec4s). */
const COLS = 8;
/** Most rows of a block: more rows are split into even blocks. */
const MAX_R = 16;

/** What the fused GEMV does with its outputs. */
export type FusedEpilogue =
  | { kind: "none"; out: GPUBuffer }
  | { kind: "biasGelu"; bias: GPUBuffer; out: GPUBuffer }
  | {
    kind: "rotaryKv";
    /** `qkv (T, 3, H, D)`: q (rotated) is written; k and v go to the cache only. */
    qkv: GPUBuffer;
    /** This layer's cache `(2, B, H, maxLen, D)`. */
    kv: GPUBuffer;
    /** `(B)` u32: token `(b, i)` sits at position `start[b] + i`. */
    start: GPUBuffer;
    /** Rotary tables `(maxLen, D/2)`. */
    cos: GPUBuffer;
    /** See cos. */
    sin: GPUBuffer;
    /** Rows. */
    B: number;
    /** Tokens per row (M = B·n). */
    n: number;
    /** Heads. */
    H: number;
    /** dimHead. */
    D: number;
    /** Cache positions per row. */
    maxLen: number;
  };

/** Arguments of {@link fusedNormLinear}. */
export interface FusedNormLinearArgs {
  /** The residual stream `x (M, K)`. */
  x: GPUBuffer;
  /** RMSNorm weight `(K)`. */
  norm: GPUBuffer;
  /** Weight `(N, K)` (torch layout). */
  w: GPUBuffer;
  /** Rows. */
  M: number;
  /** Output columns (`3·H·D` for `"rotaryKv"`). */
  N: number;
  /** Inputs per row. */
  K: number;
  /** What happens to the outputs. */
  epilogue: FusedEpilogue;
}

/**
 * Whether the fused kernels serve these sizes: vec4 rows (K % 4 = 0, N % 4 = 0) and, for the
 * qkv epilogue, rotary halves of whole vec4s (D % 8 = 0). Otherwise use the unfused kernels.
 *
 * @param K inputs per row (the model dim)
 * @param N outputs
 * @param D dimHead, for the qkv epilogue
 * @returns whether {@link fusedNormLinear} accepts them
 */
export function fusedLinearSupported(K: number, N: number, D?: number): boolean {
  return K > 0 && K % 4 === 0 && N > 0 && N % 4 === 0 && (D === undefined || D % 8 === 0);
}

/** Rows per block for M rows: M up to 16, else the most even split (as the unfused GEMV). */
function blockRows(M: number): number {
  const blocks = Math.max(1, Math.ceil(M / MAX_R));
  return Math.max(1, Math.ceil(M / blocks));
}

/** The epilogue's bindings and its store of `v` at (row, col) for lane column group q. */
function epilogueCode(kind: FusedEpilogue["kind"]): { bindings: string; store: string } {
  if (kind === "none") {
    return {
      bindings: `@group(0) @binding(4) var<storage, read_write> out: array<vec4f>; // (M, N)`,
      store: /* wgsl */ `
  for (var i = 0u; i < R; i++) { /* unroll */
    for (var q = 0u; q < C4; q++) { /* unroll */
      let col = n0 + 4u * q;
      if (m0 + i < params.M && col < params.N) {
        out[((m0 + i) * params.N + col) / 4u] = acc[i * C4 + q];
      }
    }
  }`,
    };
  }
  if (kind === "biasGelu") {
    return {
      bindings: `@group(0) @binding(4) var<storage, read> bias: array<vec4f>;      // (N)
@group(0) @binding(5) var<storage, read_write> out: array<vec4f>; // (M, N) gelu(h + bias)
${ERF_WGSL}`,
      store: /* wgsl */ `
  for (var i = 0u; i < R; i++) { /* unroll */
    for (var q = 0u; q < C4; q++) { /* unroll */
      let col = n0 + 4u * q;
      if (m0 + i < params.M && col < params.N) {
        // as the unfused path: h = acc + bias stored, then gelu(h) = 0.5·h·(1 + erf(h/√2))
        let h = acc[i * C4 + q] + bias[col / 4u];
        let e = vec4f(erf_f32(h.x * 0.70710678118654752), erf_f32(h.y * 0.70710678118654752),
                      erf_f32(h.z * 0.70710678118654752), erf_f32(h.w * 0.70710678118654752));
        out[((m0 + i) * params.N + col) / 4u] = 0.5 * h * (1.0 + e);
      }
    }
  }`,
    };
  }
  return {
    bindings: `@group(0) @binding(4) var<storage, read_write> qkv: array<vec4f>; // (T, 3, H, D): q
@group(0) @binding(5) var<storage, read_write> kv: array<vec4f>;  // (2, B, H, maxLen, D)
@group(0) @binding(6) var<storage, read> start: array<u32>;       // (B)
@group(0) @binding(7) var<storage, read> cosT: array<vec4f>;      // (maxLen, D/2)
@group(0) @binding(8) var<storage, read> sinT: array<vec4f>;      // (maxLen, D/2)`,
    // the lane's two column groups are x₁ = cols c0..c0+4 and x₂ = c0+D/2..: a rotary pair
    store: /* wgsl */ `
  let half = params.D / 2u;
  let hs = n0 / params.D;        // head slot over (3, H)
  let s = hs / params.H;         // 0 q, 1 k, 2 v
  let h = hs % params.H;
  let d4 = (n0 % params.D) / 4u; // vec4 index of x₁ in the head
  let D4 = params.D / 4u;
  for (var i = 0u; i < R; i++) { /* unroll */
    let t = m0 + i;
    if (t < params.M && n0 < params.N) {
      let b = t / params.n;
      let pos = start[b] + t % params.n;
      var y1 = acc[i * C4];
      var y2 = acc[i * C4 + 1u];
      if (s < 2u && pos < params.maxLen) { // rotary as kernels/rotary.ts: [x₁, x₂]·cos + [−x₂, x₁]·sin
        let c = cosT[(pos * half) / 4u + d4];
        let sn = sinT[(pos * half) / 4u + d4];
        let x1 = y1;
        let x2 = y2;
        y1 = x1 * c - x2 * sn;
        y2 = x2 * c + x1 * sn;
      }
      if (s == 0u) {
        let o = (t * 3u * params.H + h) * D4 + d4;
        qkv[o] = y1;
        qkv[o + half / 4u] = y2;
      } else if (pos < params.maxLen) { // no slot past the cache, as kvWrite
        let o = ((((s - 1u) * params.B + b) * params.H + h) * params.maxLen + pos) * D4 + d4;
        kv[o] = y1;
        kv[o + half / 4u] = y2;
      }
    }
  }`,
  };
}

/**
 * The WGSL of one fused GEMV: R rows per block, 8 lanes × 8 columns per workgroup.
 *
 * @param kind the epilogue
 * @param R rows per block
 * @returns the WGSL, unrolled
 */
export function fusedNormLinearCode(kind: FusedEpilogue["kind"], R: number): string {
  const e = epilogueCode(kind);
  // the lane's unit u of 8 columns: n0..n0+4 and n1..n1+4 with n1 = n0 + 4, or for the qkv
  // epilogue a rotary pair of vec4s, n1 = n0 + D/2 (a head slot of (3, H) holds D/8 units)
  const secondCol = kind === "rotaryKv" ? "n0 + params.D / 2u" : "n0 + 4u";
  const firstCol = kind === "rotaryKv"
    ? `(u / (params.D / 8u)) * params.D + (u % (params.D / 8u)) * 4u`
    : `u * C`;
  return unrollLoops(/* wgsl */ `
struct Params {
  M: u32, N: u32, K: u32,
  tilesN: u32, tiles: u32, // workgroups along N, in all
  eps: f32,                // RMSNorm epsilon
  B: u32, n: u32, H: u32, D: u32, maxLen: u32, // the qkv epilogue's shapes (else unused)
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4f>;    // (M, K) residual stream
@group(0) @binding(2) var<storage, read> norm: array<vec4f>; // (K) RMSNorm weight
@group(0) @binding(3) var<storage, read> w: array<vec4f>;    // (N, K)
${e.bindings}

const R: u32 = ${R}u;   // rows per block
const C: u32 = ${COLS}u;   // columns per lane
const C4: u32 = ${COLS / 4}u;  // vec4 column groups per lane
const WG: u32 = ${WG}u;  // lanes per workgroup
var<workgroup> red: array<f32, R * WG>; // (R, WG) partial sums of squares

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; } // the whole workgroup
  let K4 = params.K / 4u;
  let m0 = (t / params.tilesN) * R;
  var ai: array<u32, R>; // row offsets of x(m0 + i, ·), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * K4; }
  // prologue: rstd of each row as the narrow vec4 RMSNorm sums it (lane lid takes vec4s
  // lid, lid + 8, …; components pairwise; then a 3-step tree)
  for (var i = 0u; i < R; i++) { /* unroll */
    var ss = vec4f();
    for (var c = lid; c < K4; c += WG) {
      let v = x[ai[i] + c];
      ss = fma(v, v, ss);
    }
    red[i * WG + lid] = (ss.x + ss.y) + (ss.z + ss.w);
  }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      for (var i = 0u; i < R; i++) { /* unroll */ red[i * WG + lid] = red[i * WG + lid] + red[i * WG + lid + s]; }
    }
    workgroupBarrier();
  }
  var r: array<f32, R>;
  for (var i = 0u; i < R; i++) { /* unroll */ r[i] = 1.0 / sqrt(red[i * WG] / f32(params.K) + params.eps); }
  let u = (t % params.tilesN) * WG + lid; // this lane's unit of 8 columns
  let n0 = ${firstCol};
  let n1 = ${secondCol};
  var bj: array<u32, C>; // row offsets of W(col, ·), clamped
  for (var j = 0u; j < 4u; j++) { /* unroll */ bj[j] = min(n0 + j, params.N - 1u) * K4; }
  for (var j = 0u; j < 4u; j++) { /* unroll */ bj[4u + j] = min(n1 + j, params.N - 1u) * K4; }
  var acc: array<vec4f, R * C4>; // (row i, column group q) at acc[i * C4 + q]
  for (var k = 0u; k < K4; k++) {
    let g = norm[k];
    var bv: array<vec4f, C>;
    for (var j = 0u; j < C; j++) { /* unroll */ bv[j] = w[bj[j] + k]; }
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = x[ai[i] + k] * r[i] * g; // RMSNorm(x)(row, 4k..4k+4), as the norm kernel rounds it
      for (var q = 0u; q < C4; q++) { /* unroll */
        acc[i * C4 + q] += vec4f(dot(av, bv[4u * q]), dot(av, bv[4u * q + 1u]),
                                 dot(av, bv[4u * q + 2u]), dot(av, bv[4u * q + 3u]));
      }
    }
  }
${e.store}
}`);
}

/**
 * `epilogue(RMSNorm(x) · Wᵀ)` in one dispatch for small M (see the module doc for the
 * epilogues and the arithmetic). The RMSNorm uses eps = 2⁻²³ like kernels/norm.ts.
 *
 * @param gpu the runtime
 * @param a inputs, sizes and the epilogue
 * @returns the dispatch
 * @throws Error when the sizes are not {@link fusedLinearSupported}, or the qkv epilogue's N is
 *   not 3·H·D or M not B·n
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { fusedNormLinear } from "./fused_linear.ts";
 * const gpu = await requestGpu();
 * const [M, N, K] = [2, 8, 4];
 * const x = gpu.upload("x (M, K)", new Float32Array(M * K).fill(1));
 * const norm = gpu.upload("norm (K)", new Float32Array(K).fill(1));
 * const w = gpu.upload("w (N, K)", new Float32Array(N * K).fill(0.5));
 * const out = gpu.buffer("out (M, N)", M * N * 4);
 * gpu.run("logits", [fusedNormLinear(gpu, { x, norm, w, M, N, K, epilogue: { kind: "none", out } })]);
 * console.log(await gpu.readF32(out)); // ≈ 2 everywhere
 * ```
 */
export function fusedNormLinear(gpu: Gpu, a: FusedNormLinearArgs): Dispatch {
  const { M, N, K, epilogue: e } = a;
  const D = e.kind === "rotaryKv" ? e.D : undefined;
  if (!fusedLinearSupported(K, N, D)) {
    throw new Error(
      `specdec: fusedNormLinear needs K and N multiples of 4${
        D === undefined ? "" : " and dimHead a multiple of 8"
      }, got K ${K}, N ${N}${D === undefined ? "" : `, dimHead ${D}`}`,
    );
  }
  const shapes = { B: 1, n: 1, H: 1, D: 8, maxLen: 1 };
  const buffers: Record<string, GPUBuffer> = { x: a.x, norm: a.norm, w: a.w };
  if (e.kind === "rotaryKv") {
    if (N !== 3 * e.H * e.D || M !== e.B * e.n) {
      throw new Error(
        `specdec: fusedNormLinear "rotaryKv" needs N = 3·H·D (${3 * e.H * e.D}) and M = B·n ` +
          `(${e.B * e.n}), got N ${N}, M ${M}`,
      );
    }
    Object.assign(shapes, { B: e.B, n: e.n, H: e.H, D: e.D, maxLen: e.maxLen });
    Object.assign(buffers, { qkv: e.qkv, kv: e.kv, start: e.start, cosT: e.cos, sinT: e.sin });
  } else if (e.kind === "biasGelu") {
    Object.assign(buffers, { bias: e.bias, out: e.out });
  } else {
    buffers.out = e.out;
  }
  const R = blockRows(M);
  const tilesN = Math.ceil(N / (WG * COLS));
  const tiles = M === 0 ? 0 : tilesN * Math.ceil(M / R);
  const d = gpu.kernel({
    label: `fusedNormLinear ${e.kind}`,
    code: fusedNormLinearCode(e.kind, R),
    params: { M, N, K, tilesN, tiles, eps: RMS_EPS, ...shapes },
    buffers,
    workgroups: Math.max(tiles, 1),
  });
  return tiles === 0 ? { ...d, workgroups: [0, 1, 1] } : d;
}
