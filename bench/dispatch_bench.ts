/**
 * Where the fixed cost of a small dispatch comes from on the adapter at hand: one microbenchmark
 * per suspected cause, each a family of variants of the same work, timed with GPU timestamps
 * (REPS dispatches of one variant per pass, the variants alternated over ROUNDS rounds, the
 * fastest round kept).
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/dispatch_bench.ts [--rounds 5] [--reps 40] [--only family]
 * [--json f]`
 *
 * The work of every GEMV variant is the same: `y (N) = W (N, K) · x (K)`, N = 512, K = 128
 * (65 536 multiply-adds, 256 KiB of weights: the size of a decode step's qkv / ffIn GEMV at the
 * software reference shape). Families:
 * - `empty`: a dispatch that does nothing (1 workgroup of 1 invocation): the floor.
 * - `wgsize`: lanes per workgroup 1, 8, 32, 64, 256 with 8 workgroups.
 * - `wgcount`: 8 lanes per workgroup, 1 … 1024 workgroups.
 * - `barriers`: 8 or 64 lanes, 0 / 1 / 8 / 32 workgroup barriers each.
 * - `uniform`: N and K read from the params uniform vs WGSL constants.
 * - `vec4`: weights and x read as f32 vs vec4.
 * - `private`: 8 accumulators in a private array indexed in a loop vs unrolled (registers).
 *
 * Findings on lavapipe are written in kernels/fused_linear.ts's header.
 *
 * @module
 */
import { type Dispatch, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { unrollLoops } from "../kernels/unroll.ts";

const N = 512, K = 128;

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
fn main(@builtin(workgroup_id) wid: vec3u) { if (wid.x > 1u) { y[0] = 0.0; } }`;

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

const cases: { family: string; name: string; d: Dispatch; extra?: Dispatch[]; check: boolean }[] =
  [];
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

// --only <family>: run one family
const only = Deno.args.indexOf("--only");
if (only >= 0) {
  cases.splice(
    0,
    cases.length,
    ...cases.filter((c) => c.family === Deno.args[only + 1]),
  );
}

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
const best = new Map<(typeof cases)[number], number>();
for (let r = 0; r < rounds; r++) {
  for (const c of cases) {
    gpu.run(c.name, new Array(reps).fill([c.d, ...(c.extra ?? [])]).flat(), timer);
    const ms = (await timer.read()) / reps;
    best.set(c, Math.min(best.get(c) ?? Infinity, ms));
  }
}
const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ").slice(0, 3);
console.log(
  `${gpu.adapterName}; load ${load.join(" ")}; ${reps} dispatches per pass, best of ${rounds}`,
);
console.log(`GEMV N=${N} K=${K} (${N * K} multiply-adds); µs per dispatch`);
const rows = cases.map((c) => ({ family: c.family, name: c.name, us: best.get(c)! * 1000 }));
for (const r of rows) {
  console.log(`${r.family.padEnd(9)} ${r.name.padEnd(32)} ${r.us.toFixed(1).padStart(8)}`);
}
const i = Deno.args.indexOf("--json");
if (i >= 0) {
  await Deno.writeTextFile(
    Deno.args[i + 1],
    JSON.stringify({ adapter: gpu.adapterName, load, rows }, null, 1),
  );
}
