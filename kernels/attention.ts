/**
 * Causal self-attention over a per-row KV cache, forward and backward.
 *
 * Semantics follow lucidrains/speculative-decoding's `CausalAttention`: scores `q·k · D^−0.5`,
 * causal mask filled with `−FLT_MAX`, softmax over keys, `out = softmax · v`, heads merged as
 * `(T, H, D)`. A masked key gets weight `exp(−FLT_MAX − max) = 0` exactly in float32 (every query
 * sees at least key 0, so no row is fully masked); the kernels therefore skip masked keys, which
 * gives the same result.
 *
 * Layouts (row-major, f32 unless noted):
 * - `qkv (T, 3, H, D)` with T = B·n, token `t = b·n + i`: q at `[t, 0, h]`, k at `[t, 1, h]`, v at
 *   `[t, 2, h]` (after {@link "./rotary.ts" | rotary}).
 * - `kv (2, B, H, maxLen, D)`: this layer's cache, k at `[0, b, h, pos]`, v at `[1, b, h, pos]`.
 * - `start: u32 (B)`: token `(b, i)` sits at absolute position `start[b] + i`.
 *
 * One forward: {@link kvWrite} copies this forward's k and v into the cache at their positions,
 * then {@link attention} lets query `(b, i)` attend cache keys `0..start[b]+i`. The same two
 * dispatches serve training and prefill (`start = 0`, n up to maxLen), cached decode (`n = 1`)
 * and speculative verification (`n = γ + 1`), with each row at its own start; rollback is a
 * smaller start next time (stale cache entries past a query's position are never read).
 *
 * Softmax is streamed (online max and sum), so any key count works in fixed memory. Every
 * reduction has a fixed order: results are deterministic, and no float atomics are used.
 *
 * WGSL is generated per head size D (each D compiles its own pipelines): q, accumulators and
 * gradients live in named `vec4f` registers (D padded to a multiple of 4 with zero lanes), and
 * loops over a tile's keys are unrolled. When D % 4 = 0 the buffers are bound as `array<vec4f>`.
 *
 * @module
 */
import { type Dispatch, f32bits, type Gpu } from "./gpu.ts";

/** Threads per workgroup of the tiled kernels: one query (or key) per thread. */
const TILE = 64;

/** `n` copies of `f(c)` joined: the unrolling helper of the WGSL generators. */
function rep(n: number, f: (c: number) => string, sep = "\n"): string {
  return Array.from({ length: n }, (_, c) => f(c)).join(sep);
}

/** Largest power of two ≤ x (at least 1). */
function pow2Floor(x: number): number {
  let p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}

/** Keys (or queries) per shared-memory tile: k and v tiles of this many rows fit in 8 KiB. */
function tileRows(D: number): number {
  const D4 = Math.ceil(D / 4);
  return Math.min(16, pow2Floor(8192 / (2 * 16 * D4)));
}

/**
 * WGSL declarations and helpers for head vectors of length D: `D4` vec4 chunks per vector,
 * `ld_<buf>(row, c)` loads chunk c of vector `row` (zero lanes past D) and `st_<buf>(row, c, v)`
 * stores it. A "row" is the index of a D-vector in its buffer: every head vector starts at a
 * multiple of D in all these layouts.
 */
function headVec(D: number) {
  const D4 = Math.ceil(D / 4);
  const vec = D % 4 === 0;
  const elem = vec ? "vec4f" : "f32";
  const ld = (buf: string) =>
    vec
      ? `fn ld_${buf}(row: u32, c: u32) -> vec4f { return ${buf}[row * ${D4}u + c]; }`
      : `fn ld_${buf}(row: u32, c: u32) -> vec4f {
  let e = row * ${D}u + 4u * c;
  return vec4f(${buf}[e], select(0.0, ${buf}[e + 1u], 4u * c + 1u < ${D}u),
    select(0.0, ${buf}[e + 2u], 4u * c + 2u < ${D}u), select(0.0, ${buf}[e + 3u], 4u * c + 3u < ${D}u));
}`;
  const st = (buf: string) =>
    vec
      ? `fn st_${buf}(row: u32, c: u32, v: vec4f) { ${buf}[row * ${D4}u + c] = v; }`
      : `fn st_${buf}(row: u32, c: u32, v: vec4f) {
  let e = row * ${D}u + 4u * c;
  ${buf}[e] = v.x;
  if (4u * c + 1u < ${D}u) { ${buf}[e + 1u] = v.y; }
  if (4u * c + 2u < ${D}u) { ${buf}[e + 2u] = v.z; }
  if (4u * c + 3u < ${D}u) { ${buf}[e + 3u] = v.w; }
}`;
  return { D4, elem, ld, st };
}

