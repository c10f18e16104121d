/**
 * The backward of causal attention for training: {@link attentionBackward}, two dispatches (dq
 * per query, then dk and dv per key), no atomics (layouts and semantics: kernels/attention.ts).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { headElem, headVectors, TILE, tileRows } from "./attention_head.ts";
import { unrollLoops } from "./unroll.ts";

// Training only: start = 0, so the keys of row b are its own tokens b·n + j.
//
// With P = softmax(S), S = scale·q·kᵀ (causal), O = P·v and Δᵢ = dOᵢ·Oᵢ (= Σⱼ Pᵢⱼ dPᵢⱼ):
//   dPᵢⱼ = dOᵢ·vⱼ,  dSᵢⱼ = Pᵢⱼ (dPᵢⱼ − Δᵢ),
//   dqᵢ = scale Σ_{j≤i} dSᵢⱼ kⱼ,  dkⱼ = scale Σ_{i≥j} dSᵢⱼ qᵢ,  dvⱼ = Σ_{i≥j} Pᵢⱼ dOᵢ,
// with Pᵢⱼ recomputed from the forward's logsumexp: Pᵢⱼ = exp(Sᵢⱼ − lseᵢ).

/** Params and bindings of both backward kernels. */
function backwardBindings(D: number): string {
  const elem = headElem(D);
  return /* wgsl */ `
struct Params {
  B: u32, n: u32, H: u32,
  tiles: u32,  // workgroups per (row, head)
  scale: f32,  // dimHead^-0.5
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;       // (T, 3, H, D)
@group(0) @binding(2) var<storage, read> out: array<${elem}>;       // (T, H, D)
@group(0) @binding(3) var<storage, read> dout: array<${elem}>;      // (T, H, D)
@group(0) @binding(4) var<storage, read> lse: array<f32>;           // (B, H, n)
@group(0) @binding(5) var<storage, read_write> dqkv: array<${elem}>; // (T, 3, H, D)
${headVectors(D, ["qkv", "out", "dout"], ["dqkv"])}
const TILE: u32 = ${TILE}u; // queries (or keys) per workgroup, one per thread`;
}

/**
 * dq: a workgroup per 64 queries of one (row, head), keys j ≤ i streamed through shared memory.
 */
function attentionBackwardQCode(D: number): string {
  return unrollLoops(/* wgsl */ `${backwardBindings(D)}
const KT: u32 = ${tileRows(D)}u; // keys per shared-memory tile
var<workgroup> kS: array<vec4f, KT * D4>; // (KT, D4) key tile
var<workgroup> vS: array<vec4f, KT * D4>; // (KT, D4) value tile

@compute @workgroup_size(TILE)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; }
  let scale = params.scale;
  let i0 = tile * TILE;
  let lastQ = min(i0 + TILE, params.n) - 1u;
  let iq = min(i0 + li, lastQ); // threads past n shadow the last query and write nothing
  let t = b * params.n + iq;
  var q: array<vec4f, D4>;
  var g: array<vec4f, D4>; // dOut of this query
  for (var c = 0u; c < D4; c++) { /* unroll */ q[c] = ld_qkv(t * 3u * params.H + h, c); }
  for (var c = 0u; c < D4; c++) { /* unroll */ g[c] = ld_dout(t * params.H + h, c); }
  var delta = dot(g[0], ld_out(t * params.H + h, 0u)); // Δ = dOut · out
  for (var c = 1u; c < D4; c++) { /* unroll */ delta += dot(g[c], ld_out(t * params.H + h, c)); }
  let L = lse[(b * params.H + h) * params.n + iq];
  var dq: array<vec4f, D4>;
  for (var j0 = 0u; j0 <= lastQ; j0 += KT) {
    for (var e = li; e < KT * D4; e += TILE) {
      let j = j0 + e / D4;
      var kx = vec4f();
      var vx = vec4f();
      if (j <= lastQ) {
        let tj = b * params.n + j;
        kx = ld_qkv((tj * 3u + 1u) * params.H + h, e % D4);
        vx = ld_qkv((tj * 3u + 2u) * params.H + h, e % D4);
      }
      kS[e] = kx;
      vS[e] = vx;
    }
    workgroupBarrier();
    // this query's keys in the tile (none for threads past n: they only help load)
    let kEnd = select(0u, min(KT, iq + 1u - min(j0, iq + 1u)), i0 + li < params.n);
    for (var k = 0u; k < kEnd; k++) {
      var s = dot(q[0], kS[k * D4]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(q[c], kS[k * D4 + c]); }
      s *= scale;
      let pj = exp(s - L);
      var dp = dot(g[0], vS[k * D4]);
      for (var c = 1u; c < D4; c++) { /* unroll */ dp += dot(g[c], vS[k * D4 + c]); }
      let ds = pj * (dp - delta);
      for (var c = 0u; c < D4; c++) { /* unroll */ dq[c] = dq[c] + ds * kS[k * D4 + c]; }
    }
    workgroupBarrier();
  }
  if (i0 + li < params.n) {
    let qRow = t * 3u * params.H + h;
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv(qRow, c, dq[c] * scale); }
  }
}`);
}

