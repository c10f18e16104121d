/**
 * The forward of causal attention over a per-row KV cache: {@link kvWrite} and {@link attention}
 * with its two variants, `"tiled"` and `"split"` (layouts and semantics: kernels/attention.ts).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { headElem, headVectors, NEG_MAX, softwarePer, TILE, tileRows } from "./attention_head.ts";
import { ROWS_TEXTURE_STORE, scratchTexture, textureFits } from "./texture_scratch.ts";
import { unrollLoops } from "./unroll.ts";

/**
 * kvWrite, one invocation per copied element: a scalar f32 for any D, or a vec4 when D % 4 = 0
 * (a quarter of the invocations and index computations, and on software adapters a quarter of
 * the per-lane load and store loops). With `"texture"` (vec4 only) the destination is the KV
 * cache's texture copy `kvT (2·B·H layers, maxLen rows, D/4 texels)` of
 * kernels/attention_decode.ts instead of the storage cache: the same invocations and indices.
 *
 * @param elem the copied word
 * @param dest the storage cache or its texture copy
 * @returns the WGSL
 */
export function kvWriteCode(
  elem: "f32" | "vec4f",
  dest: "storage" | "texture" = "storage",
): string {
  const tex = dest === "texture";
  return /* wgsl */ `
struct Params {
  B: u32, n: u32, H: u32,
  Dw: u32,     // words (elem) per head vector: D, or D / 4 as vec4
  maxLen: u32,
  total: u32,  // words to copy: B·n · 2 · H · Dw
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;      // (T, 3, H, D)
@group(0) @binding(2) ${
    tex
      ? "var kvT: texture_storage_2d_array<rgba32float, write>; // (2·B·H, maxLen, D/4)"
      : `var<storage, read_write> kv: array<${elem}>; // (2, B, H, maxLen, D)`
  }
@group(0) @binding(3) var<storage, read> start: array<u32>;    // (B)

// One invocation per (token t, s ∈ {k, v}, head h, word d < Dw).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let id = (wg.x + wg.y * nw.x) * 64u + li;
  if (id >= params.total) { return; }
  let d = id % params.Dw;
  var r = id / params.Dw;
  let h = r % params.H;
  r = r / params.H;
  let s = r % 2u;
  let t = r / 2u;
  let b = t / params.n;
  let pos = start[b] + t % params.n;
  if (pos >= params.maxLen) { return; } // no slot: the cache keeps positions < maxLen only
  let word = qkv[((t * 3u + 1u + s) * params.H + h) * params.Dw + d];
  ${
    tex
      ? "textureStore(kvT, vec2u(d, pos), (s * params.B + b) * params.H + h, word);"
      : "kv[(((s * params.B + b) * params.H + h) * params.maxLen + pos) * params.Dw + d] = word;"
  }
}`;
}

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
    code: kvWriteCode(vec ? "vec4f" : "f32"),
    params: { B, n, H, Dw, maxLen, total },
    buffers: { qkv: a.qkv, kv: a.kv, start: a.start },
    workgroups: Math.ceil(total / 64),
  });
}

// ---------------------------------------------------------------------------------------------
// attention forward

// Queries per invocation of the tiled forward on software adapters ({@link attention}'s `per`):
// softwarePer(D) (attention_head.ts). Each key and value an invocation loads then serves that
// many queries. On lavapipe every storage load is a per-lane loop (~5–7 ns a word), and one query
// per invocation spent its time loading keys and values.

/**
 * On hardware adapters: one query per invocation, the shared-memory key tiles of
 * {@link attentionTiledCode} (coalesced loads, 64 threads a workgroup); not measured against
 * PER > 1 on a GPU yet.
 */
const HARDWARE_PER = 1;

/** Where a forward kernel reads keys and values (see {@link forwardBindings}). */
type KeySource = "storage" | "qkvTexture" | "kvTexture";

/**
 * Params and bindings of the forward variants. Keys and values come from the cache `kv`
 * (`"storage"`), from `qkvT`, a texture copy of qkv `(T rows, 3·H·D/4 texels)` (`"qkvTexture"`:
 * the training texture variant of {@link attentionTiledPerCode}), or from `kvT`, the KV cache's
 * texture copy `(2·B·H layers, maxLen rows, D/4 texels)` (`"kvTexture"`: the decode attention of
 * kernels/attention_decode.ts).
 */
function forwardBindings(D: number, keySource: KeySource = "storage"): string {
  const elem = headElem(D);
  const keys = keySource === "qkvTexture"
    ? "var qkvT: texture_2d<f32>;                                // (T, 3·H·D/4) texels"
    : keySource === "kvTexture"
    ? "var kvT: texture_2d_array<f32>;                           // (2·B·H, maxLen, D/4) texels"
    : `var<storage, read> kv: array<${elem}>;       // (2, B, H, maxLen, D)`;
  return /* wgsl */ `
struct Params {
  B: u32, n: u32, H: u32, maxLen: u32,
  scale: f32,  // dimHead^-0.5
  tiles: u32,  // workgroups per (row, head)
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;      // (T, 3, H, D)
@group(0) @binding(2) ${keys}
@group(0) @binding(3) var<storage, read> start: array<u32>;        // (B)
@group(0) @binding(4) var<storage, read_write> out: array<${elem}>; // (T, H, D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;    // (B, H, n)
${headVectors(D, keySource === "storage" ? ["qkv", "kv"] : ["qkv"], ["out"])}
const NEG_MAX: f32 = ${NEG_MAX};`;
}