const NEG_MAX = "-3.40282347e+38"; // −FLT_MAX: the reference's mask value, and "no key yet"

// ---------------------------------------------------------------------------------------------
// kvWrite

/**
 * kvWrite, one invocation per copied element: a scalar f32 for any D, or a vec4 when D % 4 = 0
 * (a quarter of the invocations and index computations, and on software adapters a quarter of
 * the per-lane load and store loops).
 */
const kvWriteCode = (vec: boolean): string => {
  const e = vec ? "vec4f" : "f32";
  return /* wgsl */ `
struct P { B: u32, n: u32, H: u32, D: u32, maxLen: u32, total: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<${e}>;      // (T, 3, H, D)
@group(0) @binding(2) var<storage, read_write> kv: array<${e}>; // (2, B, H, maxLen, D)
@group(0) @binding(3) var<storage, read> start: array<u32>;    // (B)

// One invocation per (token t, s ∈ {k, v}, head h, d) with d over D${vec ? "/4 vec4s" : ""} (p.D).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let id = (wg.x + wg.y * nw.x) * 64u + li;
  if (id >= p.total) { return; }
  let d = id % p.D;
  var r = id / p.D;
  let h = r % p.H;
  r = r / p.H;
  let s = r % 2u;
  let t = r / 2u;
  let b = t / p.n;
  let pos = start[b] + t % p.n;
  if (pos >= p.maxLen) { return; } // no slot: the cache keeps positions < maxLen only
  kv[(((s * p.B + b) * p.H + h) * p.maxLen + pos) * p.D + d] = qkv[((t * 3u + 1u + s) * p.H + h) * p.D + d];
}`;
};

/** Sizes shared by the attention kernels. */
export interface AttentionSizes {
  /** Number of rows. */
  B: number;
  /** Tokens per row in this forward (T = B·n). */
  n: number;
  /** Heads. */
  H: number;
  /** dimHead. */
  D: number;
  /** Cache positions per row. */
  maxLen: number;
}

/**
 * Copies k and v of every token `(b, i)` of this forward into the cache at position
 * `start[b] + i` (positions ≥ maxLen are skipped). Run it after {@link "./rotary.ts" | rotary}
 * (the cache holds rotated keys) and before {@link attention}.
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)`, `kv (2, B, H, maxLen, D)` (written), `start (B)` u32, and sizes
 * @returns the dispatch
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { attention, kvWrite } from "./attention.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [2, 3, 2, 8, 16];
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(0.5));
 * const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * maxLen * D * 4);
 * const start = gpu.upload("start (B)", new Uint32Array([0, 5]));
 * const out = gpu.buffer("out (T, H, D)", B * n * H * D * 4);
 * const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
 * const sizes = { B, n, H, D, maxLen };
 * gpu.run("attend", [
 *   kvWrite(gpu, { qkv, kv, start, ...sizes }),
 *   attention(gpu, { qkv, kv, start, out, lse, ...sizes }),
 * ]);
 * ```
 */
export function kvWrite(
  gpu: Gpu,
  a: AttentionSizes & { qkv: GPUBuffer; kv: GPUBuffer; start: GPUBuffer },
): Dispatch {
  const { B, n, H, D, maxLen } = a;
  // vec4 bindings need at least 16 bytes: no vec4 path for an empty forward or cache
  const vec = D % 4 === 0 && B * n * H * D > 0 && maxLen > 0;
  const Dw = vec ? D / 4 : D; // copied words (vec4 or f32) per head vector
  const total = B * n * 2 * H * Dw;
  return gpu.kernel({
    label: "kvWrite",
    code: kvWriteCode(vec),
    buffers: [a.qkv, a.kv, a.start],
    params: [B, n, H, Dw, maxLen, total],
    workgroups: Math.ceil(total / 64),
  });
}

