/**
 * The backward of causal attention for training: {@link attentionBackward}, two dispatches (dq
 * per query, then dk and dv per key), no atomics (layouts and semantics: kernels/attention.ts).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { headElem, headVectors, softwarePer, TILE } from "./attention_head.ts";
import { scratchTexture } from "./texture_scratch.ts";
import { qkvTexture, trainingTexturesFit } from "./attention_forward.ts";
import { unrollLoops } from "./unroll.ts";

// Training only: start = 0, so the keys of row b are its own tokens b·n + j.
//
// With P = softmax(S), S = scale·q·kᵀ (causal), O = P·v and Δᵢ = dOᵢ·Oᵢ (= Σⱼ Pᵢⱼ dPᵢⱼ):
//   dPᵢⱼ = dOᵢ·vⱼ,  dSᵢⱼ = Pᵢⱼ (dPᵢⱼ − Δᵢ),
//   dqᵢ = scale Σ_{j≤i} dSᵢⱼ kⱼ,  dkⱼ = scale Σ_{i≥j} dSᵢⱼ qᵢ,  dvⱼ = Σ_{i≥j} Pᵢⱼ dOᵢ,
// with Pᵢⱼ recomputed from the forward's logsumexp: Pᵢⱼ = exp(Sᵢⱼ − lseᵢ).

// Queries (dq kernel) or keys (dk dv kernel) each invocation owns on software adapters:
// softwarePer(D) (attention_head.ts). Every key (query) the loop loads then serves that many
// queries (keys): on lavapipe one per invocation spent its time loading k and v (141 ms for dq at
// n = 513, H = 2, D = 32), 8 per invocation took 23 ms; 16 gained nothing more.

/**
 * On hardware adapters: one query (key) per invocation, 64 per workgroup, since a workgroup of
 * 8 invocations would leave most of a SIMD unit idle there (not measured on a GPU yet).
 */
const HARDWARE_PER = 1;

/**
 * Which loads a backward kernel's inner loop takes: `"storage"` (the buffers), or on software
 * adapters the texture variants: `"dq"` reads keys and values from qkvT, `"dkdv"` queries from
 * qkvT, dOut from doutT and (lse, Δ) from statT (see {@link attentionBackward}).
 */
type Loads = "storage" | "dq" | "dkdv";

/** Params and bindings of the backward kernels (each variant declares only what it reads). */
function backwardBindings(D: number, per: number, loads: Loads = "storage"): string {
  const elem = headElem(D);
  const perQuery = loads === "dkdv" ? "" : /* wgsl */ `
@group(0) @binding(2) var<storage, read> out: array<${elem}>;       // (T, H, D)
@group(0) @binding(3) var<storage, read> dout: array<${elem}>;      // (T, H, D)
@group(0) @binding(4) var<storage, read> lse: array<f32>;           // (B, H, n)`;
  const textures = loads === "storage"
    ? ""
    : loads === "dq"
    ? "@group(0) @binding(6) var qkvT: texture_2d<f32>;  // (T, 3·H·D/4) texels"
    : /* wgsl */ `@group(0) @binding(6) var qkvT: texture_2d<f32>;  // (T, 3·H·D/4) texels
@group(0) @binding(7) var doutT: texture_2d<f32>; // (T, H·D/4) texels
@group(0) @binding(8) var statT: texture_2d<f32>; // (T, H) texels (lse, Δ, 0, 0)`;
  return /* wgsl */ `
struct Params {
  B: u32, n: u32, H: u32,
  tiles: u32,  // workgroups per (row, head)
  scale: f32,  // dimHead^-0.5
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<${elem}>;       // (T, 3, H, D)${perQuery}
@group(0) @binding(5) var<storage, read_write> dqkv: array<${elem}>; // (T, 3, H, D)
${textures}
${headVectors(D, loads === "dkdv" ? ["qkv"] : ["qkv", "out", "dout"], ["dqkv"])}
const TILE: u32 = ${TILE}u; // queries (or keys) per workgroup
const PER: u32 = ${per}u;   // queries (or keys) per invocation`;
}

/** The same WGSL once per owned query (key) r = 0..PER−1, with `$r` replaced. */
function perOwned(code: string, per: number): string {
  return Array.from({ length: per }, (_, r) => code.replaceAll("$r", String(r))).join("\n");
}

/**
 * dq: a workgroup per TILE queries of one (row, head), PER queries per invocation; each
 * invocation walks the keys j = 0..(its last query) once, each key serving its PER queries
 * (j ≤ i masked), in increasing j.
 */