/**
 * Tiled forward: a workgroup takes TILE consecutive queries of one (row, head), one query per
 * thread, and streams the keys they need through shared memory KT at a time. Each thread keeps
 * an online softmax (running max m, sum l, weighted values a), rescaling only when m grows.
 * (The key loop is not unrolled: lavapipe's JIT took tens of seconds on fully unrolled tiles.)
 */
function attentionTiledCode(D: number): string {
  return unrollLoops(/* wgsl */ `${forwardBindings(D)}
const TILE: u32 = ${TILE}u; // queries per workgroup, one per thread
const KT: u32 = ${tileRows(D)}u;  // keys per shared-memory tile
var<workgroup> kS: array<vec4f, KT * D4>; // (KT, D4) key tile
var<workgroup> vS: array<vec4f, KT * D4>; // (KT, D4) value tile

@compute @workgroup_size(TILE)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; } // whole workgroup: grid overshoot
  let scale = params.scale;
  let i0 = tile * TILE;
  let lastQ = min(i0 + TILE, params.n) - 1u;
  let st = start[b];
  let keyEnd = min(st + lastQ, params.maxLen - 1u); // last key any query of the tile sees
  let iq = min(i0 + li, lastQ); // threads past n shadow the last query and write nothing
  let limit = min(st + iq, params.maxLen - 1u); // this query's last key (inclusive)
  let t = b * params.n + iq;
  let qRow = t * 3u * params.H + h;
  var q: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */ q[c] = ld_qkv(qRow, c); }
  var m = NEG_MAX; // running max
  var l = 0.0;     // running sum of exp(s - m)
  var a: array<vec4f, D4>; // running sum of exp(s - m) · v
  let kRow = (b * params.H + h) * params.maxLen;
  let vRow = kRow + params.B * params.H * params.maxLen;
  for (var j0 = 0u; j0 <= keyEnd; j0 += KT) {
    for (var e = li; e < KT * D4; e += TILE) {
      let j = j0 + e / D4;
      var kx = vec4f();
      var vx = vec4f();
      if (j <= keyEnd) {
        kx = ld_kv(kRow + j, e % D4);
        vx = ld_kv(vRow + j, e % D4);
      }
      kS[e] = kx;
      vS[e] = vx;
    }
    workgroupBarrier();
    // this query's keys in the tile (none for threads past n: they only help load)
    let kEnd = select(0u, min(KT, limit + 1u - min(j0, limit + 1u)), i0 + li < params.n);
    for (var k = 0u; k < kEnd; k++) {
      var s = dot(q[0], kS[k * D4]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(q[c], kS[k * D4 + c]); }
      s *= scale;
      if (s > m) { // new running max: rescale what was summed so far
        let alpha = exp(m - s);
        l = l * alpha;
        for (var c = 0u; c < D4; c++) { /* unroll */ a[c] = a[c] * alpha; }
        m = s;
      }
      let pk = exp(s - m);
      l = l + pk;
      for (var c = 0u; c < D4; c++) { /* unroll */ a[c] = a[c] + pk * vS[k * D4 + c]; }
    }
    workgroupBarrier();
  }
  if (i0 + li < params.n) {
    let inv = 1.0 / l;
    for (var c = 0u; c < D4; c++) { /* unroll */ st_out(t * params.H + h, c, a[c] * inv); }
    lse[(b * params.H + h) * params.n + iq] = m + log(l);
  }
}`);
}