// ---------------------------------------------------------------------------------------------
// attention forward

/** Bindings and params shared by both forward variants. */
function forwardHeader(D: number): string {
  const { elem, ld, st } = headVec(D);
  return /* wgsl */ `
struct P { B: u32, n: u32, H: u32, maxLen: u32, scale: u32, tiles: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;      // (T, 3, H, D)
@group(0) @binding(2) var<storage, read> kv: array<${elem}>;       // (2, B, H, maxLen, D)
@group(0) @binding(3) var<storage, read> start: array<u32>;        // (B)
@group(0) @binding(4) var<storage, read_write> out: array<${elem}>; // (T, H, D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;    // (B, H, n)
${ld("qkv")}
${ld("kv")}
${st("out")}`;
}

/**
 * Tiled forward: a workgroup takes TILE consecutive queries of one (row, head), one query per
 * thread, and streams the keys they need through shared memory KT at a time. Each thread keeps
 * an online softmax (running max m, sum l, weighted values a), rescaling only when m grows.
 * (The key loop is not unrolled: lavapipe's JIT took tens of seconds on fully unrolled tiles.)
 */
function attentionTiledCode(D: number): string {
  const { D4 } = headVec(D);
  const KT = tileRows(D);
  return /* wgsl */ `${forwardHeader(D)}
var<workgroup> kS: array<vec4f, ${KT * D4}>; // (KT, D4) key tile
var<workgroup> vS: array<vec4f, ${KT * D4}>; // (KT, D4) value tile

@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % p.tiles;
  let h = (w / p.tiles) % p.H;
  let b = w / (p.tiles * p.H);
  if (b >= p.B) { return; } // whole workgroup: grid overshoot
  let scale = bitcast<f32>(p.scale);
  let i0 = tile * ${TILE}u;
  let lastQ = min(i0 + ${TILE}u, p.n) - 1u;
  let st = start[b];
  let keyEnd = min(st + lastQ, p.maxLen - 1u); // last key any query of the tile sees
  let iq = min(i0 + li, lastQ); // threads past n shadow the last query and write nothing
  let limit = min(st + iq, p.maxLen - 1u); // this query's last key (inclusive)
  let t = b * p.n + iq;
  let qRow = t * 3u * p.H + h;
${rep(D4, (c) => `  let q${c} = ld_qkv(qRow, ${c}u);`)}
  var m = ${NEG_MAX};
  var l = 0.0;
${rep(D4, (c) => `  var a${c} = vec4f();`)}
  let kRow = (b * p.H + h) * p.maxLen;
  let vRow = kRow + p.B * p.H * p.maxLen;
  for (var j0 = 0u; j0 <= keyEnd; j0 += ${KT}u) {
    for (var e = li; e < ${KT * D4}u; e += ${TILE}u) {
      let j = j0 + e / ${D4}u;
      var kx = vec4f();
      var vx = vec4f();
      if (j <= keyEnd) {
        kx = ld_kv(kRow + j, e % ${D4}u);
        vx = ld_kv(vRow + j, e % ${D4}u);
      }
      kS[e] = kx;
      vS[e] = vx;
    }
    workgroupBarrier();
    // this query's keys in the tile (none for threads past n: they only help load)
    let kEnd = select(0u, min(${KT}u, limit + 1u - min(j0, limit + 1u)), i0 + li < p.n);
    for (var k = 0u; k < kEnd; k++) {
      let s = (${rep(D4, (c) => `dot(q${c}, kS[k * ${D4}u + ${c}u])`, " + ")}) * scale;
      if (s > m) { // new running max: rescale what was summed so far
        let alpha = exp(m - s);
        l = l * alpha;
${rep(D4, (c) => `        a${c} = a${c} * alpha;`)}
        m = s;
      }
      let pk = exp(s - m);
      l = l + pk;
${rep(D4, (c) => `      a${c} = a${c} + pk * vS[k * ${D4}u + ${c}u];`)}
    }
    workgroupBarrier();
  }
  if (i0 + li < p.n) {
    let inv = 1.0 / l;
${rep(D4, (c) => `    st_out(t * p.H + h, ${c}u, a${c} * inv);`)}
    lse[(b * p.H + h) * p.n + iq] = m + log(l);
  }
}`;
}

