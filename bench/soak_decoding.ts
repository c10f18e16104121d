/**
 * Soak: many decodes to distinct lengths, to show that memory stays flat (the model's KV-cache
 * pool reuses and evicts its caches instead of keeping one per length).
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/soak_decoding.ts [--decodes 200] [--batch 4]
 * [--prompt 8] [--every 20] [--speculative] [--json out.json]`
 *
 * Decode i (i = 0 … decodes − 1) generates i + 1 tokens (seqLen = prompt + i + 1, so every length
 * is new and each needs a longer cache than all before it: the worst case for a pool), greedily,
 * with base decoding (with `--speculative`, every other decode is speculative with a depth-1
 * draft, γ 4). Every `every` decodes it prints the pool's caches and bytes (target and draft) and
 * `Deno.memoryUsage()` (on a software adapter GPU buffers live in host memory, so `rss` counts
 * them). A flat `rss` and pool size after the first decodes is the pass mark.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import { baseDecoding, speculativeDecoding } from "../model/decoding.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    decodes: { type: "string", default: "200" },
    batch: { type: "string", default: "4" },
    prompt: { type: "string", default: "8" },
    every: { type: "string", default: "20" },
    speculative: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const decodes = Number(values.decodes), B = Number(values.batch), P = Number(values.prompt);
const every = Number(values.every);
for (const [name, v] of [["decodes", decodes], ["batch", B], ["prompt", P], ["every", every]]) {
  if (!Number.isInteger(v) || (v as number) < 1) {
    throw new Error(`soak: --${name} must be an integer ≥ 1, got "${values[name as "batch"]}"`);
  }
}

const gpu = await requestGpu();
const cfg = {
  numTokens: 256,
  dim: 64,
  depth: 2,
  heads: 2,
  dimHead: 32,
  maxSeqLen: P + decodes + 8,
};
const target = Decoder.create(gpu, cfg, { seed: 1 });
const draft = Decoder.create(gpu, { ...cfg, depth: 1 }, { seed: 2 });
const prompt = Array.from(
  { length: B },
  (_, b) => Array.from({ length: P }, (_, i) => (b * 31 + i * 7) % 256),
);
const MB = (n: number) => +(n / 2 ** 20).toFixed(1);
// the pool's byte count where the pool reports it (bytes is new with the bounded pool)
const poolBytes = (m: Decoder) => (m.caches as { bytes?: number }).bytes ?? NaN;

interface Row {
  decode: number;
  seqLen: number;
  poolCaches: number;
  poolMB: number;
  rssMB: number;
  heapUsedMB: number;
  externalMB: number;
  seconds: number;
}
const rows: Row[] = [];
const t0 = performance.now();
console.log(
  `soak: ${decodes} decodes of batch ${B}, prompt ${P}, seqLen ${P + 1} … ${P + decodes}` +
    `${values.speculative ? ", base and speculative alternating" : ", base"} on ${gpu.adapterName}`,
);
console.log("decode  seqLen  caches  pool MB  rss MB  heap MB  external MB  s");
for (let i = 0; i < decodes; i++) {
  const seqLen = P + i + 1;
  if (values.speculative && i % 2 === 1) {
    await speculativeDecoding(target, draft, prompt, seqLen, { temperature: 0, gamma: 4 });
  } else {
    await baseDecoding(target, prompt, seqLen, { temperature: 0 });
  }
  if ((i + 1) % every === 0 || i === 0 || i === decodes - 1) {
    const m = Deno.memoryUsage();
    const row: Row = {
      decode: i + 1,
      seqLen,
      poolCaches: target.caches.size + draft.caches.size,
      poolMB: MB(poolBytes(target) + poolBytes(draft)),
      rssMB: MB(m.rss),
      heapUsedMB: MB(m.heapUsed),
      externalMB: MB(m.external),
      seconds: +((performance.now() - t0) / 1000).toFixed(1),
    };
    rows.push(row);
    console.log(
      [row.decode, row.seqLen, row.poolCaches, row.poolMB, row.rssMB, row.heapUsedMB]
        .map((v) => String(v).padStart(6)).join("  ") +
        `  ${String(row.externalMB).padStart(11)}  ${row.seconds}`,
    );
  }
}
const first = rows[Math.min(1, rows.length - 1)], last = rows[rows.length - 1];
console.log(
  `rss ${first.rssMB} MB after ${first.decode} decodes → ${last.rssMB} MB after ${last.decode} ` +
    `(${(last.rssMB - first.rssMB).toFixed(1)} MB, ` +
    `${((last.rssMB - first.rssMB) * 1024 / Math.max(1, last.decode - first.decode)).toFixed(1)} ` +
    `KB per decode); pool ${first.poolMB} → ${last.poolMB} MB`,
);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ adapter: gpu.adapterName, cfg, B, P, rows }, null, 2),
  );
}
target.destroy();
draft.destroy();
