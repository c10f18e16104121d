/**
 * What a decode step costs, by wall time, in units of a base decoding step: each part of a
 * speculative step (draft forwards, draft sampling, the target's verification forward, the
 * acceptance) run on its own, the whole speculative step, and the marginal cost of a dispatch
 * inside a base step (the step with empty dispatches interleaved, and with kinds of dispatch
 * removed). The outputs of the altered steps are wrong; only their times are wanted.
 *
 * Why wall time: lavapipe writes a pass's beginning timestamp late in command buffers that touch
 * textures (bench/wall_time.ts). Why units of a base step: Leviathan et al.'s prediction assumes a
 * verification of γ + 1 tokens costs one target step and everything else is γ draft steps; this
 * shows what each part costs here, and so where measured speedups fall short of the prediction.
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/step_parts.ts --target t.safetensors
 *   [--draft d.safetensors | --self] [--gamma 3] [--rounds 5]`
 *
 * Every list is timed from the same state: fresh engines and their prefill (prompt 128 bytes,
 * batch 1) before each list in each round, then the list 20 times in one submit (a base step
 * list thus covers positions 128 to 148; lists that sample advance, the others repeat position
 * 128), less an empty submit's wait. Lists alternate within each round; medians over the rounds.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Dispatch, requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import { baseDecodingEngine, speculativeDecodingEngine } from "../model/decoding.ts";
import { loadAverage, median, wallMs } from "./wall_time.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    target: { type: "string" },
    draft: { type: "string" },
    self: { type: "boolean", default: false },
    gamma: { type: "string", default: "3" },
    rounds: { type: "string", default: "5" },
  },
});
if (!values.target || (!values.draft && !values.self)) {
  throw new Error("step_parts: needs --target FILE and --draft FILE or --self");
}
const gamma = Number(values.gamma), rounds = Number(values.rounds);
if (!Number.isInteger(gamma) || gamma < 1) throw new Error(`--gamma: "${values.gamma}" is not ≥ 1`);
if (!Number.isInteger(rounds) || rounds < 1) {
  throw new Error(`--rounds: "${values.rounds}" is not ≥ 1`);
}
const gpu = await requestGpu();
const load = async (f: string) => Decoder.fromSafetensors(gpu, await Deno.readFile(f));
const target = await load(values.target);
const draft = values.self ? target : await load(values.draft!);
const prompt = [Array.from({ length: 128 }, (_, i) => (i * 5) % 256)];
/** Fresh engines, their prefill run: every list starts from the same positions and cache. */
async function engines() {
  const base = baseDecodingEngine(target, prompt, 1024, { seed: 7 });
  const spec = speculativeDecodingEngine(target, draft, prompt, 1024, { seed: 7, gamma });
  await wallMs(gpu, [...base.prefill, ...spec.prefill]);
  return { base, spec };
}

// an empty dispatch (8 lanes that never touch their buffer), to interleave
const pipeline = gpu.pipeline(
  "step parts: empty",
  `@group(0) @binding(0) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(8) fn main(@builtin(local_invocation_index) l: u32) { if (l == 99u) { b[0] += 1.0; } }`,
);
const scratch = gpu.buffer("step parts: empty's buffer (16)", 64);
const empty: Dispatch = {
  label: "empty",
  pipeline,
  bindGroup: gpu.device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: scratch } }],
  }),
  workgroups: [2, 1, 1],
};
/** A list to time: its name, its dispatches, and whether it is a part of the speculative step. */
interface Case {
  name: string;
  list: Dispatch[];
  part?: boolean;
}
/** The lists to time, from one pair of engines; the base step first. */
function lists(e: Awaited<ReturnType<typeof engines>>): Case[] {
  const { base, spec } = e;
  const kinds = [...new Set(base.step.map((d) => d.label))];
  return [
    { name: "base step", list: base.step },
    ...spec.parts.map((p) => ({ name: `  ${p.name}`, list: p.dispatches, part: true })),
    { name: `speculative step (γ ${gamma})`, list: spec.step },
    {
      name: "base step + an empty dispatch after each",
      list: base.step.flatMap((d) => [d, empty]),
    },
    ...kinds.map((k) => ({
      name: `base step without "${k}"`,
      list: base.step.filter((d) => d.label !== k),
    })),
  ];
}
const first = await engines();
const cases = lists(first);
first.base.destroy();
first.spec.destroy();
const reps = 20;
const times = cases.map(() => [] as number[]);
for (let r = 0; r < rounds; r++) {
  for (let i = 0; i < cases.length; i++) {
    const e = await engines();
    const list = lists(e)[i].list;
    const none = await wallMs(gpu, []);
    times[i].push(((await wallMs(gpu, new Array(reps).fill(list).flat())) - none) / reps);
    e.base.destroy();
    e.spec.destroy();
  }
}
const b = median(times[0]);
console.log(
  `${gpu.adapterName}; load ${(await loadAverage()).join(" ")}; medians of ${rounds} rounds, ` +
    `${reps} runs per submit from position 128`,
);
console.log("| list | dispatches | ms | base steps |\n|---|--:|--:|--:|");
let parts = 0;
cases.forEach(({ name, list, part }, i) => {
  const m = median(times[i]);
  if (part) parts += m;
  console.log(`| ${name} | ${list.length} | ${m.toFixed(3)} | ${(m / b).toFixed(2)} |`);
});
console.log(
  `| (sum of the speculative step's parts) | | ${parts.toFixed(3)} | ${(parts / b).toFixed(2)} |`,
);
const withEmpty = cases.findIndex(({ list }) => list.includes(empty));
const extra = median(times[withEmpty]) - b;
console.log(
  `\nan empty dispatch inside a base step: ${(1000 * extra / cases[0].list.length).toFixed(1)} µs`,
);