/**
 * Shape of the split forward: S threads stride over the keys of QC queries of one (row, head).
 * Every key and value loaded serves all QC queries (decode steps and verification have few
 * queries and many keys, so key and value loads dominate); each thread keeps an online softmax
 * per query, and the S states of each query are combined in workgroup memory (≤ 12 KiB).
 *
 * On software adapters (lavapipe runs a workgroup's invocations 8 at a time on one CPU thread,
 * and every storage or workgroup load is a per-lane loop) S = 8: one SIMD group, no idle lanes
 * and a short combine. On hardware S = 32 spreads the keys over more threads.
 *
 * @param gpu the runtime (software adapters get narrower workgroups)
 * @param D head size
 * @param n queries per row in this forward
 * @returns threads S and queries QC per workgroup
 */
function splitShape(gpu: Gpu, D: number, n: number): { S: number; QC: number } {
  const D4 = Math.ceil(D / 4);
  const S = gpu.isSoftware ? 8 : 32;
  const fit = Math.floor(12288 / (S * (D4 * 16 + 8)));
  return { S, QC: Math.max(1, Math.min(8, n, fit)) };
}

/**
 * Split forward, for few queries per row (decode, verification): a workgroup takes QC
 * consecutive queries of one (row, head); its S threads stride over the keys (thread s takes
 * keys s, s+S, …), loading each key and value once for all QC queries, with a private online
 * softmax per query; the states are then combined in shared memory in a fixed order. A query's
 * result depends only on S and its own keys, never on QC or n: a one-token decode step and a
 * verification forward compute the same bits for the same position.
 */