function attentionBackwardQCode(D: number, per: number, tex = false): string {
  // key j and value j of (b, h): head vectors of qkv, or texels (H + h)·D4.. and (2H + h)·D4..
  // of row b·n + j of its texture copy
  const ldK = tex ? "textureLoad(qkvT, vec2u(kX + c, y0 + j), 0)" : "ld_qkv(kRow, c)";
  const ldV = tex
    ? "textureLoad(qkvT, vec2u(kX + params.H * D4 + c, y0 + j), 0)"
    : "ld_qkv(kRow + params.H, c)";
  return unrollLoops(/* wgsl */ `${backwardBindings(D, per, tex ? "dq" : "storage")}
@compute @workgroup_size(${TILE / per})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; }
  let scale = params.scale;
  let first = tile * TILE + li * PER; // this invocation's first query
  let lastQ = params.n - 1u;
  ${
    perOwned(
      `
  let i$r = min(first + $ru, lastQ); // queries past n shadow the last one and write nothing
  let t$r = b * params.n + i$r;
  var q$r: array<vec4f, D4>;
  var g$r: array<vec4f, D4>; // dOut of this query
  for (var c = 0u; c < D4; c++) { /* unroll */ q$r[c] = ld_qkv(t$r * 3u * params.H + h, c); }
  for (var c = 0u; c < D4; c++) { /* unroll */ g$r[c] = ld_dout(t$r * params.H + h, c); }
  var delta$r = dot(g$r[0], ld_out(t$r * params.H + h, 0u)); // Δ = dOut · out
  for (var c = 1u; c < D4; c++) { /* unroll */ delta$r += dot(g$r[c], ld_out(t$r * params.H + h, c)); }
  let L$r = lse[(b * params.H + h) * params.n + i$r];
  var dq$r: array<vec4f, D4>;`,
      per,
    )
  }
  let jEnd = min(first + PER - 1u, lastQ);
  ${
    tex
      ? `let kX = (params.H + h) * D4; // first texel of k of head h in a token's row
  let y0 = b * params.n;          // the row of token (b, 0)`
      : "let k0 = (b * params.n * 3u + 1u) * params.H + h; // key 0 of (b, h)"
  }
  for (var j = 0u; j <= jEnd; j++) {
    var k: array<vec4f, D4>;
    var v: array<vec4f, D4>;
    ${tex ? "" : "let kRow = k0 + j * 3u * params.H;"}
    for (var c = 0u; c < D4; c++) { /* unroll */ k[c] = ${ldK}; }
    for (var c = 0u; c < D4; c++) { /* unroll */ v[c] = ${ldV}; }
    ${
    perOwned(
      `{
      var s = dot(q$r[0], k[0]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(q$r[c], k[c]); }
      s *= scale;
      var dp = dot(g$r[0], v[0]);
      for (var c = 1u; c < D4; c++) { /* unroll */ dp += dot(g$r[c], v[c]); }
      let ds = select(0.0, exp(s - L$r) * (dp - delta$r), j <= i$r); // causal
      for (var c = 0u; c < D4; c++) { /* unroll */ dq$r[c] = dq$r[c] + ds * k[c]; }
    }`,
      per,
    )
  }
  }
  ${
    perOwned(
      `
  if (first + $ru < params.n) {
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv(t$r * 3u * params.H + h, c, dq$r[c] * scale); }
  }`,
      per,
    )
  }
}`);
}

/**
 * dk, dv: a workgroup per TILE keys of one (row, head), PER keys per invocation; each invocation
 * walks the queries i = (its first key)..n−1 once, each query serving its PER keys (i ≥ j
 * masked), in increasing i.
 */
function attentionBackwardKVCode(D: number, per: number, tex = false): string {
  // query i of (b, h), its dOut, Δ and lse: from the buffers, or from the textures (row b·n + i)
  const loads = tex
    ? `let y = b * params.n + i;
    for (var c = 0u; c < D4; c++) { /* unroll */ q[c] = textureLoad(qkvT, vec2u(h * D4 + c, y), 0); }
    for (var c = 0u; c < D4; c++) { /* unroll */ g[c] = textureLoad(doutT, vec2u(h * D4 + c, y), 0); }
    let stat = textureLoad(statT, vec2u(h, y), 0); // (lse, Δ) of the query
    let delta = stat.y;
    let L = stat.x;`
    : `let row = (b * params.n + i) * params.H + h;
    for (var c = 0u; c < D4; c++) { /* unroll */ q[c] = ld_qkv((b * params.n + i) * 3u * params.H + h, c); }
    for (var c = 0u; c < D4; c++) { /* unroll */ g[c] = ld_dout(row, c); }
    var delta = dot(g[0], ld_out(row, 0u)); // Δ = dOut · out
    for (var c = 1u; c < D4; c++) { /* unroll */ delta += dot(g[c], ld_out(row, c)); }
    let L = lse[(b * params.H + h) * params.n + i];`;
  return unrollLoops(/* wgsl */ `${backwardBindings(D, per, tex ? "dkdv" : "storage")}
