/**
 * `deno run -A bench/export_check.ts OUT_DIR [--small] [--seed N] [--models RUN_DIR]`: writes a
 * seeded target and draft checkpoint (`target.safetensors`, `draft.safetensors`, PyTorch
 * state_dict names) and `check.json` with fixed tokens and OUR logits for them, so
 * `bench/torch_baseline.py --check-logits OUT_DIR/check.json` (or `--selfcheck`, numpy float64)
 * can prove it runs the same weights and the same math before its timings mean anything.
 *
 * Default sizes are the reference config (dim 512; target depth 10, draft depth 2) with seeds 1
 * and 2, the very models bench/suite.ts decodes with; `--small` writes a dim-64 pair that a
 * software adapter exports in seconds. `--models RUN_DIR` writes no checkpoint: it computes the
 * logits of RUN_DIR's trained `target.safetensors` and `draft.safetensors` (a train.ts run) and
 * points check.json at them.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import type { DecoderConfig } from "../model/config.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { small: { type: "boolean" }, seed: { type: "string" }, models: { type: "string" } },
});
const outDir = positionals[0] ?? "bench/results/ckpt";
const seed = Number(values.seed ?? 1);

const configs: Record<"target" | "draft", DecoderConfig> = values.small
  ? {
    target: { numTokens: 256, dim: 64, depth: 3, heads: 2, dimHead: 32 },
    draft: { numTokens: 256, dim: 64, depth: 1, heads: 2, dimHead: 32 },
  }
  : {
    target: { numTokens: 256, dim: 512, depth: 10 },
    draft: { numTokens: 256, dim: 512, depth: 2 },
  };

// Two rows of 16 bytes of text: positions 0..15 exercise rotary at several angles, and two rows
// catch a batch/row mix-up. (2, 16, 256) logits per model keep check.json at ~0.3 MB.
const text = ["Speculative deco", "ding, on WebGPU!"];
const tokens = text.map((s) => Array.from(new TextEncoder().encode(s)));

const gpu = await requestGpu();
await Deno.mkdir(outDir, { recursive: true });
const check: Record<string, unknown> = {
  format: "specdec-logits-check/1",
  adapter: gpu.adapterName,
  seed,
  tokens,
};
for (const [role, config] of Object.entries(configs) as ["target" | "draft", DecoderConfig][]) {
  const t0 = performance.now();
  let model: Decoder, file: string;
  if (values.models) {
    // a trained pair: check.json points at it (torch_baseline.py joins the path to check.json's
    // folder, which keeps an absolute path as it is)
    file = await Deno.realPath(`${values.models}/${role}.safetensors`);
    model = await Decoder.fromSafetensors(gpu, await Deno.readFile(file), {
      maxSeqLen: 64,
      label: role,
      source: file,
    });
  } else {
    model = Decoder.create(gpu, { ...config, maxSeqLen: 64 }, {
      seed: role === "target" ? seed : seed + 1,
      label: role,
    });
    file = `${role}.safetensors`;
    await Deno.writeFile(`${outDir}/${file}`, await model.toSafetensors());
  }
  const logits = await model.logits(tokens); // (2, 16, V) f32
  const c = model.config;
  check[role] = {
    checkpoint: file,
    config: {
      numTokens: c.numTokens,
      dim: c.dim,
      depth: c.depth,
      heads: c.heads,
      dimHead: c.dimHead,
    },
    shape: [tokens.length, tokens[0].length, c.numTokens],
    logits: Array.from(logits),
  };
  model.destroy();
  console.log(
    `export_check: ${role} dim ${c.dim} depth ${c.depth}: ${
      values.models ? file : `${outDir}/${file}`
    } ` +
      `(${((performance.now() - t0) / 1000).toFixed(1)} s)`,
  );
}
await Deno.writeTextFile(`${outDir}/check.json`, JSON.stringify(check) + "\n");
console.log(`export_check: wrote ${outDir}/check.json (tokens 2×16 and both models' logits)`);
