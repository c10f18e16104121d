/**
 * Where the fixed cost of a dispatch comes from on Mesa's software adapter: the driver's thread
 * pool. Runs itself once per `LP_NUM_THREADS` value (lavapipe reads it when the process creates
 * its Vulkan device, so each value needs a fresh process) and measures, by wall clock over many
 * dispatches per submit (one completion, ~11 ms here, measured and subtracted; no timestamp
 * queries, which lavapipe writes late in command buffers that touch textures):
 *
 * - an empty dispatch of 1 and of 4 workgroups (8 lanes, one storage binding): the fixed cost;
 * - the same with 6 storage buffers and 3 textures bound, and alternating 8 pipelines: what
 *   bindings and pipeline switches add;
 * - an indirect dispatch of 0 workgroups (what a gated draft step of the adaptive draft length
 *   costs once every row has stopped) and one of 1;
 * - a storage write then a uniform read of the same buffer, alternated (the usage transition
 *   each fused GEMV's input makes);
 * - a base decoding step (the fused path, 22 dispatches) of a random model of issue 10's shape
 *   (dim 128, depth 4, heads 4 × 32, V 256), batch 1, prompt 128, 48 steps per submit.
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/dispatch_threads.ts [--threads 0,1,2,4] [--rounds 5]`
 *
 * Findings (kernels/fused_linear.ts's header has the table): with lavapipe's default pool (one
 * worker per core) every dispatch pays a wake-up of each worker and of the submitting thread, and
 * that cost grows with the number of workers; without workers (`LP_NUM_THREADS=0`) a dispatch
 * costs a few µs but all work runs on one core.
 *
 * @module
 */
import { type Dispatch, INDIRECT_STORAGE, requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import { baseDecodingEngine } from "../model/decoding.ts";
import { loadAverage, median, wallMs } from "./wall_time.ts";

const arg = (name: string, fallback: string) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : fallback;
};
const rounds = Number(arg("rounds", "5"));

if (Deno.env.get("SPECDEC_DISPATCH_CHILD") !== "1") {
  // the parent: one child process per LP_NUM_THREADS value, then the table
  const values = arg("threads", "0,1,2,4").split(",");
  const rows: Record<string, Record<string, number>> = {};
  for (const t of values) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL(import.meta.url).pathname, "--rounds", String(rounds)],
      env: { SPECDEC_DISPATCH_CHILD: "1", LP_NUM_THREADS: t, XDG_RUNTIME_DIR: "/tmp" },
      stderr: "inherit",
    }).output();
    if (!out.success) {
      throw new Error(`dispatch_threads: the child with LP_NUM_THREADS=${t} failed`);
    }
    rows[t] = JSON.parse(new TextDecoder().decode(out.stdout));
  }
  const load = await loadAverage();
  const names = Object.keys(rows[values[0]]).filter((k) => k !== "adapter");
  console.log(`${rows[values[0]].adapter}; load ${load.join(" ")}; medians of ${rounds} rounds`);
  console.log(`| case | ${values.map((t) => `LP_NUM_THREADS=${t}`).join(" | ")} |`);
  console.log(`|---|${values.map(() => "--:").join("|")}|`);
  for (const n of names) {
    console.log(
      `| ${n} | ${values.map((t) => rows[t][n].toFixed(n.endsWith("ms") ? 2 : 1)).join(" | ")} |`,
    );
  }
  Deno.exit(0);
}

const gpu = await requestGpu();
const dev = gpu.device;

/** A dispatch that does nothing (a lane that never exists touches the bindings). */
function empty(buffers: number, textures: number, tag: number, workgroups: number): Dispatch {
  const decl = [
    ...Array.from(
      { length: buffers },
      (_, i) => `@group(0) @binding(${i}) var<storage, read_write> b${i}: array<f32>;`,
    ),
    ...Array.from(
      { length: textures },
      (_, i) => `@group(0) @binding(${buffers + i}) var t${i}: texture_2d<f32>;`,
    ),
  ].join("\n");
  const use = [
    ...Array.from({ length: buffers }, (_, i) => `b${i}[0] += 1.0;`),
    ...Array.from({ length: textures }, (_, i) => `b0[1] += textureLoad(t${i}, vec2u(0u), 0).x;`),
  ].join(" ");
  const pipeline = gpu.pipeline(
    `empty ${buffers} ${textures} ${tag}`,
    `${decl}
const TAG: u32 = ${tag}u; // distinct pipelines
@compute @workgroup_size(8) fn main(@builtin(local_invocation_index) l: u32) {
  if (l == 99u + TAG) { ${use} }
}`,
  );
  const entries: GPUBindGroupEntry[] = [];
  for (let i = 0; i < buffers; i++) {
    entries.push({ binding: i, resource: { buffer: gpu.buffer(`b${i} (16)`, 64, 0x80) } });
  }
  for (let i = 0; i < textures; i++) {
    const t = dev.createTexture({ size: [32, 512], format: "rgba32float", usage: 0x04 });
    entries.push({ binding: buffers + i, resource: t.createView() });
  }
  const bindGroup = dev.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  return { label: "empty", pipeline, bindGroup, workgroups: [workgroups, 1, 1] };
}