/** The same WGSL once per owned query r = 0..per−1, with `$r` replaced. */
function perOwned(code: string, per: number): string {
  return Array.from({ length: per }, (_, r) => code.replaceAll("$r", String(r))).join("\n");
}

/**
 * Tiled forward with PER > 1 queries per invocation (software adapters): a workgroup takes
 * TILE consecutive queries of one (row, head), TILE / PER invocations of PER consecutive queries
 * each. An invocation walks keys 0..(its last query's last key) once, straight from storage
 * (or, with `tex`, from the texture copy of qkv: {@link trainingAttention}),
 * and each key and value it loads serves all its PER queries (a query skips keys past its own
 * last one). No shared memory or barriers: on lavapipe every storage load is a per-lane loop, so
 * what pays is the reuse of each loaded word across queries. Each query keeps its own online
 * softmax and sees its keys in the same order with the same arithmetic as in
 * {@link attentionTiledCode}: the same bits.
 */
function attentionTiledPerCode(D: number, per: number, tex = false): string {
  // key j and value j of (b, h): from the cache, or (start = 0) from qkv's texture copy, where
  // token b·n + j is row b·n + j and its k, v of head h are texels (H + h)·D4.. and (2H + h)·D4..
  const keyRows = tex
    ? `let kX = (params.H + h) * D4; // first texel of k of head h in a token's row
  let vX = kX + params.H * D4;    // and of v
  let y0 = b * params.n;          // the row of token (b, 0)`
    : `let kRow = (b * params.H + h) * params.maxLen;
  let vRow = kRow + params.B * params.H * params.maxLen;`;
  const ldK = tex ? "textureLoad(qkvT, vec2u(kX + c, y0 + j), 0)" : "ld_kv(kRow + j, c)";
  const ldV = tex ? "textureLoad(qkvT, vec2u(vX + c, y0 + j), 0)" : "ld_kv(vRow + j, c)";
  return unrollLoops(/* wgsl */ `${forwardBindings(D, tex ? "qkvTexture" : "storage")}
const TILE: u32 = ${TILE}u; // queries per workgroup
const PER: u32 = ${per}u;   // queries per invocation

@compute @workgroup_size(${TILE / per})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; } // whole workgroup: grid overshoot
  let first = tile * TILE + li * PER; // this invocation's first query
  if (first >= params.n) { return; }  // no query of its own: nothing to compute or help load
  let scale = params.scale;
  let lastQ = params.n - 1u;
  let st = start[b];
  ${
    perOwned(
      `
  let i$r = min(first + $ru, lastQ); // queries past n shadow the last one and write nothing
  let lim$r = min(st + i$r, params.maxLen - 1u); // this query's last key (inclusive)
  let t$r = b * params.n + i$r;
  var q$r: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */ q$r[c] = ld_qkv(t$r * 3u * params.H + h, c); }
  var m$r = NEG_MAX; // running max
  var l$r = 0.0;     // running sum of exp(s - m)
  var a$r: array<vec4f, D4>; // running sum of exp(s - m) · v`,
      per,
    )
  }
  ${keyRows}
  for (var j = 0u; j <= lim${per - 1}; j++) {
    var k: array<vec4f, D4>;
    var v: array<vec4f, D4>;
    for (var c = 0u; c < D4; c++) { /* unroll */ k[c] = ${ldK}; }
    for (var c = 0u; c < D4; c++) { /* unroll */ v[c] = ${ldV}; }
    ${
    perOwned(
      `
    if (j <= lim$r) { // causal: query $r's keys only
      var s = dot(q$r[0], k[0]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(q$r[c], k[c]); }
      s *= scale;
      if (s > m$r) { // new running max: rescale what was summed so far
        let alpha = exp(m$r - s);
        l$r = l$r * alpha;
        for (var c = 0u; c < D4; c++) { /* unroll */ a$r[c] = a$r[c] * alpha; }
        m$r = s;
      }
      let pk = exp(s - m$r);
      l$r = l$r + pk;
      for (var c = 0u; c < D4; c++) { /* unroll */ a$r[c] = a$r[c] + pk * v[c]; }
    }`,
      per,
    )
  }
  }
  ${
    perOwned(
      `
  if (first + $ru < params.n) {
    let inv$r = 1.0 / l$r;
    for (var c = 0u; c < D4; c++) { /* unroll */ st_out(t$r * params.H + h, c, a$r[c] * inv$r); }
    lse[(b * params.H + h) * params.n + i$r] = m$r + log(l$r);
  }`,
      per,
    )
  }
}`);
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
export function splitShape(gpu: Gpu, D: number, n: number): { S: number; QC: number } {
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
 *
 * Keys and values come from the storage cache `kv (2, B, H, maxLen, D)` or, with `"kvTexture"`,
 * from its texture copy (kernels/attention_decode.ts): the same lanes, order and arithmetic, so
 * both give the same bits.
 *
 * @param D head size
 * @param S threads per workgroup
 * @param QC queries per workgroup
 * @param keySource where keys and values are read
 * @returns the WGSL, unrolled
 */
export function attentionSplitCode(
  D: number,
  S: number,
  QC: number,
  keySource: "storage" | "kvTexture" = "storage",
): string {
  const tex = keySource === "kvTexture";
  // where key j and value j of the workgroup's (row, head) are, and how vec4 c of each is read
  const locate = tex
    ? `let kLayer = b * params.H + h;                  // k of (b, h)
  let vLayer = kLayer + params.B * params.H;      // v of (b, h)`
    : `let kRow = (b * params.H + h) * params.maxLen;
  let vRow = kRow + params.B * params.H * params.maxLen;`;
  const loadK = tex ? "textureLoad(kvT, vec2u(c, j), kLayer, 0)" : "ld_kv(kRow + j, c)";
  const loadV = tex ? "textureLoad(kvT, vec2u(c, j), vLayer, 0)" : "ld_kv(vRow + j, c)";
  return unrollLoops(/* wgsl */ `${forwardBindings(D, keySource)}
const S: u32 = ${S}u;   // threads per workgroup, striding over keys
const QC: u32 = ${QC}u; // queries per workgroup
var<workgroup> mS: array<f32, QC * S>;        // (QC, S) running max per query and thread
var<workgroup> lS: array<f32, QC * S>;        // (QC, S) running sum
var<workgroup> aS: array<vec4f, QC * S * D4>; // (QC, S, D4) running weighted values
var<workgroup> wM: array<f32, QC>;            // (QC) combined max
var<workgroup> wL: array<f32, QC>;            // (QC) combined sum

@compute @workgroup_size(S)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, chunk of QC queries)
  let chunk = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; } // whole workgroup: grid overshoot
  let scale = params.scale;
  let i0 = chunk * QC;
  let st = start[b];
  // per query u of the chunk: its keys [0, ends[u]) (0 keys: past n), its q (row clamped in range)
  // and its online softmax state m, l, a
  var ends: array<u32, QC>;
  var q: array<vec4f, QC * D4>;
  var m: array<f32, QC>;
  var l: array<f32, QC>;
  var a: array<vec4f, QC * D4>;
  var kEnd = 0u; // keys any query of the chunk sees
  for (var u = 0u; u < QC; u++) { /* unroll */
    ends[u] = select(0u, min(st + i0 + u, params.maxLen - 1u) + 1u, i0 + u < params.n);
    let qRow = (b * params.n + min(i0 + u, params.n - 1u)) * 3u * params.H + h;
    for (var c = 0u; c < D4; c++) { /* unroll */ q[u * D4 + c] = ld_qkv(qRow, c); }
    m[u] = NEG_MAX;
    kEnd = max(kEnd, ends[u]);
  }
  ${locate}
  for (var j = li; j < kEnd; j += S) {
    var kj: array<vec4f, D4>; // key j
    var vj: array<vec4f, D4>; // value j
    for (var c = 0u; c < D4; c++) { /* unroll */ kj[c] = ${loadK}; }
    for (var c = 0u; c < D4; c++) { /* unroll */ vj[c] = ${loadV}; }
    for (var u = 0u; u < QC; u++) { /* unroll */
      if (j < ends[u]) {
        var s = dot(q[u * D4], kj[0]);
        for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(q[u * D4 + c], kj[c]); }
        s *= scale;
        if (s > m[u]) { // new running max: rescale what was summed so far
          let alpha = exp(m[u] - s);
          l[u] = l[u] * alpha;
          for (var c = 0u; c < D4; c++) { /* unroll */ a[u * D4 + c] = a[u * D4 + c] * alpha; }
          m[u] = s;
        }
        let pj = exp(s - m[u]);
        l[u] = l[u] + pj;
        for (var c = 0u; c < D4; c++) { /* unroll */ a[u * D4 + c] = a[u * D4 + c] + pj * vj[c]; }
      }
    }
  }
  for (var u = 0u; u < QC; u++) { /* unroll */
    mS[u * S + li] = m[u];
    lS[u * S + li] = l[u];
    for (var c = 0u; c < D4; c++) { /* unroll */ aS[(u * S + li) * D4 + c] = a[u * D4 + c]; }
  }
  workgroupBarrier();
  // Threads that saw no key hold m = −FLT_MAX, l = 0: their weight exp(−FLT_MAX − M) is 0.
  for (var u = li; u < QC; u += S) {
    var M = NEG_MAX;
    for (var s = 0u; s < S; s++) { M = max(M, mS[u * S + s]); }
    var L = 0.0;
    for (var s = 0u; s < S; s++) { L = L + exp(mS[u * S + s] - M) * lS[u * S + s]; }
    wM[u] = M;
    wL[u] = L;
    if (i0 + u < params.n) { lse[(b * params.H + h) * params.n + i0 + u] = M + log(L); }
  }
  workgroupBarrier();
  for (var e = li; e < QC * D4; e += S) {
    let u = e / D4;
    let c = e % D4;
    if (i0 + u < params.n) {
      let M = wM[u];
      let inv = 1.0 / wL[u];
      var acc = vec4f();
      for (var s = 0u; s < S; s++) {
        acc = acc + exp(mS[u * S + s] - M) * aS[(u * S + s) * D4 + c];
      }
      st_out((b * params.n + i0 + u) * params.H + h, c, acc * inv);
    }
  }
}`);
}