@compute @workgroup_size(${TILE / per})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * nw.x; // (b, h, tile)
  let tile = w % params.tiles;
  let h = (w / params.tiles) % params.H;
  let b = w / (params.tiles * params.H);
  if (b >= params.B) { return; }
  let scale = params.scale;
  let first = tile * TILE + li * PER; // this invocation's first key
  let lastK = params.n - 1u;
  ${
    perOwned(
      `
  let j$r = min(first + $ru, lastK); // keys past n shadow the last one and write nothing
  let t$r = b * params.n + j$r;
  var k$r: array<vec4f, D4>;
  var v$r: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */ k$r[c] = ld_qkv((t$r * 3u + 1u) * params.H + h, c); }
  for (var c = 0u; c < D4; c++) { /* unroll */ v$r[c] = ld_qkv((t$r * 3u + 2u) * params.H + h, c); }
  var dk$r: array<vec4f, D4>;
  var dv$r: array<vec4f, D4>;`,
      per,
    )
  }
  for (var i = min(first, lastK); i < params.n; i++) {
    var q: array<vec4f, D4>;
    var g: array<vec4f, D4>;
    ${loads}
    ${
    perOwned(
      `{
      var s = dot(k$r[0], q[0]);
      for (var c = 1u; c < D4; c++) { /* unroll */ s += dot(k$r[c], q[c]); }
      s *= scale;
      let p = select(0.0, exp(s - L), i >= j$r); // causal
      var dp = dot(v$r[0], g[0]);
      for (var c = 1u; c < D4; c++) { /* unroll */ dp += dot(v$r[c], g[c]); }
      let ds = p * (dp - delta);
      for (var c = 0u; c < D4; c++) { /* unroll */ dv$r[c] = dv$r[c] + p * g[c]; }
      for (var c = 0u; c < D4; c++) { /* unroll */ dk$r[c] = dk$r[c] + ds * q[c]; }
    }`,
      per,
    )
  }
  }
  ${
    perOwned(
      `
  if (first + $ru < params.n) {
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv((t$r * 3u + 1u) * params.H + h, c, dk$r[c] * scale); }
    for (var c = 0u; c < D4; c++) { /* unroll */ st_dqkv((t$r * 3u + 2u) * params.H + h, c, dv$r[c]); }
  }`,
      per,
    )
  }
}`);
}

/**
 * The texture variant's preparation, one invocation per (token t, head h): copies dOut of the
 * query into doutT `(T, H·D/4 texels)` and stores its lse and Δ = dOut · out (the storage dk dv
 * kernel's expression, word for word: the same bits) into statT `(T, H texels)`, so the dk dv
 * loop loads 2·D/4 + 1 texels per query instead of 3·D/4 vec4 and a word from storage.
 */
function backwardPrepCode(D: number): string {
  return unrollLoops(/* wgsl */ `