/**
 * dk, dv: a workgroup per 64 keys of one (row, head), queries i ≥ j streamed through shared
 * memory.
 */
function attentionBackwardKVCode(D: number): string {
  return unrollLoops(/* wgsl */ `${backwardBindings(D)}
const QT: u32 = ${tileRows(D)}u; // queries per shared-memory tile
var<workgroup> qS: array<vec4f, QT * D4>; // (QT, D4) query tile
var<workgroup> gS: array<vec4f, QT * D4>; // (QT, D4) dOut tile
var<workgroup> lseS: array<f32, QT>;      // (QT) the queries' logsumexp
var<workgroup> deltaS: array<f32, QT>;    // (QT) the queries' Δ = dOut·out

@compute @workgroup_size(TILE)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; }
  let scale = params.scale;
  let j0 = tile * TILE;
  let jk = min(j0 + li, params.n - 1u); // threads past n shadow the last key and write nothing
  let tj = b * params.n + jk;
  var k: array<vec4f, D4>;
  var v: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */ k[c] = ld_qkv((tj * 3u + 1u) * params.H + h, c); }
  for (var c = 0u; c < D4; c++) { /* unroll */ v[c] = ld_qkv((tj * 3u + 2u) * params.H + h, c); }
  var dk: array<vec4f, D4>;
  var dv: array<vec4f, D4>;
  for (var i0 = j0; i0 < params.n; i0 += QT) {
    for (var e = li; e < QT * D4; e += TILE) {
      let i = i0 + e / D4;
      var qx = vec4f();
      var gx = vec4f();
      if (i < params.n) {
        let ti = b * params.n + i;
        qx = ld_qkv(ti * 3u * params.H + h, e % D4);
        gx = ld_dout(ti * params.H + h, e % D4);
      }
      qS[e] = qx;
      gS[e] = gx;
    }
    if (li < QT) {
      let i = i0 + li;
      var d = 0.0;
      var L = 0.0;
      if (i < params.n) {
        let row = (b * params.n + i) * params.H + h;
        d = dot(ld_dout(row, 0u), ld_out(row, 0u));
        for (var c = 1u; c < D4; c++) { /* unroll */ d += dot(ld_dout(row, c), ld_out(row, c)); }
        L = lse[(b * params.H + h) * params.n + i];
      }
      deltaS[li] = d;
      lseS[li] = L;
    }
    workgroupBarrier();
    // this key's queries in the tile: i0 + x ≥ jk and i0 + x < n (none for threads past n)
    let xBegin = min(jk - min(i0, jk), QT);
    let xEnd = select(0u, min(QT, params.n - i0), j0 + li < params.n);
    for (var x = xBegin; x < xEnd; x++) {
      var s = dot(k[0], qS[x * D4]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(k[c], qS[x * D4 + c]); }
      s *= scale;
      let pi = exp(s - lseS[x]);
      var dp = dot(v[0], gS[x * D4]);
      for (var c = 1u; c < D4; c++) { /* unroll */ dp += dot(v[c], gS[x * D4 + c]); }
      let ds = pi * (dp - deltaS[x]);
      for (var c = 0u; c < D4; c++) { /* unroll */ dv[c] = dv[c] + pi * gS[x * D4 + c]; }
      for (var c = 0u; c < D4; c++) { /* unroll */ dk[c] = dk[c] + ds * qS[x * D4 + c]; }
    }
    workgroupBarrier();
  }
  if (j0 + li < params.n) {
    let kRow = (tj * 3u + 1u) * params.H + h;
    let vRow = (tj * 3u + 2u) * params.H + h;
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv(kRow, c, dk[c] * scale); }
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv(vRow, c, dv[c]); }
  }
}`);
}

/**
 * The backward of {@link "./attention_forward.ts" | attention} for training. **Requires
 * `start[b] = 0` for every row** of the forward (so the keys of row b are its own tokens
 * `b·n + j`, j ≤ i): it reads q, k and v from `qkv`, not from the cache. Writes (overwrites) all of `dqkv`: dq, dk and dv.
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
  const params = { B, n, H, tiles, scale: 1 / Math.sqrt(D) };
  const buffers = { qkv: a.qkv, out: a.out, dout: a.dOut, lse: a.lse, dqkv: a.dqkv };
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
