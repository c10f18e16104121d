/**
 * The `space` families of bench/dispatch_bench.ts: the same GEMV and the same attention-decode
 * loop with the big operand (W, or K and V) read from a storage binding, uniform chunks, an
 * rgba32float texture (`textureLoad`), workgroup memory filled cooperatively, and a few more.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { unrollLoops } from "../kernels/unroll.ts";

/** One timed case: the dispatch, the words it loads, and a check of its output. */
export interface SpaceCase {
  /** Family (`gemv …` or `attn`). */
  family: string;
  /** Variant. */
  name: string;
  /** The dispatch. */
  d: Dispatch;
  /** 32-bit words of the big operand loaded per dispatch. */
  words: number;
  /** Throws when the output is wrong (run once before timing). */
  check: () => Promise<void>;
}

const TEX = 0x04 | 0x02; // TEXTURE_BINDING | COPY_DST
const UNI = 0x40 | 0x80 | 0x8 | 0x4;

/** A texture `(height, width)` of rgba32float texels holding `data` row-major. */
function texture(gpu: Gpu, label: string, data: Float32Array, width: number): GPUTexture {
  const height = data.length / 4 / width;
  const t = gpu.device.createTexture({
    label,
    size: [width, height],
    format: "rgba32float",
    usage: TEX,
  });
  gpu.device.queue.writeTexture({ texture: t }, data, {
    bytesPerRow: width * 16,
    rowsPerImage: height,
  }, [
    width,
    height,
  ]);
  return t;
}

/** A hand-built dispatch: entries by binding number. */
function dispatch(
  gpu: Gpu,
  label: string,
  code: string,
  entries: GPUBindingResource[],
  workgroups: number,
): Dispatch {
  const pipeline = gpu.pipeline(label, code);
  const bindGroup = gpu.device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries.map((resource, i) => ({ binding: i + 1, resource })),
  });
  return { label, pipeline, bindGroup, workgroups: [workgroups, 1, 1] };
}

/** Where the big operand lives. */
type Space = "storage" | "uniform" | "texture" | "workgroup" | "texture-x" | "storage-1lane";

/**
 * GEMV `y (N) = W (N, K) · x (K)`, M = 1: 8 lanes per workgroup, a lane owns 4 consecutive
 * columns (one vec4 of y), x through a uniform binding (an address uniform over the workgroup).
 */
export function gemvCases(gpu: Gpu, N: number, K: number): SpaceCase[] {
  const K4 = K / 4, WGC = 32; // columns per workgroup
  const xs = new Float32Array(K).map((_, i) => Math.sin(i * 0.7));
  const ws = new Float32Array(N * K).map((_, i) => Math.cos(i * 0.37) * 0.1);
  const ref = new Float64Array(N);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[n] += xs[k] * ws[n * K + k];
  const x = gpu.buffer(`x (${K})`, K * 4, UNI);
  gpu.write(x, xs);
  const w = gpu.buffer(`w (${N}, ${K})`, N * K * 4, UNI);
  gpu.write(w, ws);
  const y = gpu.buffer("y", N * 4);
  const RC = Math.min(N, 65536 / (K * 4)); // W rows per uniform chunk
  const chunks = N / RC;
  const tex = texture(gpu, "w texture", ws, K4);
  const cases: SpaceCase[] = [];
  const add = (space: Space, name: string) => {
    const one = space === "storage-1lane";
    let decl = "", load = "", entries: GPUBindingResource[] = [{ buffer: x }];
    if (space === "storage" || space === "workgroup" || one) {
      decl = `@group(0) @binding(2) var<storage, read> w: array<vec4f>; // (N, K)`;
      load = "w[(c0 + j) * K4 + k]";
      entries.push({ buffer: w });
    } else if (space === "uniform") {
      decl = Array.from(
        { length: chunks },
        (_, q) => `@group(0) @binding(${2 + q}) var<uniform> w${q}: array<vec4f, ${RC * K4}>;`,
      ).join("\n");
      load = "wc(chunk, (c0 + j - chunk * RC) * K4 + k)";
      decl += `\nfn wc(q: u32, o: u32) -> vec4f {\n${
        Array.from({ length: chunks }, (_, q) => `  if (q == ${q}u) { return w${q}[o]; }`).join(
          "\n",
        )
      }\n  return vec4f();\n}`;
      for (let q = 0; q < chunks; q++) {
        entries.push({ buffer: w, offset: q * RC * K * 4, size: RC * K * 4 });
      }
    } else {
      decl = `@group(0) @binding(2) var w: texture_2d<f32>; // (N, K4) texels`;
      load = "textureLoad(w, vec2u(k, c0 + j), 0)";
      entries.push(tex.createView());
    }
    const yBinding = 2 + (space === "uniform" ? chunks : 1);
    entries.push({ buffer: y });
    const TK = Math.min(K4, 16); // workgroup tile: 32 columns × 16 vec4s = 8 KiB
    const body = space === "workgroup"
      ? `
  for (var k0 = 0u; k0 < K4; k0 += TK) {
    for (var e = lid; e < WGC * TK; e += 8u) { ws[e] = w[(wid.x * WGC + e / TK) * K4 + k0 + e % TK]; }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let xv = x[k0 + kk];
      for (var j = 0u; j < 4u; j++) { /* unroll */ acc[j] += dot(xv, ws[(lid * 4u + j) * TK + kk]); }
    }
    workgroupBarrier();
  }`
      : `
  for (var k = 0u; k < K4; k++) {
    let xv = x[k];
    for (var j = 0u; j < 4u; j++) { /* unroll */ acc[j] += dot(xv, ${load}); }
  }`;
    const lanes = one ? 1 : 8;
    const code = unrollLoops(/* wgsl */ `
const K4: u32 = ${K4}u;
const RC: u32 = ${RC}u;
const WGC: u32 = ${WGC}u;
const TK: u32 = ${TK}u;
@group(0) @binding(1) var<uniform> x: array<vec4f, ${K4}>;
${decl}
@group(0) @binding(${yBinding}) var<storage, read_write> y: array<vec4f>;
${space === "workgroup" ? "var<workgroup> ws: array<vec4f, WGC * TK>;" : ""}
@compute @workgroup_size(${lanes})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let unit = ${one ? "wid.x" : "wid.x * 8u + lid"};
  let c0 = unit * 4u;
  let chunk = ${one ? "c0" : "wid.x * WGC"} / RC;
  var acc: array<f32, 4>;${body}
  y[unit] = vec4f(acc[0], acc[1], acc[2], acc[3]);
}`);
    const d = dispatch(gpu, `gemv ${N}x${K} ${name}`, code, entries, one ? N / 4 : N / WGC);
    cases.push({
      family: `gemv ${N}×${K}`,
      name,
      d,
      words: N * K,
      check: async () => {
        gpu.run(name, [d]);
        const got = await gpu.readF32(y);
        const err = got.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i])), 0);
        if (err > 1e-4) throw new Error(`space bench: gemv ${name} is wrong (${err})`);
        gpu.device.queue.writeBuffer(y, 0, new Float32Array(N));
      },
    });
  };
  add("storage", "W storage");
  add("uniform", `W ${chunks} uniform chunks`);
  add("texture", "W rgba32f texture");
  add("workgroup", "W → workgroup (coop)");
  add("storage-1lane", "W storage, 1 lane/wg");
  return cases;
}

