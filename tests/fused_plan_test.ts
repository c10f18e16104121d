/**
 * The fused small-n forward plan (model/forward_plan.ts): at most 5 dispatches per layer, a
 * prefill then decode steps equal to one full float64 forward, the same bits as the unfused plan
 * on software adapters, and the unfused kernels where the fused ones do not serve the sizes.
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { baseDecoding } from "../model/decoding.ts";
import { Trainer } from "../model/trainer.ts";
import { buildForwardPlan, type ForwardPlan } from "../model/forward_plan.ts";
import { ModelState } from "../model/state.ts";
import type { Gpu } from "../kernels/gpu.ts";
import { decoderLogitsRef, type RefConfig } from "./reference/model.ts";
import { assertClose, gpuTest, randomRows } from "./helpers.ts";

// dim not a multiple of 8 (a lane's columns), V a multiple of 4 (the logits fuse too)
const CFG: RefConfig = { numTokens: 20, dim: 12, depth: 2, heads: 3, dimHead: 8, ffMult: 3 };

/** Runs a prefill of 5 tokens, then chunks of 1, 1, 3, 1, returning each chunk's logits. */
async function decode(
  gpu: Gpu,
  plan: (n: number) => ForwardPlan,
  tokens: number[][],
): Promise<Float32Array[]> {
  const B = tokens.length, out: Float32Array[] = [];
  let at = 0;
  for (const k of [5, 1, 1, 3, 1]) {
    const p = plan(k);
    gpu.write(p.tokens, Uint32Array.from(tokens.flatMap((r) => r.slice(at, at + k))));
    gpu.write(p.start, new Uint32Array(B).fill(at));
    gpu.run("chunk", p.dispatches);
    out.push(await gpu.readF32(p.logits));
    at += k;
  }
  return out;
}

/** Plans of both paths over their own caches, built from one model's parameters. */
async function plans(gpu: Gpu, cfg: RefConfig, B: number, seed: number) {
  const model = Decoder.create(gpu, cfg, { seed });
  const values = await model.paramValues();
  const state = new ModelState(
    gpu,
    model.config,
    new Map(Object.entries(values).map(([k, v]) => [k, Float32Array.from(v)])),
    undefined,
    "fused test",
  );
  const caches = [model.createCache(B, 16), model.createCache(B, 16)];
  const built = new Map<string, ForwardPlan>();
  const plan = (fused: boolean) => (n: number) => {
    const key = `${fused}:${n}`;
    if (!built.has(key)) {
      built.set(key, buildForwardPlan(state, caches[fused ? 0 : 1], n, false, fused));
    }
    return built.get(key)!;
  };
  return { model, state, values, fused: plan(true), unfused: plan(false) };
}

// dim 64 and ffMult 2: the qkv, ffIn, ffOut and logits GEMVs read W from textures on software
// adapters (K a multiple of 64), the out-projection (K = H·D = 32) from uniform chunks
const CFG64: RefConfig = { numTokens: 20, dim: 64, depth: 1, heads: 2, dimHead: 16, ffMult: 2 };

for (const [cfg, B] of [[CFG, 2], [CFG64, 1]] as const) {
  gpuTest(
    `fused plan: 5 dispatches per layer, prefill + steps = full forward, unfused bits (dim ${cfg.dim})`,
    async (gpu) => {
      await fusedCase(gpu, cfg, B);
    },
  );
}

/** The fused plan's dispatches and its logits over a prefill and steps, against both references. */
async function fusedCase(gpu: Gpu, CFG: RefConfig, B: number) {
  {
    const N = 11, V = CFG.numTokens;
    const { model, state, values, fused, unfused } = await plans(gpu, CFG, B, 7);
    const step = fused(1);
    ok(step.fused && !unfused(1).fused);
    // software adapters with the table in a texture (dim % 64 = 0): the embedding folds into
    // the first qkv GEMV; else its own dispatch. Then the layers and the logits
    const folded = gpu.isSoftware && CFG.dim % 64 === 0;
    deepStrictEqual(step.dispatches.length, (folded ? 0 : 1) + 5 * CFG.depth + 1);
    const labels = step.dispatches.map((d) => d.label).join();
    deepStrictEqual(step.dispatches[0].label.endsWith(" embed"), folded, labels);
    // software adapters: attention reads the KV texture; W textures where K % 64 = 0
    deepStrictEqual(labels.includes("attention decode (texture)"), gpu.isSoftware);
    deepStrictEqual(labels.includes("wTex"), gpu.isSoftware && CFG.dim % 64 === 0, labels);
    const tokens = randomRows(B, N, V, 17);
    const want = decoderLogitsRef(values, CFG, tokens);
    const a = await decode(gpu, fused, tokens), b = await decode(gpu, unfused, tokens);
    let at = 0;
    a.forEach((got, c) => {
      const k = got.length / (B * V);
      for (let r = 0; r < B; r++) {
        for (let i = 0; i < k; i++) {
          const w = want.subarray((r * N + at + i) * V, (r * N + at + i + 1) * V);
          assertClose(got.subarray((r * k + i) * V, (r * k + i + 1) * V), w, {
            atol: 1e-4,
            rtol: 0,
            label: `row ${r} position ${at + i}`,
          });
        }
      }
      // software adapters run the narrow norm and register-tile GEMV the fused kernels reproduce
      if (gpu.isSoftware) deepStrictEqual(got, b[c], `chunk ${c}: fused and unfused bits`);
      at += k;
    });
    model.destroy();
    state.destroy();
  }
}