function attentionSplitCode(D: number, S: number, QC: number): string {
  const { D4 } = headVec(D);
  const U = (f: (u: number) => string, sep = "\n") => rep(QC, f, sep);
  return /* wgsl */ `${forwardHeader(D)}
const S: u32 = ${S}u;   // threads per workgroup, striding over keys
const QC: u32 = ${QC}u; // queries per workgroup
var<workgroup> mS: array<f32, ${QC * S}>;        // (QC, S) running max per query and thread
var<workgroup> lS: array<f32, ${QC * S}>;        // (QC, S) running sum
var<workgroup> aS: array<vec4f, ${QC * S * D4}>; // (QC, S, D4) running weighted values
var<workgroup> wM: array<f32, ${QC}>;            // (QC) combined max
var<workgroup> wL: array<f32, ${QC}>;            // (QC) combined sum

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, chunk of QC queries)
  let chunk = w % p.tiles;
  let h = (w / p.tiles) % p.H;
  let b = w / (p.tiles * p.H);
  if (b >= p.B) { return; } // whole workgroup: grid overshoot
  let scale = bitcast<f32>(p.scale);
  let i0 = chunk * QC;
  let st = start[b];
  // query u sees keys [0, e_u) (0 keys: past n); its q row (clamped in range)
${
    U((u) =>
      `  let e${u} = select(0u, min(st + i0 + ${u}u, p.maxLen - 1u) + 1u, i0 + ${u}u < p.n);
  let qRow${u} = (b * p.n + min(i0 + ${u}u, p.n - 1u)) * 3u * p.H + h;
${rep(D4, (c) => `  let q${u}_${c} = ld_qkv(qRow${u}, ${c}u);`)}
  var m${u} = ${NEG_MAX};
  var l${u} = 0.0;
${rep(D4, (c) => `  var a${u}_${c} = vec4f();`)}`
    )
  }
  var kEnd = 0u; // keys any query of the chunk sees
${U((u) => `  kEnd = max(kEnd, e${u});`)}
  let kRow = (b * p.H + h) * p.maxLen;
  let vRow = kRow + p.B * p.H * p.maxLen;
  for (var j = li; j < kEnd; j += S) {
${rep(D4, (c) => `    let k${c} = ld_kv(kRow + j, ${c}u);`)}
${rep(D4, (c) => `    let v${c} = ld_kv(vRow + j, ${c}u);`)}
${
    U((u) =>
      `    if (j < e${u}) {
      let s = (${rep(D4, (c) => `dot(q${u}_${c}, k${c})`, " + ")}) * scale;
      if (s > m${u}) { // new running max: rescale what was summed so far
        let alpha = exp(m${u} - s);
        l${u} = l${u} * alpha;
${rep(D4, (c) => `        a${u}_${c} = a${u}_${c} * alpha;`)}
        m${u} = s;
      }
      let pj = exp(s - m${u});
      l${u} = l${u} + pj;
${rep(D4, (c) => `      a${u}_${c} = a${u}_${c} + pj * v${c};`)}
    }`
    )
  }
  }
${
    U((u) =>
      `  mS[${u}u * S + li] = m${u};
  lS[${u}u * S + li] = l${u};
${rep(D4, (c) => `  aS[(${u}u * S + li) * ${D4}u + ${c}u] = a${u}_${c};`)}`
    )
  }
  workgroupBarrier();
  // Threads that saw no key hold m = −FLT_MAX, l = 0: their weight exp(−FLT_MAX − M) is 0.
  for (var u = li; u < QC; u += S) {
    var M = ${NEG_MAX};
    for (var s = 0u; s < S; s++) { M = max(M, mS[u * S + s]); }
    var L = 0.0;
    for (var s = 0u; s < S; s++) { L = L + exp(mS[u * S + s] - M) * lS[u * S + s]; }
    wM[u] = M;
    wL[u] = L;
    if (i0 + u < p.n) { lse[(b * p.H + h) * p.n + i0 + u] = M + log(L); }
  }
  workgroupBarrier();
  for (var e = li; e < QC * ${D4}u; e += S) {
    let u = e / ${D4}u;
    let c = e % ${D4}u;
    if (i0 + u < p.n) {
      let M = wM[u];
      let inv = 1.0 / wL[u];
      var acc = vec4f();
      for (var s = 0u; s < S; s++) {
        acc = acc + exp(mS[u * S + s] - M) * aS[(u * S + s) * ${D4}u + c];
      }
      st_out((b * p.n + i0 + u) * p.H + h, c, acc * inv);
    }
  }
}`;
}

/** Which forward kernel {@link attention} uses. */
export type AttentionVariant = "tiled" | "split";

/**
 * Causal attention of this forward's queries over the KV cache: query `(b, i)` attends cache keys
 * `0..start[b]+i` (inclusive; clamped to maxLen − 1) of its row and head. q comes from `qkv`,
 * k and v from `kv` ({@link kvWrite} must have run first, in the same or an earlier pass).
 * Writes the merged-head output and the logsumexp of the scaled scores (kept for the backward).
 *
 * Two kernels: `"tiled"` (a workgroup per 64 queries sharing key tiles in shared memory, for
 * training and prefill) and `"split"` (a workgroup per up to 8 queries of a row and head, keys
 * split over its threads and each key loaded once for all those queries, for decode,
 * verification and short prompts). The default picks `"split"` when n < 64: a tiled workgroup
 * then has idle threads, and small workgroups spread better over the GPU. The split kernel gives
 * a query the same bits whatever n is, so a verification forward of γ + 1 tokens reproduces the
 * one-token decode steps exactly.
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)`, `kv (2, B, H, maxLen, D)`, `start (B)` u32, outputs
 *   `out (T, H, D)` and `lse (B, H, n)`, sizes, and optionally the variant
 * @returns the dispatch
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { attention, kvWrite } from "./attention.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 1, 2, 8, 16]; // one decode step at position start[0]
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(0.5));
 * const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * maxLen * D * 4);
 * const start = gpu.upload("start (B)", new Uint32Array([7]));
 * const out = gpu.buffer("out (T, H, D)", B * n * H * D * 4);
 * const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
 * const sizes = { B, n, H, D, maxLen };
 * gpu.run("decode", [
 *   kvWrite(gpu, { qkv, kv, start, ...sizes }),
 *   attention(gpu, { qkv, kv, start, out, lse, ...sizes }),
 * ]);
 * ```
 */
