/**
 * Where the fixed cost of a small dispatch comes from on the adapter at hand: one microbenchmark
 * per suspected cause, each a family of variants of the same work, timed with GPU timestamps
 * (REPS dispatches of one variant per pass, the variants alternated over ROUNDS rounds, the
 * median round kept).
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/dispatch_bench.ts [--rounds 5] [--reps 40] [--only family]
 * [--json f]`
 *
 * The work of every GEMV variant is the same: `y (N) = W (N, K) · x (K)`, N = 512, K = 128
 * (65 536 multiply-adds, 256 KiB of weights: the size of a decode step's qkv / ffIn GEMV at the
 * software reference shape). Families:
 * - `empty`: a dispatch that does nothing (1 workgroup of 1 invocation, and 1 to 16 of 8 lanes):
 *   the floor, and what a thread pool costs.
 * - `wgsize`: lanes per workgroup 1, 8, 32, 64, 256 with 8 workgroups.
 * - `wgcount`: 8 lanes per workgroup, 1 … 1024 workgroups.
 * - `barriers`: 8 or 64 lanes, 0 / 1 / 8 / 32 workgroup barriers each.
 * - `uniform`: N and K read from the params uniform vs WGSL constants.
 * - `vec4`: weights and x read as f32 vs vec4.
 * - `private`: 8 accumulators in a private array indexed in a loop vs unrolled (registers).
 * - `space` (`--only space`): where the big operand lives. The same GEMV (512 × 128 and
 *   128 × 512, M = 1) and the same attention-decode loop (4 heads × 512 keys × 32) with W, or K
 *   and V, in a storage binding, 64 KiB uniform chunks, an rgba32float texture (`textureLoad`),
 *   workgroup memory filled cooperatively, and a GEMV with 1 lane per workgroup; printed with
 *   ns per 32-bit word of the operand.
 * - `fused` (`--only fused`): the decode step's fused GEMVs as the forward plan runs them on
 *   software adapters (kernels/fused_linear.ts, M = 1, dim 128, heads 4 × 32, F 512, V 256, W
 *   from textures), the ffOut GEMV over 16 distinct weights against one (cold caches) and the
 *   embedding lookup; each row also prints the minimum over the rounds, steadier than the
 *   median on a shared machine. Not checked here (tests/fused_linear_test.ts checks them).
 *
 * Every case's output is checked before timing (the `fused` family excepted). Times are medians over the rounds.
 * Findings on lavapipe are written in kernels/fused_linear.ts's header (dispatch shape, uniform
 * bindings) and kernels/attention_decode.ts's (textures).
 *
 * @module
 */
