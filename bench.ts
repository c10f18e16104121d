/**
 * Benchmarks: `deno bench bench.ts` (no permissions needed), `deno bench -A bench.ts` or
 * `deno task bench`. Every case also records GPU time
 * from timestamp queries; a table of GPU time, wall time and rates (GFLOP/s, GB/s, tokens/s,
 * readbacks per token, predicted vs measured speculative speedup) prints when the run ends.
 * Sizes follow the adapter: tiny on a software adapter, the reference config on a GPU.
 * Set SPECDEC_BENCH_QUICK=1 for the short suite, SPECDEC_BENCH_MODELS=<run folder> to decode with
 * the trained target and draft of a train.ts run.
 *
 * @module
 */
import { requestGpu } from "./kernels/gpu.ts";
import { benchCases, representative, type Sample } from "./bench/suite.ts";
import { formatTable, summarize } from "./bench/summary.ts";

/**
 * An environment variable, read only when env access is granted: plain `deno bench bench.ts` has
 * no permissions (WebGPU needs none), and a read would stop it with NotCapable.
 */
function env(name: string): string | undefined {
  return Deno.permissions.querySync({ name: "env", variable: name }).state === "granted"
    ? Deno.env.get(name)
    : undefined;
}

if (Deno.permissions.querySync({ name: "env" }).state !== "granted") {
  console.log(
    "bench.ts: no env access, so SPECDEC_BENCH_QUICK and SPECDEC_BENCH_MODELS are not read " +
      "(`deno bench -A bench.ts` or `deno task bench` reads them)",
  );
}
const gpu = await requestGpu();
const quick = env("SPECDEC_BENCH_QUICK") === "1";
const samples = new Map<string, Sample[]>();
const cases = benchCases(gpu, quick, env("SPECDEC_BENCH_MODELS"));

for (const c of cases) {
  let run: (() => Promise<Sample>) | undefined;
  Deno.bench({
    name: c.name,
    group: c.group,
    baseline: c.baseline,
    n: gpu.isSoftware ? 3 : 10,
    warmup: 1,
    async fn(b) {
      run ??= await c.setup();
      b.start();
      const s = await run();
      b.end();
      // the first call is Deno.bench's warm-up (pipelines compile): not a sample
      const list = samples.get(c.name);
      if (list) list.push(s);
      else samples.set(c.name, []);
    },
  });
}

globalThis.addEventListener("unload", () => {
  const rows = summarize(cases, (name) => {
    const list = samples.get(name);
    return list?.length ? representative(list) : undefined;
  });
  console.log(
    `\nGPU-timed results on ${gpu.adapterName} (median GPU time from timestamp queries):\n`,
  );
  console.log(formatTable(rows));
});
