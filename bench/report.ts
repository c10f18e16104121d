/**
 * `deno task bench:report [--quick] [--out DIR] [--models RUN_DIR] [--filter TEXT] [--reps N] [--reference]
 * [--prompt N] [--seq-len N] [--draft-threshold P] [--preset tiny|small|seed] [--train-batch B]
 * [--train-seq N]`: runs the benchmark suite and writes
 * `bench/results/<adapter>-<date>.json`, a markdown table beside it, and SVG plots (speculative
 * speedup vs gamma, measured and predicted by Leviathan's formula; decode tokens/s per method).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { requestGpu } from "../kernels/gpu.ts";
import { benchCases, representative, type Sample } from "./suite.ts";
import { formatTable, type ReportRow, summarize } from "./summary.ts";
import { renderChart, type Series } from "../cli/plot.ts";
import { PRESETS } from "../model/config.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string" },
    reference: { type: "boolean" },
    quick: { type: "boolean" },
    out: { type: "string" },
    reps: { type: "string" },
    filter: { type: "string" },
    prompt: { type: "string" },
    "seq-len": { type: "string" },
    "draft-threshold": { type: "string" },
    preset: { type: "string" },
    "train-batch": { type: "string" },
    "train-seq": { type: "string" },
  },
});
const gpu = await requestGpu();
const quick = Boolean(values.quick);
const reps = Number(values.reps ?? (gpu.isSoftware ? (quick ? 1 : 3) : 7));
const outDir = values.out ?? fileURLToPath(new URL("./results/", import.meta.url));
/** A positive integer flag, or undefined when absent. */
function sizeFlag(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^[1-9][0-9]*$/.test(raw)) {
    throw new Error(`--${name} must be a positive integer, got "${raw}"`);
  }
  return Number(raw);
}
const decode = {
  prompt: sizeFlag("prompt", values.prompt),
  seqLen: sizeFlag("seq-len", values["seq-len"]),
};
const train = {
  trainBatch: sizeFlag("train-batch", values["train-batch"]),
  trainSeq: sizeFlag("train-seq", values["train-seq"]),
};
for (const k of ["prompt", "seqLen"] as const) if (decode[k] === undefined) delete decode[k];
for (const k of ["trainBatch", "trainSeq"] as const) if (train[k] === undefined) delete train[k];
// the model shapes of a train.ts preset (target and draft) instead of the adapter's defaults
const preset = values.preset === undefined ? undefined : PRESETS[values.preset];
if (values.preset !== undefined && !preset) {
  throw new Error(
    `--preset must be one of ${Object.keys(PRESETS).join(", ")}, got "${values.preset}"`,
  );
}
const shapes = preset ? { target: preset.target, draft: preset.draft } : {};
// the speculative decodes' adaptive draft length (SpeculativeOptions.draftThreshold)
const threshold = values["draft-threshold"];
if (threshold !== undefined && !(/^0(\.[0-9]+)?$/.test(threshold))) {
  throw new Error(`--draft-threshold must be a probability in [0, 1), got "${threshold}"`);
}
const draftThreshold = Number(threshold ?? 0);
const cases = benchCases(gpu, quick, values.models, values.reference ?? !gpu.isSoftware, {
  ...decode,
  ...train,
  ...shapes,
  draftThreshold,
})
  .filter((
    c,
  ) => !values.filter || c.name.includes(values.filter) || c.group.includes(values.filter));

const chosen = new Map<string, Sample>();
for (const c of cases) {
  const t0 = performance.now();
  const run = await c.setup();
  await run(); // warm-up: pipelines compile, caches fill
  const list: Sample[] = [];
  for (let r = 0; r < reps; r++) list.push(await run());
  const rep = representative(list);
  chosen.set(c.name, rep);
  const m = rep.gpuMs;
  console.log(
    `${c.name}: ${m.toFixed(3)} ms GPU (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
  );
}
const rows = summarize(cases, (n) => chosen.get(n));
const slug = gpu.adapterName.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(
  0,
  40,
);
const stamp = new Date().toISOString().slice(0, 10);
const base = `${outDir}/${slug}-${stamp}${quick ? "-quick" : ""}`;
await Deno.mkdir(outDir, { recursive: true });
const meta = {
  adapter: gpu.adapterName,
  software: gpu.isSoftware,
  timestamps: gpu.hasTimestamps,
  date: new Date().toISOString(),
  quick,
  reps,
  deno: Deno.version.deno,
};
await Deno.writeTextFile(`${base}.json`, JSON.stringify({ meta, rows }, null, 2) + "\n");
const table = formatTable(rows);
await Deno.writeTextFile(
  `${base}.md`,
  `# specdec benchmarks — ${gpu.adapterName}, ${stamp}\n\n${table}\n`,
);
await Deno.writeTextFile(`${base}-speedup.svg`, speedupPlot(rows));
console.log(`\n${table}\n\nwrote ${base}.json, .md and -speedup.svg`);

/** Speedup vs gamma (measured and predicted) and tokens/s per method, per batch size. */
function speedupPlot(rows: ReportRow[]): string {
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
  const speed: Series[] = [], tps: Series[] = [];
  const groups = [
    ...new Set(rows.filter((r) => r.group.startsWith("decoding")).map((r) => r.group)),
  ];
  groups.forEach((g, gi) => {
    const spec = rows.filter((r) => r.group === g && r.name.startsWith("speculative"));
    const gammaOf = (r: ReportRow) => Number(r.name.match(/gamma (\d+)/)?.[1]);
    speed.push({
      label: `${g}: measured`,
      color: colors[gi % 4],
      points: spec.map((r) => [gammaOf(r), r.values.speedup]),
    });
    speed.push({
      label: `${g}: Leviathan`,
      color: colors[gi % 4],
      dashed: true,
      points: spec.map((r) => [gammaOf(r), r.values.predictedSpeedup]),
    });
    const baseRow = rows.find((r) => r.group === g && r.name.startsWith("base"));
    tps.push({
      label: `${g}: speculative`,
      color: colors[gi % 4],
      points: spec.map((r) => [gammaOf(r), r.values.tokensPerSec]),
    });
    if (baseRow) {
      tps.push({
        label: `${g}: base`,
        color: colors[gi % 4],
        dashed: true,
        points: spec.map((r) => [gammaOf(r), baseRow.values.tokensPerSec]),
      });
    }
  });
  return renderChart(`specdec decoding — ${gpu.adapterName}`, [
    {
      title: "Speculative speedup over base decoding (GPU time)",
      yLabel: "speedup ×",
      series: speed,
    },
    {
      title: "Decode throughput (tokens/s over all rows, GPU time)",
      yLabel: "tokens/s",
      series: tps,
    },
  ], "gamma (draft tokens per step)");
}