export function attention(
  gpu: Gpu,
  a: AttentionSizes & {
    qkv: GPUBuffer;
    kv: GPUBuffer;
    start: GPUBuffer;
    out: GPUBuffer;
    lse: GPUBuffer;
    variant?: AttentionVariant;
  },
): Dispatch {
  const { B, n, H, D, maxLen } = a;
  const variant = a.variant ?? (n < TILE ? "split" : "tiled");
  const tiled = variant === "tiled";
  const { S, QC } = splitShape(gpu, D, n);
  const tiles = Math.ceil(n / (tiled ? TILE : QC));
  return gpu.kernel({
    label: `attention ${variant}`,
    code: tiled ? attentionTiledCode(D) : attentionSplitCode(D, S, QC),
    buffers: [a.qkv, a.kv, a.start, a.out, a.lse],
    params: [B, n, H, maxLen, f32bits(1 / Math.sqrt(D)), tiles],
    workgroups: B * H * tiles,
  });
}

// ---------------------------------------------------------------------------------------------
// attention backward (training: start = 0, the keys of row b are its own tokens b·n + j)
//
// With P = softmax(S), S = scale·q·kᵀ (causal), O = P·v and Δᵢ = dOᵢ·Oᵢ (= Σⱼ Pᵢⱼ dPᵢⱼ):
//   dPᵢⱼ = dOᵢ·vⱼ,  dSᵢⱼ = Pᵢⱼ (dPᵢⱼ − Δᵢ),
//   dqᵢ = scale Σ_{j≤i} dSᵢⱼ kⱼ,  dkⱼ = scale Σ_{i≥j} dSᵢⱼ qᵢ,  dvⱼ = Σ_{i≥j} Pᵢⱼ dOᵢ,
// with Pᵢⱼ recomputed from the forward's logsumexp: Pᵢⱼ = exp(Sᵢⱼ − lseᵢ).

function backwardHeader(D: number): string {
  const { elem, ld, st } = headVec(D);
  return /* wgsl */ `
struct P { B: u32, n: u32, H: u32, tiles: u32, scale: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;       // (T, 3, H, D)
@group(0) @binding(2) var<storage, read> out: array<${elem}>;       // (T, H, D)
@group(0) @binding(3) var<storage, read> dout: array<${elem}>;      // (T, H, D)
@group(0) @binding(4) var<storage, read> lse: array<f32>;           // (B, H, n)
@group(0) @binding(5) var<storage, read_write> dqkv: array<${elem}>; // (T, 3, H, D)
${ld("qkv")}
${ld("out")}
${ld("dout")}
${st("dqkv")}`;
}