/** Which forward kernel {@link attention} uses. */
export type AttentionVariant = "tiled" | "split";

/**
 * Causal attention of this forward's queries over the KV cache: query `(b, i)` attends cache keys
 * `0..start[b]+i` (inclusive; clamped to maxLen − 1) of its row and head. q comes from `qkv`,
 * k and v from `kv` ({@link kvWrite} must have run first, in the same or an earlier pass).
 * Writes the merged-head output and the logsumexp of the scaled scores (kept for the backward).
 *
 * Two kernels: `"tiled"` (a workgroup per 64 queries, for training and prefill: with `per` = 1
 * one query per thread sharing key tiles in shared memory, with `per` > 1 that many queries per
 * thread, each key loaded once for all of them; the same bits either way) and `"split"` (a workgroup per up to 8 queries of a row and head, keys
 * split over its threads and each key loaded once for all those queries, for decode,
 * verification and short prompts). The default picks `"split"` when n < 64: a tiled workgroup
 * then has idle threads, and small workgroups spread better over the GPU. The split kernel gives
 * a query the same bits whatever n is, so a verification forward of γ + 1 tokens reproduces the
 * one-token decode steps exactly.
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)`, `kv (2, B, H, maxLen, D)`, `start (B)` u32, outputs
 *   `out (T, H, D)` and `lse (B, H, n)`, sizes, optionally the variant, and `per`: queries per
 *   invocation of the tiled variant, a power of two up to 64 (default 8 on software adapters, 1
 *   on hardware ones; the split variant ignores it)
 * @returns the dispatch
 * @throws Error when `per` is not a power of two from 1 to 64
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
    per?: number;
  },
): Dispatch {
  const { B, n, H, D, maxLen } = a;
  const variant = a.variant ?? (n < TILE ? "split" : "tiled");
  const tiled = variant === "tiled";
  const per = a.per ?? (gpu.isSoftware ? softwarePer(D) : HARDWARE_PER);
  if (![1, 2, 4, 8, 16, 32, 64].includes(per)) {
    throw new Error(`specdec: attention: per = ${per} must be a power of two from 1 to 64`);
  }
  const { S, QC } = splitShape(gpu, D, n);
  const tiles = Math.ceil(n / (tiled ? TILE : QC));
  const code = !tiled
    ? attentionSplitCode(D, S, QC)
    : per === 1
    ? attentionTiledCode(D)
    : attentionTiledPerCode(D, per);
  return gpu.kernel({
    label: tiled && per > 1 ? `attention tiled per ${per}` : `attention ${variant}`,
    code,
    params: { B, n, H, maxLen, scale: 1 / Math.sqrt(D), tiles },
    buffers: { qkv: a.qkv, kv: a.kv, start: a.start, out: a.out, lse: a.lse },
    workgroups: B * H * tiles,
  });
}

/**
 * Copies `qkv (T, 3, H, D)` (D % 4 = 0) into the scratch texture slot `"qkv"`,
 * `(T rows, 3·H·D/4 texels)`: token t's q, k, v of head h at texels `(s·H + h)·D/4..` of row t.
 * The training attention kernels' texture variants read it.
 *
 * @param gpu the runtime
 * @param label the dispatch's label prefix
 * @param qkv the source
 * @param T tokens
 * @param H heads
 * @param D head size, a multiple of 4
 * @returns the texture and the dispatch that fills it
 */