struct Params {
  n: u32, H: u32,
  total: u32, // T · H
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> out: array<vec4f>;  // (T, H, D)
@group(0) @binding(2) var<storage, read> dout: array<vec4f>; // (T, H, D)
@group(0) @binding(3) var<storage, read> lse: array<f32>;    // (B, H, n)
@group(0) @binding(4) var doutT: texture_storage_2d<rgba32float, write>; // (T, H·D/4) texels
@group(0) @binding(5) var statT: texture_storage_2d<rgba32float, write>; // (T, H) texels
${headVectors(D, ["out", "dout"], [])}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let id = (wg.x + wg.y * nw.x) * 64u + li;
  if (id >= params.total) { return; }
  let h = id % params.H;
  let t = id / params.H;
  let row = t * params.H + h;
  var g: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */
    g[c] = ld_dout(row, c);
    textureStore(doutT, vec2u(h * D4 + c, t), g[c]);
  }
  var delta = dot(g[0], ld_out(row, 0u)); // Δ = dOut · out
  for (var c = 1u; c < D4; c++) { /* unroll */ delta += dot(g[c], ld_out(row, c)); }
  let b = t / params.n;
  let L = lse[(b * params.H + h) * params.n + t % params.n];
  textureStore(statT, vec2u(h, t), vec4f(L, delta, 0.0, 0.0));
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
 * On software adapters (lavapipe: a storage load is a per-lane loop, a texel fetch a vectorised
 * gather) the loops read from scratch textures instead, filled by two more dispatches first: qkv
 * `(T, 3·H·D/4 texels)` (keys and values of the dq loop, queries of the dk dv loop), and dOut
 * `(T, H·D/4 texels)` with each query's (lse, Δ) `(T, H texels)` for the dk dv loop. Same
 * arithmetic in the same order: the same bits as the storage kernels.
 *
 * @param gpu the runtime
 * @param a the forward's `qkv (T, 3, H, D)` (after rotary), `out (T, H, D)` and `lse (B, H, n)`,
 *   the output gradient `dOut (T, H, D)`, the result `dqkv (T, 3, H, D)`, and sizes. `kv` and
 *   `maxLen` are accepted for symmetry with the forward but not read. `per`: queries (keys) per
 *   invocation, a power of two up to 64 (default 8 on software adapters, 1 on hardware ones).
 *   `texture`: read the inner loops' operands from textures (true) or storage (false); default:
 *   on software adapters when D % 4 = 0 and the textures fit maxTextureDimension2D
 * @returns the dispatches, in order
 * @throws Error when `per` is not a power of two from 1 to 64, or `texture` is true where the
 *   texture variant does not apply
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
    per?: number;
    texture?: boolean;
  },
): Dispatch[] {
  const { B, n, H, D } = a;
  const per = a.per ?? (gpu.isSoftware ? softwarePer(D) : HARDWARE_PER);
  if (![1, 2, 4, 8, 16, 32, 64].includes(per)) {
    throw new Error(`specdec: attentionBackward: per = ${per} must be a power of two from 1 to 64`);
  }
  const tiles = Math.ceil(n / TILE);
  const params = { B, n, H, tiles, scale: 1 / Math.sqrt(D) };
  const buffers = { qkv: a.qkv, out: a.out, dout: a.dOut, lse: a.lse, dqkv: a.dqkv };
  const T = B * n;
  const fits = trainingTexturesFit(gpu, T, H, D);
  if (a.texture === true && !fits) {
    throw new Error(
      `specdec: attentionBackward: no texture variant for B ${B}, n ${n}, H ${H}, D ${D}: it ` +
        `needs D % 4 = 0 and qkv as ${T} × ${(3 * H * D) / 4} texels within ` +
        `maxTextureDimension2D ${gpu.device.limits.maxTextureDimension2D}`,
    );
  }
  if (a.texture ?? (gpu.isSoftware && fits)) {
    const store = qkvTexture(gpu, "attentionBackward", a.qkv, T, H, D);
    const doutT = scratchTexture(gpu.device, "dout", (H * D) / 4, T);
    const statT = scratchTexture(gpu.device, "stats", H, T);
    return [
      store.dispatch,
      gpu.kernel({
        label: "attentionBackward prep (texture)",
        code: backwardPrepCode(D),
        params: { n, H, total: T * H },
        buffers: { out: a.out, dout: a.dOut, lse: a.lse },
        textures: { doutT, statT },
        workgroups: Math.ceil((T * H) / 64),
      }),
      gpu.kernel({
        label: "attentionBackward dq (texture)",
        code: attentionBackwardQCode(D, per, true),
        buffers,
        textures: { qkvT: store.texture },
        params,
        workgroups: B * H * tiles,
      }),
      gpu.kernel({
        label: "attentionBackward dk dv (texture)",
        code: attentionBackwardKVCode(D, per, true),
        buffers: { qkv: a.qkv, dqkv: a.dqkv },
        textures: { qkvT: store.texture, doutT, statT },
        params,
        workgroups: B * H * tiles,
      }),
    ];
  }
  return [
    gpu.kernel({
      label: "attentionBackward dq",
      code: attentionBackwardQCode(D, per),
      buffers,
      params,
      workgroups: B * H * tiles,
    }),
    gpu.kernel({
      label: "attentionBackward dk dv",
      code: attentionBackwardKVCode(D, per),
      buffers,
      params,
      workgroups: B * H * tiles,
    }),
  ];
}