import { type Dispatch, type Gpu, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { unrollLoops } from "../kernels/unroll.ts";
import { fusedLinear, STORAGE_UNIFORM } from "../kernels/fused_linear.ts";
import { kvTexture } from "../kernels/attention_decode.ts";
import { rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { embedding } from "../kernels/embedding.ts";
import { loadAverage, median } from "./wall_time.ts";

const N = 512, K = 128;
const TEX = 0x04 | 0x02; // TEXTURE_BINDING | COPY_DST
const UNI = 0x40 | 0x80 | 0x8 | 0x4; // UNIFORM | STORAGE | COPY_DST | COPY_SRC

/** Options of the GEMV template. */
interface Variant {
  /** Lanes per workgroup. */
  wg: number;
  /** Workgroups. */
  nwg: number;
  /** Read weights and x as vec4 (else f32). */
  vec4?: boolean;
  /** N and K from WGSL constants (else the uniform). */
  consts?: boolean;
  /** Workgroup barriers per invocation (after the work). */
  barriers?: number;
  /** Unroll the loop over K (needs consts). */
  unrollK?: boolean;
  /** No loads in the loop: the same trip count of fma on registers (the result is garbage). */
  aluOnly?: boolean;
  /** Weight addresses uniform over the workgroup: one workgroup per column slab, lane = row. */
  rowsPerLane?: boolean;
  /** Accumulate 8 columns at a time in a private array: "loop" (dynamic index) or "unroll". */
  tile?: "loop" | "unroll";
}

/**
 * The GEMV: lane g of G = wg·nwg lanes owns columns g, g+G, … (or blocks of 8 with a tile) and
 * loops over K; no shared memory.
 */
function gemvCode(v: Variant): string {
  const e = v.vec4 ? "vec4f" : "f32";
  const kw = v.vec4 ? K / 4 : K;
  const dims = v.consts
    ? `const NN: u32 = ${N}u;\nconst KW: u32 = ${kw}u;`
    : "// sizes from the uniform";
  const nn = v.consts ? "NN" : "params.N";
  const kk = v.consts ? "KW" : "params.KW";
  const dot = v.vec4 ? "dot" : "mul";
  const barriers = v.barriers
    ? `for (var i = 0u; i < ${v.barriers}u; i++) { workgroupBarrier(); }`
    : "";
  const body = v.rowsPerLane
    ? `
  // workgroup wid.x owns columns wid.x, wid.x + nwg, ...; its lanes are rows (only lane 0 is a
  // real row here: the others recompute row 0 and store nothing)
  for (var c = wid.x; c < ${nn}; c += ${v.nwg}u) {
    var acc = 0.0;
    for (var k = 0u; k < ${kk}; k++) { acc += ${dot}(x[k], w[c * ${kk} + k]); }
    if (lid == 0u) { y[c] = acc; }
  }`
    : v.tile
    ? `
  let G = ${v.wg * v.nwg}u;
  for (var c0 = g * 8u; c0 < ${nn}; c0 += G * 8u) {
    var acc: array<f32, 8>;
    for (var k = 0u; k < ${kk}; k++) {
      let xv = x[k];
      for (var j = 0u; j < 8u; j++) {${v.tile === "unroll" ? " /* unroll */" : ""}
        acc[j] += ${dot}(xv, w[(c0 + j) * ${kk} + k]);
      }
    }
    for (var j = 0u; j < 8u; j++) {${
      v.tile === "unroll" ? " /* unroll */" : ""
    } y[c0 + j] = acc[j]; }
  }`
    : `
  let G = ${v.wg * v.nwg}u;
  for (var c = g; c < ${nn}; c += G) {
    var acc = 0.0;
    ${v.aluOnly ? `var p = ${e}(f32(c)) + x[0] + w[c];` : ""}
    for (var k = 0u; k < ${kk}; k++) {${v.unrollK ? " /* unroll */" : ""} ${
      v.aluOnly
        ? `p = fma(p, ${e}(1.0001), ${e}(0.5)); acc += ${dot}(p, p);`
        : `acc += ${dot}(x[k], w[c * ${kk} + k]);`
    } }
    y[c] = acc;
  }`;
  return unrollLoops(/* wgsl */ `
struct Params { N: u32, KW: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<${e}>;      // (K)
@group(0) @binding(2) var<storage, read> w: array<${e}>;      // (N, K)
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // (N)
${dims}
fn mul(a: f32, b: f32) -> f32 { return a * b; }

@compute @workgroup_size(${v.wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  if (params.N == 0u) { return; } // keeps the uniform bound when the sizes are constants
  let g = wid.x * ${v.wg}u + lid;${body}
  ${barriers}
}`);
}

const EMPTY = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> y: array<f32>; // (1)
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wid: vec3u) { if (wid.x > 100u) { y[0] = 0.0; } }`;

/** Command-line flags: `--name value`. */
function flag(name: string, fallback: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
}

const gpu = await requestGpu();
const rounds = flag("rounds", 5), reps = flag("reps", 40);
const xs = new Float32Array(K).map((_, i) => Math.sin(i));
const ws = new Float32Array(N * K).map((_, i) => Math.cos(i * 0.37));
const x = gpu.upload("x (K)", xs), w = gpu.upload("w (N, K)", ws);
const y = gpu.buffer("y (N)", N * 4);

const cases: {
  family: string;
  name: string;
  d: Dispatch;
  extra?: Dispatch[];
  check: boolean;
  /** Words of the big operand per dispatch (the space families). */
  words?: number;
  /** Checks the output (the space families). */
  verify?: () => Promise<void>;
}[] = [];
const add = (family: string, name: string, v: Variant): void => {
  const d = gpu.kernel({
    label: `${family} ${name}`,
    code: gemvCode(v),
    params: { N, KW: v.vec4 ? K / 4 : K },
    buffers: { x, w, y },
    workgroups: v.nwg,
  });
  cases.push({ family, name, d, check: true });
};
cases.push({
  family: "empty",
  name: "1×1, no work",
  d: gpu.kernel({ label: "empty", code: EMPTY, buffers: { y }, workgroups: 1 }),
  check: false,
});
for (const n of [1, 2, 4, 16]) {
  cases.push({
    family: "empty",
    name: `${n} × 8 lanes, no work`,
    d: gpu.kernel({
      label: "empty",
      code: EMPTY.replace("@workgroup_size(1)", "@workgroup_size(8)"),
      buffers: { y },
      workgroups: n,
    }),
    check: false,
  });
}
for (const wg of [1, 8, 32, 64, 256]) {
  add("wgsize", `${wg} lanes × 8 wg, vec4`, { wg, nwg: 8, vec4: true });
}
for (const nwg of [1, 2, 4, 8, 16, 64, 256, 1024]) {
  add("wgcount", `8 lanes × ${nwg} wg, vec4`, { wg: 8, nwg, vec4: true });
}
for (const wg of [8, 64]) {
  for (const b of [0, 1, 8, 32]) {
    add("barriers", `${wg} lanes × ${64 / wg} wg, ${b} barriers`, {
      wg,
      nwg: 64 / wg,
      vec4: true,
      barriers: b,
    });
  }
}
add("uniform", "sizes from uniform", { wg: 8, nwg: 8, vec4: true });
add("uniform", "sizes as consts", { wg: 8, nwg: 8, vec4: true, consts: true });
add("vec4", "f32 loads", { wg: 8, nwg: 8 });
add("vec4", "vec4 loads", { wg: 8, nwg: 8, vec4: true });
add("private", "8-column tile, loop", { wg: 8, nwg: 8, vec4: true, tile: "loop" });
add("private", "8-column tile, unrolled", { wg: 8, nwg: 8, vec4: true, tile: "unroll" });
add("private", "no tile (1 column)", { wg: 8, nwg: 8, vec4: true });
for (const [wg, nwg] of [[1, 8], [1, 64], [8, 8], [8, 64]]) {
  add("uniform-address", `${wg} lanes × ${nwg} wg`, { wg, nwg, vec4: true, rowsPerLane: true });
  add("uniform-address", `${wg} lanes × ${nwg} wg, consts`, {
    wg,
    nwg,
    vec4: true,
    consts: true,
    rowsPerLane: true,
  });
}
add("loop", "K loop", { wg: 8, nwg: 8, vec4: true, consts: true });
add("loop", "K loop unrolled", { wg: 8, nwg: 8, vec4: true, consts: true, unrollK: true });
add("loop", "ALU only, K loop", { wg: 8, nwg: 8, vec4: true, consts: true, aluOnly: true });
add("loop", "ALU only, unrolled", {
  wg: 8,
  nwg: 8,
  vec4: true,
  consts: true,
  aluOnly: true,
  unrollK: true,
});

// the weights of a quarter of the GEMV (N/4 = 128 columns, 64 KiB: the uniform binding limit)
// read through a uniform binding vs a storage binding
const NQ = N / 4;
const wq = gpu.buffer("w quarter (N/4, K)", NQ * K * 4, 0x40 | 0x80 | 0x8 | 0x4);
gpu.write(wq, ws.slice(0, NQ * K));
const xu = gpu.buffer("x uniform (K)", K * 4, 0x40 | 0x80 | 0x8 | 0x4);
gpu.write(xu, xs);
for (
  const [xSpace, wSpace] of [["storage, read", "storage, read"], ["storage, read", "uniform"], [
    "uniform",
    "storage, read",
  ], ["uniform", "uniform"]]
) {
  for (const [wg, nwg] of [[8, 2], [8, 16]]) {
    const code = /* wgsl */ `
@group(0) @binding(1) var<${xSpace}> x: array<vec4f, ${K / 4}>;      // (K)
@group(0) @binding(2) var<${wSpace}> w: array<vec4f, ${(NQ * K) / 4}>; // (N/4, K)
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // (N)
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  for (var c = wid.x * ${wg}u + lid; c < ${NQ}u; c += ${wg * nwg}u) {
    var acc = 0.0;
    for (var k = 0u; k < ${K / 4}u; k++) { acc += dot(x[k], w[c * ${K / 4}u + k]); }
    y[c] = acc;
  }
}`;
    // built by hand: gpu.kernel allows one uniform, named params
    const label = `x ${xSpace.split(",")[0]}, w ${wSpace.split(",")[0]}, ${wg}×${nwg}`;
    const pipeline = gpu.pipeline(label, code);
    const bindGroup = gpu.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [xSpace === "uniform" ? xu : x, wq, y].map((buffer, i) => ({
        binding: i + 1,
        resource: { buffer },
      })),
    });
    const d: Dispatch = { label, pipeline, bindGroup, workgroups: [nwg, 1, 1] };
    cases.push({ family: "ubo", name: `N/4: ${label}`, d, check: false });
  }
}

// the whole GEMV with W in 4 uniform bindings of 64 KiB (chunks of 128 columns): a workgroup
// picks its chunk by a workgroup-uniform if-chain, vs one dispatch per chunk
const chunks = [0, 1, 2, 3].map((q) => {
  const b = gpu.buffer(`w chunk ${q}`, NQ * K * 4, 0x40 | 0x8);
  gpu.write(b, ws.slice(q * NQ * K, (q + 1) * NQ * K));
  return b;
});
for (const select of [true, false]) {
  const decl = (select ? [0, 1, 2, 3] : [0]).map((q) =>
    `@group(0) @binding(${2 + q}) var<uniform> w${q}: array<vec4f, ${(NQ * K) / 4}>;`
  ).join("\n");
  const load = select
    ? `var wv: vec4f;
      if (chunk == 0u) { wv = w0[o]; } else if (chunk == 1u) { wv = w1[o]; }
      else if (chunk == 2u) { wv = w2[o]; } else { wv = w3[o]; }`
    : `let wv = w0[o];`;
  const code = /* wgsl */ `