export function qkvTexture(
  gpu: Gpu,
  label: string,
  qkv: GPUBuffer,
  T: number,
  H: number,
  D: number,
): { texture: GPUTexture; dispatch: Dispatch } {
  const texels = (3 * H * D) / 4;
  const texture = scratchTexture(gpu.device, "qkv", texels, T);
  const count = T * texels;
  const dispatch = gpu.kernel({
    label: `${label} store qkv`,
    code: ROWS_TEXTURE_STORE,
    params: { texels, count },
    buffers: { src: qkv },
    textures: { dst: texture },
    workgroups: Math.ceil(count / 64),
  });
  return { texture, dispatch };
}

/**
 * Whether the training kernels can read `qkv (T, 3, H, D)` (and `dOut (T, H, D)`) from
 * textures: D % 4 = 0 (whole texels per head vector) and the textures within the device's
 * maxTextureDimension2D.
 *
 * @param gpu the runtime
 * @param T tokens
 * @param H heads
 * @param D head size
 * @returns true when the texture variants apply
 */
export function trainingTexturesFit(gpu: Gpu, T: number, H: number, D: number): boolean {
  return D > 0 && D % 4 === 0 &&
    textureFits(gpu.device.limits.maxTextureDimension2D, T, (3 * H * D) / 4);
}