/** dq: a workgroup per 64 queries of one (row, head), keys j ≤ i streamed through shared memory. */
function attentionBackwardQCode(D: number): string {
  const { D4 } = headVec(D);
  const KT = tileRows(D);
  return /* wgsl */ `${backwardHeader(D)}
var<workgroup> kS: array<vec4f, ${KT * D4}>; // (KT, D4) key tile
var<workgroup> vS: array<vec4f, ${KT * D4}>; // (KT, D4) value tile

@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % p.tiles;
  let h = (w / p.tiles) % p.H;
  let b = w / (p.tiles * p.H);
  if (b >= p.B) { return; }
  let scale = bitcast<f32>(p.scale);
  let i0 = tile * ${TILE}u;
  let lastQ = min(i0 + ${TILE}u, p.n) - 1u;
  let iq = min(i0 + li, lastQ);
  let t = b * p.n + iq;
${rep(D4, (c) => `  let q${c} = ld_qkv(t * 3u * p.H + h, ${c}u);`)}
${rep(D4, (c) => `  let g${c} = ld_dout(t * p.H + h, ${c}u);`)}
  let delta = ${rep(D4, (c) => `dot(g${c}, ld_out(t * p.H + h, ${c}u))`, " + ")};
  let L = lse[(b * p.H + h) * p.n + iq];
${rep(D4, (c) => `  var dq${c} = vec4f();`)}
  for (var j0 = 0u; j0 <= lastQ; j0 += ${KT}u) {
    for (var e = li; e < ${KT * D4}u; e += ${TILE}u) {
      let j = j0 + e / ${D4}u;
      var kx = vec4f();
      var vx = vec4f();
      if (j <= lastQ) {
        let tj = b * p.n + j;
        kx = ld_qkv((tj * 3u + 1u) * p.H + h, e % ${D4}u);
        vx = ld_qkv((tj * 3u + 2u) * p.H + h, e % ${D4}u);
      }
      kS[e] = kx;
      vS[e] = vx;
    }
    workgroupBarrier();
    // this query's keys in the tile (none for threads past n: they only help load)
    let kEnd = select(0u, min(${KT}u, iq + 1u - min(j0, iq + 1u)), i0 + li < p.n);
    for (var k = 0u; k < kEnd; k++) {
      let s = (${rep(D4, (c) => `dot(q${c}, kS[k * ${D4}u + ${c}u])`, " + ")}) * scale;
      let pj = exp(s - L);
      let dp = ${rep(D4, (c) => `dot(g${c}, vS[k * ${D4}u + ${c}u])`, " + ")};
      let ds = pj * (dp - delta);
${rep(D4, (c) => `      dq${c} = dq${c} + ds * kS[k * ${D4}u + ${c}u];`)}
    }
    workgroupBarrier();
  }
  if (i0 + li < p.n) {
${rep(D4, (c) => `    st_dqkv(t * 3u * p.H + h, ${c}u, dq${c} * scale);`)}
  }
}`;
}

/** dk, dv: a workgroup per 64 keys of one (row, head), queries i ≥ j streamed through shared memory. */
function attentionBackwardKVCode(D: number): string {
  const { D4 } = headVec(D);
  const QT = tileRows(D);
  return /* wgsl */ `${backwardHeader(D)}
var<workgroup> qS: array<vec4f, ${QT * D4}>; // (QT, D4) query tile
var<workgroup> gS: array<vec4f, ${QT * D4}>; // (QT, D4) dOut tile
var<workgroup> lseS: array<f32, ${QT}>;      // (QT) the queries' logsumexp
var<workgroup> deltaS: array<f32, ${QT}>;    // (QT) the queries' Δ = dOut·out

@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % p.tiles;
  let h = (w / p.tiles) % p.H;
  let b = w / (p.tiles * p.H);
  if (b >= p.B) { return; }
  let scale = bitcast<f32>(p.scale);
  let j0 = tile * ${TILE}u;
  let jk = min(j0 + li, p.n - 1u); // threads past n shadow the last key and write nothing
  let tj = b * p.n + jk;
${rep(D4, (c) => `  let k${c} = ld_qkv((tj * 3u + 1u) * p.H + h, ${c}u);`)}
${rep(D4, (c) => `  let v${c} = ld_qkv((tj * 3u + 2u) * p.H + h, ${c}u);`)}
${rep(D4, (c) => `  var dk${c} = vec4f();`)}
${rep(D4, (c) => `  var dv${c} = vec4f();`)}
  for (var i0 = j0; i0 < p.n; i0 += ${QT}u) {
    for (var e = li; e < ${QT * D4}u; e += ${TILE}u) {
      let i = i0 + e / ${D4}u;
      var qx = vec4f();
      var gx = vec4f();
      if (i < p.n) {
        let ti = b * p.n + i;
        qx = ld_qkv(ti * 3u * p.H + h, e % ${D4}u);
        gx = ld_dout(ti * p.H + h, e % ${D4}u);
      }
      qS[e] = qx;
      gS[e] = gx;
    }
    if (li < ${QT}u) {
      let i = i0 + li;
      var d = 0.0;
      var L = 0.0;
      if (i < p.n) {
        let row = (b * p.n + i) * p.H + h;
        d = ${rep(D4, (c) => `dot(ld_dout(row, ${c}u), ld_out(row, ${c}u))`, " + ")};
        L = lse[(b * p.H + h) * p.n + i];
      }
      deltaS[li] = d;
      lseS[li] = L;
    }
    workgroupBarrier();
    // this key's queries in the tile: i0 + k ≥ jk and i0 + k < n (none for threads past n)
    let kBegin = min(jk - min(i0, jk), ${QT}u);
    let kEnd = select(0u, min(${QT}u, p.n - i0), j0 + li < p.n);
    for (var k = kBegin; k < kEnd; k++) {
      let s = (${rep(D4, (c) => `dot(k${c}, qS[k * ${D4}u + ${c}u])`, " + ")}) * scale;
      let pi = exp(s - lseS[k]);
      let dp = ${rep(D4, (c) => `dot(v${c}, gS[k * ${D4}u + ${c}u])`, " + ")};
      let ds = pi * (dp - deltaS[k]);
${rep(D4, (c) => `      dv${c} = dv${c} + pi * gS[k * ${D4}u + ${c}u];`)}
${rep(D4, (c) => `      dk${c} = dk${c} + ds * qS[k * ${D4}u + ${c}u];`)}
    }
    workgroupBarrier();
  }
  if (j0 + li < p.n) {
${rep(D4, (c) => `    st_dqkv((tj * 3u + 1u) * p.H + h, ${c}u, dk${c} * scale);`)}
${rep(D4, (c) => `    st_dqkv((tj * 3u + 2u) * p.H + h, ${c}u, dv${c});`)}
  }
}`;
}