@group(0) @binding(1) var<uniform> x: array<vec4f, ${K / 4}>; // (K)
${decl}
@group(0) @binding(6) var<storage, read_write> y: array<f32>; // (N)
@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let chunk = wid.x / 2u; // 2 workgroups of 8 lanes × 8 columns per chunk of 128
  let c0 = (wid.x % 2u) * 64u + lid * 8u;
  for (var j = 0u; j < 8u; j++) {
    var acc = 0.0;
    for (var k = 0u; k < ${K / 4}u; k++) {
      let o = (c0 + j) * ${K / 4}u + k;
      ${load}
      acc += dot(x[k], wv);
    }
    y[chunk * ${NQ}u + c0 + j] = acc;
  }
}`;
  const pipeline = gpu.pipeline(`chunks ${select}`, code);
  const groups = (select ? [0] : [0, 1, 2, 3]).map((q) =>
    gpu.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 1, resource: { buffer: xu } },
        ...(select ? chunks : [chunks[q]]).map((buffer, i) => ({
          binding: 2 + i,
          resource: { buffer },
        })),
        { binding: 6, resource: { buffer: y } },
      ],
    })
  );
  // one dispatch per chunk: its 2 workgroups see chunk 0 (wid.x < 2), bound to chunk q
  cases.push({
    family: "ubo",
    name: select ? "W in 4 uniform chunks, if-chain" : "W in 4 uniform chunks, 4 dispatches",
    d: { label: "chunks", pipeline, bindGroup: groups[0], workgroups: [select ? 8 : 2, 1, 1] },
    extra: groups.slice(1).map((bindGroup) => ({
      label: "chunks",
      pipeline,
      bindGroup,
      workgroups: [2, 1, 1] as [number, number, number],
    })),
    check: false,
  });
}

for (
  const c of [...gemvCases(gpu, 512, 128), ...gemvCases(gpu, 128, 512), ...attnCases(gpu, 512)]
) {
  cases.push({ ...c, family: `space: ${c.family}`, check: false, verify: c.check });
}
for (const c of fusedCases(gpu)) cases.push({ ...c, family: "fused", check: false });

// --only <family>: run one family (`space`: the three space families)
const only = Deno.args.indexOf("--only");
if (only >= 0) {
  const want = Deno.args[only + 1];
  cases.splice(
    0,
    cases.length,
    ...cases.filter((c) => c.family === want || c.family.startsWith(`${want}: `)),
  );
}
for (const c of cases) await c.verify?.();

// correctness of every GEMV variant (a wrong variant measures nothing)
const ref = new Float64Array(N);
for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[n] += xs[k] * ws[n * K + k];
for (const c of cases.filter((c) => c.check && !c.name.startsWith("ALU"))) {
  gpu.run(c.name, [c.d]);
  const got = await gpu.readF32(y);
  const err = got.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i])), 0);
  if (err > 1e-3) {
    throw new Error(`dispatch_bench: ${c.family} "${c.name}" is wrong (error ${err})`);
  }
}

const timer = new GpuTimer(gpu, 4);
const times = new Map<(typeof cases)[number], number[]>();
for (let r = 0; r < rounds; r++) {
  for (const c of cases) {
    gpu.run(c.name, new Array(reps).fill([c.d, ...(c.extra ?? [])]).flat(), timer);
    const ms = (await timer.read()) / reps;
    times.set(c, [...(times.get(c) ?? []), ms]);
  }
}
const load = await loadAverage();
console.log(
  `${gpu.adapterName}; load ${load.join(" ")}; ${reps} dispatches per pass, median of ${rounds}`,
);
console.log(`GEMV N=${N} K=${K} (${N * K} multiply-adds) unless named; µs per dispatch`);
const rows = cases.map((c) => ({
  family: c.family,
  name: c.name,
  us: median(times.get(c)!) * 1000,
  minUs: Math.min(...times.get(c)!) * 1000,
  nsPerWord: c.words ? (median(times.get(c)!) * 1e6) / c.words : undefined,
}));
for (const r of rows) {
  const per = r.nsPerWord === undefined ? "" : ` ${r.nsPerWord.toFixed(2).padStart(6)} ns/word`;
  console.log(
    `${r.family.padEnd(9)} ${r.name.padEnd(32)} ${r.us.toFixed(1).padStart(8)} µs (min ${
      r.minUs.toFixed(1).padStart(6)
    })${per}`,
  );
}
const i = Deno.args.indexOf("--json");
if (i >= 0) {
  await Deno.writeTextFile(
    Deno.args[i + 1],
    JSON.stringify({ adapter: gpu.adapterName, load, rows }, null, 1),
  );
}

// ---------------------------------------------------------------------------------------------
// the space families: where the big operand lives

/** One timed case: the dispatch, the words it loads, and a check of its output. */
interface SpaceCase {
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

/** A texture `(height, width)` of rgba32float texels holding `data` row-major. */
function texture(
  gpu: Gpu,
  label: string,
  data: Float32Array<ArrayBuffer>,
  width: number,
): GPUTexture {
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
function gemvCases(gpu: Gpu, N: number, K: number): SpaceCase[] {
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
    let decl = "", load = "";
    const entries: GPUBindingResource[] = [{ buffer: x }];
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
function attnCases(gpu: Gpu, L: number): SpaceCase[] {
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

// ---------------------------------------------------------------------------------------------
// the fused family: the decode step's five fused GEMVs (M = 1, dim 128, heads 4 × 32, F 512,
// V 256, W from textures as on software adapters) with each workgroup layout

/** A weight texture `(N rows, K/4 texels)`. */
function weightTex(gpu: Gpu, N: number, K: number, seed: number): GPUTexture {
  return texture(
    gpu,
    `w ${N}×${K}`,
    new Float32Array(N * K).map((_, i) => Math.cos(i * seed)),
    K / 4,
  );
}

/** The decode step's fused GEMVs, each with every columns-per-lane variant it allows. */
function fusedCases(gpu: Gpu): { name: string; d: Dispatch; extra?: Dispatch[]; words: number }[] {
  const C = 128, H = 4, D = 32, F = 512, V = 256, maxLen = 512;
  const buf = (label: string, n: number, fill = 0.1) =>
    gpu.upload(label, new Float32Array(Math.max(n, 16384)).fill(fill), STORAGE_UNIFORM);
  const x = buf("x", C), norm = buf("norm", C, 1), att = buf("att", H * D), a = buf("a", F);
  const bias = buf("bias", F), out = buf("out", F), qkv = buf("qkv", 3 * H * D);
  const kv = gpu.buffer("kv", 2 * H * maxLen * D * 4);
  const start = gpu.upload("start", new Uint32Array([300]));
  const t = rotaryTable(maxLen, rotaryInvFreq(D));
  const cos = gpu.upload("cos", t.cos), sin = gpu.upload("sin", t.sin);
  const kvTex = kvTexture(gpu, "kv tex", 1, H, D, maxLen);
  const out0: { name: string; d: Dispatch; extra?: Dispatch[]; words: number }[] = [];
  const shapes = [
    { name: "qkv 384×128", x, norm, N: 3 * H * D, K: C, kind: "rotaryKv" },
    { name: "out 128×128", x: att, N: C, K: H * D, kind: "accumulate" },
    { name: "ffIn 512×128", x, norm, N: F, K: C, kind: "biasGelu" },
    { name: "ffOut 128×512", x: a, N: C, K: F, kind: "accumulate" },
    { name: "logits 256×128", x, norm, N: V, K: C, kind: "none" },
  ] as const;
  for (const [i, s] of shapes.entries()) {
    const wTex = weightTex(gpu, s.N, s.K, 0.37 + i);
    const w = gpu.buffer(`w ${s.name}`, s.N * s.K * 4, STORAGE_UNIFORM);
    const epilogue = s.kind === "rotaryKv"
      ? { kind: s.kind, qkv, kv, kvTex, start, cos, sin, B: 1, n: 1, H, D, maxLen }
      : s.kind === "biasGelu"
      ? { kind: s.kind, bias, out }
      : s.kind === "accumulate"
      ? { kind: s.kind, bias: s.K === F ? bias : undefined, out }
      : { kind: s.kind, out };
    const d = fusedLinear(gpu, {
      x: s.x,
      norm: "norm" in s ? s.norm : undefined,
      w,
      wTex,
      M: 1,
      N: s.N,
      K: s.K,
      epilogue,
    });
    out0.push({ name: s.name, d, words: s.N * s.K });
  }
  // cold weights: the ffOut GEMV over 16 distinct weight textures (4 MiB, more than the caches
  // hold) in turn, as a decode step reads each weight once, against one texture 16 times
  {
    const ds = Array.from({ length: 16 }, (_, i) =>
      fusedLinear(gpu, {
        x: a,
        w: gpu.buffer(`w cold ${i}`, C * F * 4, STORAGE_UNIFORM),
        wTex: weightTex(gpu, C, F, 0.1 + i),
        M: 1,
        N: C,
        K: F,
        epilogue: { kind: "accumulate", bias, out },
      }));
    out0.push({
      name: "ffOut ×16, one weight",
      d: ds[0],
      extra: new Array(15).fill(ds[0]),
      words: 16 * C * F,
    });
    out0.push({ name: "ffOut ×16, 16 weights", d: ds[0], extra: ds.slice(1), words: 16 * C * F });
    const tex0 = weightTex(gpu, C, F, 0.1);
    const same = Array.from({ length: 16 }, (_, i) =>
      fusedLinear(gpu, {
        x: a,
        w: gpu.buffer(`w same ${i}`, C * F * 4, STORAGE_UNIFORM),
        wTex: tex0,
        M: 1,
        N: C,
        K: F,
        epilogue: { kind: "accumulate", bias, out },
      }));
    out0.push({
      name: "ffOut ×16, 16 bind groups, 1 weight",
      d: same[0],
      extra: same.slice(1),
      words: 16 * C * F,
    });
  }
  const tokens = gpu.upload("tokens", new Uint32Array([7]));
  const table = gpu.upload("table", new Float32Array(V * C).fill(0.5));
  out0.push({
    name: "embedding (T 1, C 128)",
    d: embedding(gpu, { tokens, table, out: x, T: 1, C }),
    words: C,
  });
  return out0;
}
