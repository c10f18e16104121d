/**
 * Decode steps of two checkouts side by side in one process: the base decoding step and the
 * speculative decoding step of each, on the same weights, by wall time over 40 steps per submit
 * (one completion measured and subtracted), the checkouts alternated round by round. On a shared
 * machine whose speed swings by ±25% from one minute to the next, alternating in one process is
 * the fairest A/B of a kernel change there is; GPU timestamps are not used (lavapipe writes them
 * late in command buffers that touch textures, see bench/wall_time.ts).
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/step_ab.ts --a OLD_CHECKOUT --b NEW_CHECKOUT
 *   --target t.safetensors [--draft d.safetensors | --self] [--gamma 4] [--rounds 10]`
 *
 * e.g. `git worktree add /tmp/old HEAD~3` for the old side. Each side builds its engines from its
 * own `model/decoding.ts` (each on its own WebGPU device), prompt 128 bytes, steps from position
 * 128 on. Prints dispatches per step and, per side and step kind, the min and median ms per step
 * with every round's value.
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { Dispatch } from "../kernels/gpu.ts";
import { loadAverage, median, wallMs } from "./wall_time.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    a: { type: "string" },
    b: { type: "string" },
    target: { type: "string" },
    draft: { type: "string" },
    self: { type: "boolean", default: false },
    gamma: { type: "string", default: "4" },
    rounds: { type: "string", default: "10" },
  },
});
if (!values.a || !values.b || !values.target || (!values.draft && !values.self)) {
  throw new Error(
    "step_ab: needs --a DIR --b DIR (two checkouts) --target FILE and --draft FILE or --self",
  );
}
const gamma = Number(values.gamma), rounds = Number(values.rounds), S = 40;
/** What this script needs of a decoding engine (any checkout's). */
interface Engine {
  prefill: unknown[];
  step: unknown[];
  destroy(): void;
}
interface Side {
  run: (ds: unknown[]) => Promise<number>;
  engines: Record<string, () => Engine>;
}
const sides: Record<string, Side> = {};
for (const [name, root] of [["a", values.a], ["b", values.b]] as const) {
  const { requestGpu } = await import(`${root}/kernels/gpu.ts`);
  const { Decoder } = await import(`${root}/model/decoder.ts`);
  const decoding = await import(`${root}/model/decoding.ts`);
  const gpu = await requestGpu();
  const load = async (f: string) => Decoder.fromSafetensors(gpu, await Deno.readFile(f));
  const target = await load(values.target);
  const draft = values.self ? target : await load(values.draft!);
  const prompt = [Array.from({ length: 128 }, (_, i) => (i * 5) % 256)];
  sides[name] = {
    run: (ds) => wallMs(gpu, ds as Dispatch[]),
    engines: {
      base: () => decoding.baseDecodingEngine(target, prompt, 2048, { seed: 7 }),
      speculative: () =>
        decoding.speculativeDecodingEngine(target, draft, prompt, 2048, { gamma, seed: 7 }),
    },
  };
}
const times: Record<string, number[]> = {};
for (let r = 0; r < rounds; r++) {
  for (const [name, side] of Object.entries(sides)) {
    const empty = await side.run([]);
    for (const [kind, make] of Object.entries(side.engines)) {
      const e = make();
      await side.run(e.prefill);
      await side.run(e.step); // warm
      const ms = await side.run(new Array(S).fill(e.step).flat());
      (times[`${name} ${kind}`] ??= []).push((ms - empty) / S);
      if (r === 0) console.log(`${name} ${kind}: ${e.step.length} dispatches per step`);
      e.destroy();
    }
  }
}
const load = await loadAverage();
console.log(
  `a = ${values.a}, b = ${values.b}; γ ${gamma}; ${rounds} rounds; load ${load.join(" ")}`,
);
for (const [k, v] of Object.entries(times)) {
  console.log(
    `${k.padEnd(14)} min ${Math.min(...v).toFixed(3)} median ${median(v).toFixed(3)} ms/step  ` +
      v.map((x) => x.toFixed(2)).join(" "),
  );
}