/**
 * The backward of {@link attention} for training. **Requires `start[b] = 0` for every row** of
 * the forward (so the keys of row b are its own tokens `b·n + j`, j ≤ i): it reads q, k and v
 * from `qkv`, not from the cache. Writes (overwrites) all of `dqkv`: dq, dk and dv.
 *
 * Two dispatches, no atomics: dq per query looping over its keys, then dk and dv per key looping
 * over its queries. Softmax weights are recomputed from the forward's `lse`.
 *
 * @param gpu the runtime
 * @param a the forward's `qkv (T, 3, H, D)` (after rotary), `out (T, H, D)` and `lse (B, H, n)`,
 *   the output gradient `dOut (T, H, D)`, the result `dqkv (T, 3, H, D)`, and sizes. `kv` and
 *   `maxLen` are accepted for symmetry with the forward but not read.
 * @returns the dispatches, in order
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { attention, attentionBackward, kvWrite } from "./attention.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 4, 2, 8, 4];
 * const T = B * n;
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(T * 3 * H * D).fill(0.5));
 * const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * maxLen * D * 4);
 * const start = gpu.upload("start (B)", new Uint32Array([0]));
 * const out = gpu.buffer("out (T, H, D)", T * H * D * 4);
 * const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
 * const dOut = gpu.upload("dOut (T, H, D)", new Float32Array(T * H * D).fill(1));
 * const dqkv = gpu.buffer("dqkv (T, 3, H, D)", T * 3 * H * D * 4);
 * const sizes = { B, n, H, D, maxLen };
 * gpu.run("train step", [
 *   kvWrite(gpu, { qkv, kv, start, ...sizes }),
 *   attention(gpu, { qkv, kv, start, out, lse, ...sizes }),
 *   ...attentionBackward(gpu, { qkv, out, dOut, lse, dqkv, ...sizes }),
 * ]);
 * ```
 */
export function attentionBackward(
  gpu: Gpu,
  a: {
    qkv: GPUBuffer;
    out: GPUBuffer;
    dOut: GPUBuffer;
    lse: GPUBuffer;
    dqkv: GPUBuffer;
    B: number;
    n: number;
    H: number;
    D: number;
    kv?: GPUBuffer;
    maxLen?: number;
  },
): Dispatch[] {
  const { B, n, H, D } = a;
  const tiles = Math.ceil(n / TILE);
  const params = [B, n, H, tiles, f32bits(1 / Math.sqrt(D))];
  const buffers = [a.qkv, a.out, a.dOut, a.lse, a.dqkv];
  return [
    gpu.kernel({
      label: "attentionBackward dq",
      code: attentionBackwardQCode(D),
      buffers,
      params,
      workgroups: B * H * tiles,
    }),
    gpu.kernel({
      label: "attentionBackward dk dv",
      code: attentionBackwardKVCode(D),
      buffers,
      params,
      workgroups: B * H * tiles,
    }),
  ];
}
