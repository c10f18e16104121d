/**
 * Self-speculative decoding against base decoding on one model with an exit head: tokens/s (wall,
 * best of the repeats after a warm-up), the acceptance α (from the per-position acceptance rates:
 * α ≈ accepted at position 1), the mean accepted drafts per step and dispatches per token.
 *
 * Usage: deno run -A bench/self_speculative.ts [target.safetensors] [--gammas 1,2,3,5]
 *   [--batch 1] [--prompt 32] [--len 160] [--repeats 3] [--early-exit K]
 *   [--dim 128] [--depth 4] [--extra 0]
 * Without a file: a random model (default dim 128, depth 4, exit after layer 1, no extra blocks).
 * Self-speculative verification runs only the blocks from the exit on (the draft forwards keep
 * their stream below it), so a deeper exit saves more of the verification.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import { baseDecoding, type DecodingResult, speculativeDecoding } from "../model/decoding.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    gammas: { type: "string", default: "1,2,3,5" },
    batch: { type: "string", default: "1" },
    prompt: { type: "string", default: "32" },
    len: { type: "string", default: "160" },
    repeats: { type: "string", default: "3" },
    "early-exit": { type: "string" },
    dim: { type: "string", default: "128" },
    depth: { type: "string", default: "4" },
    extra: { type: "string", default: "0" },
  },
});
const gpu = await requestGpu();
const file = positionals[0];
const model = file
  ? await Decoder.fromSafetensors(gpu, await Deno.readFile(file), {
    source: file,
    earlyExitLayer: values["early-exit"] ? Number(values["early-exit"]) : undefined,
  })
  : Decoder.create(gpu, {
    numTokens: 256,
    dim: Number(values.dim),
    depth: Number(values.depth),
    heads: Math.max(1, Number(values.dim) / 32),
    dimHead: 32,
    earlyExitLayer: Number(values["early-exit"] ?? 1),
    earlyExitExtraBlocks: Number(values.extra),
  });
const B = Number(values.batch), P = Number(values.prompt), L = Number(values.len);
const R = Number(values.repeats);
const text = new TextEncoder().encode(
  "The quick brown fox jumps over the lazy dog. In the beginning was the word, and the word "
    .repeat(4),
);
const prompt = Array.from({ length: B }, (_, b) => Array.from(text.subarray(b, b + P)));
const c = model.config;
console.log(
  `${gpu.adapterName}; model dim ${c.dim} depth ${c.depth} exit after layer ${c.earlyExitLayer} ` +
    `(+${c.earlyExitExtraBlocks} blocks); batch ${B}, prompt ${P}, length ${L}, best of ${R}`,
);

/** The best (fastest) of R runs after one warm-up. */
async function best<T extends DecodingResult>(f: () => Promise<T>): Promise<T> {
  await f();
  let out: T | undefined;
  for (let r = 0; r < R; r++) {
    const x = await f();
    if (!out || x.wallMs < out.wallMs) out = x;
  }
  return out!;
}
const base = await best(() => baseDecoding(model, prompt, L, { seed: 1 }));
const tps = (x: DecodingResult) => x.generated / (x.wallMs / 1000);
console.log(
  `| decoding | γ | tokens/s | speedup | α | accepted/step | dispatches/token |\n|---|---|---|---|---|---|---|\n` +
    `| base | – | ${tps(base).toFixed(1)} | 1.00 | – | – | ${
      (base.dispatches / base.generated).toFixed(1)
    } |`,
);
for (const gamma of values.gammas.split(",").map(Number)) {
  const s = await best(() => speculativeDecoding(model, model, prompt, L, { seed: 1, gamma }));
  console.log(
    `| self-speculative | ${gamma} | ${tps(s).toFixed(1)} | ${(tps(s) / tps(base)).toFixed(2)} | ${
      s.acceptedPerPosition[0].toFixed(2)
    } | ${s.acceptedMean.toFixed(2)} | ${(s.dispatches / s.generated).toFixed(1)} |`,
  );
}
model.destroy();