/** Wall ms of one submit of `ds`, waited for. */
const wall = (ds: Dispatch[]) => wallMs(gpu, ds);

/** The empty dispatch's counts from a buffer: 0 or 1 workgroups. */
function indirect(count: number): Dispatch {
  const counts = dev.createBuffer({ size: 16, usage: INDIRECT_STORAGE, mappedAtCreation: true });
  new Uint32Array(counts.getMappedRange()).set([count, 1, 1, 0]);
  counts.unmap();
  return { ...empty(1, 0, 0, 1), indirect: { buffer: counts, offset: 0 } };
}

/** A buffer written by one dispatch (storage) and read by the next (uniform), alternated. */
function writeThenUniform(): Dispatch[] {
  const shared = gpu.buffer("shared (16384)", 65536, 0x80 | 0x40 | 0x8);
  const own = gpu.buffer("own (16)", 64, 0x80);
  const make = (decl: string, use: string, buffers: GPUBuffer[]): Dispatch => {
    const pipeline = gpu.pipeline(
      `transition ${use}`,
      `${decl}
@compute @workgroup_size(8) fn main(@builtin(local_invocation_index) l: u32) { if (l == 99u) { ${use} } }`,
    );
    const bindGroup = dev.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    return { label: "transition", pipeline, bindGroup, workgroups: [2, 1, 1] };
  };
  return [
    make(`@group(0) @binding(0) var<storage, read_write> b: array<f32>;`, "b[0] += 1.0;", [shared]),
    make(
      `@group(0) @binding(0) var<uniform> u: array<vec4f, 4096>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;`,
      "o[0] += u[1].x;",
      [shared, own],
    ),
  ];
}

const N = 400; // dispatches per submit
const alt = Array.from({ length: 8 }, (_, i) => empty(6, 3, i + 1, 2));
const cases: Record<string, { ds: Dispatch[]; per: number }> = {
  "empty, 1 workgroup, µs": { ds: new Array(N).fill(empty(1, 0, 0, 1)), per: N },
  "empty, 4 workgroups, µs": { ds: new Array(N).fill(empty(1, 0, 0, 4)), per: N },
  "6 buffers + 3 textures, µs": { ds: new Array(N).fill(empty(6, 3, 0, 2)), per: N },
  "same, 8 pipelines in turn, µs": { ds: Array.from({ length: N }, (_, i) => alt[i % 8]), per: N },
  "indirect, 0 workgroups, µs": { ds: new Array(N).fill(indirect(0)), per: N },
  "indirect, 1 workgroup, µs": { ds: new Array(N).fill(indirect(1)), per: N },
  "storage write / uniform read in turn, µs": {
    ds: new Array(N / 2).fill(writeThenUniform()).flat(),
    per: N,
  },
};
const model = Decoder.create(gpu, { numTokens: 256, dim: 128, depth: 4, heads: 4, dimHead: 32 }, {
  seed: 0,
});
const S = 48;
const prompt = [Array.from({ length: 128 }, (_, i) => (i * 5) % 256)];
const times: Record<string, number[]> = {};
for (let r = 0; r < rounds; r++) {
  const none = await wall([]); // the completion alone
  for (const [name, c] of Object.entries(cases)) {
    (times[name] ??= []).push(((await wall(c.ds)) - none) * 1000 / c.per);
  }
  // a fresh decode each round, so every round times positions 128..176
  const e = baseDecodingEngine(model, prompt, 1024, { seed: 7 });
  await wall(e.prefill);
  const ms = await wall(new Array(S).fill(e.step).flat());
  (times["base decoding step (22 dispatches), ms"] ??= []).push((ms - none) / S);
  e.destroy();
}
const out: Record<string, number | string> = { adapter: gpu.adapterName };
for (const [k, v] of Object.entries(times)) out[k] = median(v);
console.log(JSON.stringify(out));