gpuTest("fused plan: weight textures follow writes into the parameters", async (gpu) => {
  const B = 1, N = 11, V = CFG64.numTokens;
  const { model, state, values, fused } = await plans(gpu, CFG64, B, 9);
  const tokens = randomRows(B, N, V, 19);
  const last = async (vals: typeof values) => {
    const got = (await decode(gpu, fused, tokens))[1]; // the step at position 5
    const want = decoderLogitsRef(vals, CFG64, tokens);
    assertClose(got, want.subarray(5 * V, 6 * V), { atol: 1e-4, rtol: 0, label: "position 5" });
  };
  await last(values);
  // a direct write into a weight (handing out params counts as one), then a training-like one
  // (grads handed out): the next fused forward copies the textures again
  const names = ["layers.0.1.1.weight", "to_logits.1.weight", "token_emb.weight"];
  for (const [i, name] of names.entries()) {
    const w = values[name].map((v, j) => v + 0.05 * Math.sin(j + i));
    const buffer = state.params.get(name);
    ok(buffer, name);
    if (i >= 1) void state.grads;
    gpu.write(buffer, Float32Array.from(w));
    values[name] = w;
    await last(values);
  }
  model.destroy();
  state.destroy();
});

gpuTest("fused plan: unfused kernels where the fused ones do not fit", async (gpu) => {
  // dimHead 6: no rotary pair of whole vec4s; V = 19: no vec4 logits rows (fused layers)
  for (const cfg of [{ ...CFG, dimHead: 6 }, { ...CFG, numTokens: 19 }]) {
    const B = 1, N = 11;
    const { model, state, values, fused } = await plans(gpu, cfg, B, 8);
    const p = fused(1);
    const layers = cfg.dimHead === 6 ? 10 : 5;
    const tail = 2; // unfused norm + logits in both (the layers decide the path)
    deepStrictEqual(p.dispatches.length, 1 + layers * cfg.depth + tail, JSON.stringify(cfg));
    const tokens = randomRows(B, N, cfg.numTokens, 3);
    const want = decoderLogitsRef(values, cfg, tokens);
    const got = await decode(gpu, fused, tokens);
    const V = cfg.numTokens;
    assertClose(got[4], want.subarray((N - 1) * V, N * V), { atol: 1e-4, rtol: 0, label: "last" });
    model.destroy();
    state.destroy();
  }
});

gpuTest(
  "decoding after Trainer steps uses the trained weights (texture copies refreshed)",
  async (gpu) => {
    // dim 64, heads 2 × 32: every fused GEMV reads its weight from a texture on software adapters
    const cfg = { numTokens: 256, dim: 64, depth: 2, heads: 2, dimHead: 32, maxSeqLen: 32 };
    const model = Decoder.create(gpu, cfg, { seed: 5 });
    const prompt = [randomRows(1, 6, 256, 23)[0]];
    // a step, a decode (which copies the weights into textures), then more steps, as train.ts
    // alternates training and comparisons
    const trainer = new Trainer(model, { batch: 2, seqLen: 16, lr: 3e-2, clipNorm: 1 });
    await trainer.loss(trainer.step([randomRows(2, 16, 256, 40)]));
    await baseDecoding(model, prompt, 12, { temperature: 0 });
    for (let s = 1; s < 4; s++) await trainer.loss(trainer.step([randomRows(2, 16, 256, 40 + s)]));
    // sampled with the trained model, then with the same weights loaded fresh (their textures
    // copied from the trained values; reading the weights out comes after the first decodes):
    // the same seed must give the same tokens, and sampling reads the whole distribution
    const seeds = [1, 2, 3];
    const opts = (seed: number) => ({ temperature: 1.5, filterThres: 0, seed });
    const got = [];
    for (const seed of seeds) got.push((await baseDecoding(model, prompt, 24, opts(seed))).tokens);
    const fresh = await Decoder.fromSafetensors(gpu, await model.toSafetensors());
    for (const [i, seed] of seeds.entries()) {
      const want = (await baseDecoding(fresh, prompt, 24, opts(seed))).tokens;
      deepStrictEqual(got[i], want, `seed ${seed}`);
    }
    fresh.destroy();
    trainer.destroy();
    model.destroy();
  },
);