/**
 * The training forward's attention (**requires `start[b] = 0` for every row**, as
 * {@link "./attention_backward.ts" | attentionBackward}): {@link attention} with the default
 * variant, except that on software adapters the tiled kernel with `per` > 1 reads keys and
 * values from a texture copy of `qkv` ({@link qkvTexture}; on lavapipe a texel fetch is a
 * vectorised gather, a storage load a per-lane loop) instead of the cache `kv` (which holds the
 * same values at start 0, once {@link kvWrite} has run). Same arithmetic in the same order: the
 * same bits as the storage kernel.
 *
 * Measured (bench/profile_training.ts, lavapipe on 2 shared cores, load average 3–5, medians of
 * 5 alternated runs): tiny target, batch 4 × 513, 2 layers: the forward kernel 126 → 41 ms a
 * step (+ 7 ms for the qkv copies); attentionBackward dq 177 → 44 ms, dk dv 211 → 47 ms (+ 7 ms
 * qkv copies, 4 ms prep); whole step 1067 → 678 ms. Small target (4 layers): forward 592 → 174
 * ms, dq 722 → 186 ms, dk dv 857 → 200 ms, whole step 4508 → 3009 ms (3 runs).
 *
 * @param gpu the runtime
 * @param a as {@link attention} (without `variant`), and `texture`: force the texture path
 *   (true) or the storage one (false); default: software adapter, tiled, per > 1,
 *   {@link trainingTexturesFit}
 * @returns the dispatches, in order (the qkv store, then the attention; or the attention alone)
 * @throws Error when `texture` is true but the texture path does not apply
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { kvWrite } from "./attention.ts";
 * import { trainingAttention } from "./attention_forward.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 70, 2, 8, 70];
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(0.5));
 * const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * maxLen * D * 4);
 * const start = gpu.upload("start (B)", new Uint32Array([0]));
 * const out = gpu.buffer("out (T, H, D)", B * n * H * D * 4);
 * const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
 * const sizes = { B, n, H, D, maxLen };
 * gpu.run("attend", [
 *   kvWrite(gpu, { qkv, kv, start, ...sizes }),
 *   ...trainingAttention(gpu, { qkv, kv, start, out, lse, ...sizes }),
 * ]);
 * ```
 */