/**
 * The attention-decode loop: 4 heads, L keys of D = 32, one workgroup of 8 lanes per head, lane
 * s takes keys s, s+8, …: `p = exp(q·k · scale)`, `acc += p·v`, `l += p`; the 8 lanes' partial
 * sums are stored (the combine is left out).
 */
export function attnCases(gpu: Gpu, L: number): SpaceCase[] {
  const H = 4, D = 32, D4 = 8, WG = 8;
  const kvs = new Float32Array(2 * H * L * D).map((_, i) => Math.sin(i * 0.013) * 0.5);
  const qs = new Float32Array(H * D).map((_, i) => Math.cos(i * 0.3));
  const ref = new Float64Array(H * WG * (D + 4));
  for (let h = 0; h < H; h++) {
    for (let j = 0; j < L; j++) {
      let s = 0;
      for (let c = 0; c < D; c++) s += qs[h * D + c] * kvs[(h * L + j) * D + c];
      const p = Math.exp(s / Math.sqrt(D));
      const o = (h * WG + (j % WG)) * (D + 4);
      for (let c = 0; c < D; c++) ref[o + c] += p * kvs[((H + h) * L + j) * D + c];
      for (let c = 0; c < 4; c++) ref[o + D + c] += p;
    }
  }
  const kv = gpu.buffer("kv (2, H, L, D)", kvs.byteLength, UNI);
  gpu.write(kv, kvs);
  const q = gpu.upload("q (H, D)", qs);
  const out = gpu.buffer("out", ref.length * 4);
  const tex = texture(gpu, "kv texture", kvs, D4);
  // texture with rows of 256 texels (32 keys): fewer rows, same gather
  const texWide = texture(gpu, "kv texture wide", kvs, 256);
  const perHead = L * D * 4; // bytes of one head's K (or V)
  const cases: SpaceCase[] = [];
  const add = (space: Space | "texture-wide", name: string) => {
    let decl = "", ldk = "", ldv = "";
    const entries: GPUBindingResource[] = [{ buffer: q }];
    if (space === "storage" || space === "workgroup") {
      decl = `@group(0) @binding(2) var<storage, read> kv: array<vec4f>;`;
      ldk = `kv[(h * L + j) * D4 + c]`;
      ldv = `kv[((H + h) * L + j) * D4 + c]`;
      entries.push({ buffer: kv });
    } else if (space === "uniform") {
      if (perHead > 65536) return;
      decl = Array.from(
        { length: 2 * H },
        (_, i) => `@group(0) @binding(${2 + i}) var<uniform> kv${i}: array<vec4f, ${L * D4}>;`,
      ).join("\n") + `\nfn ldu(i: u32, o: u32) -> vec4f {\n${
        Array.from({ length: 2 * H }, (_, i) => `  if (i == ${i}u) { return kv${i}[o]; }`).join(
          "\n",
        )
      }\n  return vec4f();\n}`;
      ldk = `ldu(h, j * D4 + c)`;
      ldv = `ldu(H + h, j * D4 + c)`;
      for (let i = 0; i < 2 * H; i++) {
        entries.push({ buffer: kv, offset: i * perHead, size: perHead });
      }
    } else if (space === "texture") {
      decl = `@group(0) @binding(2) var kv: texture_2d<f32>; // (2·H·L, D4)`;
      ldk = `textureLoad(kv, vec2u(c, h * L + j), 0)`;
      ldv = `textureLoad(kv, vec2u(c, (H + h) * L + j), 0)`;
      entries.push(tex.createView());
    } else {
      decl = `@group(0) @binding(2) var kv: texture_2d<f32>; // rows of 256 texels`;
      ldk =
        `textureLoad(kv, vec2u(((h * L + j) * D4 + c) % 256u, ((h * L + j) * D4 + c) / 256u), 0)`;
      ldv =
        `textureLoad(kv, vec2u((((H + h) * L + j) * D4 + c) % 256u, (((H + h) * L + j) * D4 + c) / 256u), 0)`;
      entries.push(texWide.createView());
    }
    const outBinding = 2 + (space === "uniform" ? 2 * H : 1);
    entries.push({ buffer: out });
    const TJ = 32; // workgroup tile: 32 keys + values = 8 KiB
    const loop = space === "workgroup"
      ? `
  for (var j0 = 0u; j0 < L; j0 += TJ) {
    for (var e = lid; e < TJ * D4; e += WG) {
      let j = j0 + e / D4;
      let c = e % D4;
      kS[e] = ${ldk};
      vS[e] = ${ldv};
    }
    workgroupBarrier();
    for (var jj = lid; jj < TJ; jj += WG) {
      var s = 0.0;
      for (var c = 0u; c < D4; c++) { /* unroll */ s += dot(qv[c], kS[jj * D4 + c]); }
      let p = exp(s * scale);
      l += p;
      for (var c = 0u; c < D4; c++) { /* unroll */ acc[c] += p * vS[jj * D4 + c]; }
    }
    workgroupBarrier();
  }`
      : `
  for (var j = lid; j < L; j += WG) {
    var s = 0.0;
    for (var c = 0u; c < D4; c++) { /* unroll */ s += dot(qv[c], ${ldk}); }
    let p = exp(s * scale);
    l += p;
    for (var c = 0u; c < D4; c++) { /* unroll */ acc[c] += p * ${ldv}; }
  }`;
    const code = unrollLoops(/* wgsl */ `
const H: u32 = ${H}u;
const L: u32 = ${L}u;
const D4: u32 = ${D4}u;
const WG: u32 = ${WG}u;
const TJ: u32 = ${TJ}u;
@group(0) @binding(1) var<storage, read> q: array<vec4f>;
${decl}
@group(0) @binding(${outBinding}) var<storage, read_write> out: array<vec4f>;
${
      space === "workgroup"
        ? "var<workgroup> kS: array<vec4f, TJ * D4>;\nvar<workgroup> vS: array<vec4f, TJ * D4>;"
        : ""
    }
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let scale = ${1 / Math.sqrt(D)};
  var qv: array<vec4f, D4>;
  for (var c = 0u; c < D4; c++) { /* unroll */ qv[c] = q[h * D4 + c]; }
  var acc: array<vec4f, D4>;
  var l = 0.0;${loop}
  let o = (h * WG + lid) * (D4 + 1u);
  for (var c = 0u; c < D4; c++) { /* unroll */ out[o + c] = acc[c]; }
  out[o + D4] = vec4f(l);
}`);
    const d = dispatch(gpu, `attn L${L} ${name}`, code, entries, H);
    cases.push({
      family: `attn 4×${L}×32`,
      name,
      d,
      words: 2 * H * L * D,
      check: async () => {
        gpu.run(name, [d]);
        const got = await gpu.readF32(out);
        const err = got.reduce(
          (m, v, i) => Math.max(m, Math.abs(v - ref[i]) / (1 + Math.abs(ref[i]))),
          0,
        );
        if (err > 1e-4) throw new Error(`space bench: attn ${name} is wrong (${err})`);
        gpu.device.queue.writeBuffer(out, 0, new Float32Array(ref.length));
      },
    });
  };
  add("storage", "K/V storage");
  add("uniform", "K/V 8 uniform bindings");
  add("texture", "K/V rgba32f texture (D4 wide)");
  add("texture-wide", "K/V rgba32f texture (256 wide)");
  add("workgroup", "K/V → workgroup (coop)");
  return cases;
}