export function trainingAttention(
  gpu: Gpu,
  a: AttentionSizes & {
    qkv: GPUBuffer;
    kv: GPUBuffer;
    start: GPUBuffer;
    out: GPUBuffer;
    lse: GPUBuffer;
    per?: number;
    texture?: boolean;
  },
): Dispatch[] {
  const { B, n, H, D, maxLen } = a;
  const per = a.per ?? (gpu.isSoftware ? softwarePer(D) : HARDWARE_PER);
  const applies = n >= TILE && per > 1 && trainingTexturesFit(gpu, B * n, H, D);
  if (a.texture === true && !applies) {
    throw new Error(
      `specdec: trainingAttention: no texture path for B ${B}, n ${n}, H ${H}, D ${D}, per ` +
        `${per}: it needs n ≥ ${TILE} (the tiled kernel), per > 1, D % 4 = 0 and qkv within ` +
        `maxTextureDimension2D ${gpu.device.limits.maxTextureDimension2D} as a texture`,
    );
  }
  if (!(a.texture ?? (gpu.isSoftware && applies))) return [attention(gpu, { ...a, per })];
  if (![2, 4, 8, 16, 32, 64].includes(per)) {
    throw new Error(`specdec: attention: per = ${per} must be a power of two from 1 to 64`);
  }
  const store = qkvTexture(gpu, "attention", a.qkv, B * n, H, D);
  const tiles = Math.ceil(n / TILE);
  return [
    store.dispatch,
    gpu.kernel({
      label: `attention tiled per ${per} (texture)`,
      code: attentionTiledPerCode(D, per, true),
      params: { B, n, H, maxLen, scale: 1 / Math.sqrt(D), tiles },
      buffers: { qkv: a.qkv, start: a.start, out: a.out, lse: a.lse },
      textures: { qkvT: store.texture },
      workgroups: B * H * tiles,
    }),
  ];
}
