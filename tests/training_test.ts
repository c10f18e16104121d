/**
 * Training on the GPU: gradients of the whole model against float64 finite differences of the
 * reference loss, overfitting a batch, accumulation equal to one big batch, no allocation per
 * step, and the bad-input errors.
 */
import { ok, rejects, throws } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { Trainer } from "../model/trainer.ts";
import { decoderLossRef, type RefConfig } from "./reference/model.ts";
import { assertClose, gpuTest, randomRows } from "./helpers.ts";

const TINY: RefConfig = { numTokens: 11, dim: 8, depth: 2, heads: 2, dimHead: 4, ffMult: 4 };

function rows(B: number, n: number, seed: number, V: number): number[][] {
  return randomRows(B, n, V, seed);
}

gpuTest(
  "Decoder.gradients() matches finite differences of the float64 reference loss",
  async (gpu) => {
    const model = Decoder.create(gpu, TINY, { seed: 11 });
    const tokens = rows(2, 6, 5, TINY.numTokens);
    const grads = await model.gradients(tokens);
    const p = await model.paramValues();
    // float64 copies of the parameters, perturbed one element at a time
    const p64: Record<string, Float64Array> = {};
    for (const [k, v] of Object.entries(p)) p64[k] = Float64Array.from(v);
    const h = 1e-5;
    for (const [name, values] of Object.entries(p64)) {
      // every element of small tensors, an evenly spread 40 of larger ones (keeps the test fast)
      const stride = Math.max(1, Math.floor(values.length / 40));
      const idx = Array.from({ length: Math.ceil(values.length / stride) }, (_, j) => j * stride);
      const fd = new Float64Array(idx.length);
      for (const [j, i] of idx.entries()) {
        const keep = values[i];
        values[i] = keep + h;
        const up = decoderLossRef(p64, TINY, tokens);
        values[i] = keep - h;
        const down = decoderLossRef(p64, TINY, tokens);
        values[i] = keep;
        fd[j] = (up - down) / (2 * h);
      }
      assertClose(idx.map((i) => grads[name][i]), fd, {
        atol: 2e-5,
        rtol: 2e-3,
        label: `d loss / d ${name}`,
      });
    }
    model.destroy();
  },
);

gpuTest("Trainer overfits one fixed batch", async (gpu) => {
  const model = Decoder.create(gpu, { numTokens: 16, dim: 32, depth: 2, heads: 2, dimHead: 16 }, {
    seed: 2,
  });
  const trainer = new Trainer(model, { batch: 2, seqLen: 12, lr: 3e-3, clipNorm: 1 });
  const batch = rows(2, 12, 9, 16);
  let first = NaN, last = NaN;
  for (let s = 0; s < 40; s++) {
    const step = trainer.step([batch]);
    if (s === 0) first = await trainer.loss(step);
    if (s === 39) last = await trainer.loss(step);
  }
  ok(last < first * 0.3, `loss fell from ${first} to ${last}`);
  model.destroy();
});

gpuTest("accumulating 4 micro-batches equals one 4× batch", async (gpu) => {
  const cfg = { numTokens: 13, dim: 16, depth: 1, heads: 2, dimHead: 8 };
  const a = Decoder.create(gpu, cfg, { seed: 4 }), b = Decoder.create(gpu, cfg, { seed: 4 });
  const data = rows(8, 7, 21, 13);
  const ta = new Trainer(a, { batch: 2, seqLen: 7, accumulate: 4, lr: 1e-2, clipNorm: 0.5 });
  const tb = new Trainer(b, { batch: 8, seqLen: 7, accumulate: 1, lr: 1e-2, clipNorm: 0.5 });
  for (let s = 0; s < 2; s++) {
    const sa = ta.step([data.slice(0, 2), data.slice(2, 4), data.slice(4, 6), data.slice(6, 8)]);
    const sb = tb.step([data]);
    const [la, lb] = [await ta.loss(sa), await tb.loss(sb)];
    ok(Math.abs(la - lb) < 1e-5, `step ${s} loss ${la} vs ${lb}`);
    const [sta, stb] = [await ta.stats(), await tb.stats()];
    ok(
      Math.abs(sta.gradNorm - stb.gradNorm) < 1e-5 * stb.gradNorm,
      `grad norm ${sta.gradNorm} vs ${stb.gradNorm}`,
    );
  }
  const [pa, pb] = [await a.paramValues(), await b.paramValues()];
  for (const k of Object.keys(pa)) assertClose(pa[k], pb[k], { atol: 1e-5, rtol: 1e-4, label: k });
  a.destroy();
  b.destroy();
});

gpuTest(
  "Trainer allocates nothing per step over 1,000 steps, results read along the way",
  async (gpu) => {
    const model = Decoder.create(gpu, TINY, { seed: 1 });
    const trainer = new Trainer(model, { batch: 2, seqLen: 5, accumulate: 2, lr: 1e-3 });
    const mb = rows(2, 5, 3, TINY.numTokens);
    await trainer.result(trainer.step([mb, mb]));
    const before = gpu.buffersCreated;
    for (let s = 1; s <= 1000; s++) {
      const i = trainer.step([mb, mb]);
      if (s % 50 === 0) {
        const r = await trainer.result(i - 1); // the previous step, while this one runs
        ok(Number.isFinite(r.loss) && r.gradNorm > 0 && !r.skipped, JSON.stringify(r));
      }
    }
    const last = await trainer.result(1000);
    ok(Number.isFinite(last.loss));
    const stats = await trainer.stats();
    ok(
      Math.abs(stats.gradNorm - last.gradNorm) <= 1e-6 * last.gradNorm,
      "result() carries the step's norm",
    );
    ok(
      gpu.buffersCreated === before,
      `${gpu.buffersCreated - before} buffers created in 1,000 steps`,
    );
    trainer.destroy();
    model.destroy();
  },
);

gpuTest("Trainer reports non-finite losses with the step and can skip them", async (gpu) => {
  const model = Decoder.create(gpu, TINY, { seed: 1 });
  const trainer = new Trainer(model, { batch: 1, seqLen: 4, lr: 1e-3, skipNonFinite: true });
  const good = [[1, 2, 3, 4]];
  await trainer.loss(trainer.step([good]));
  const before = await model.paramValues();
  // poison one embedding row: its token's loss and every gradient become NaN
  gpu.write(
    model.params.get("token_emb.weight")!,
    new Float32Array(TINY.dim).fill(NaN),
    5 * TINY.dim * 4,
  );
  const s = trainer.step([[[5, 2, 3, 4]]]);
  await rejects(() => trainer.loss(s), /loss is NaN at step 1/);
  const stats = await trainer.stats();
  ok(stats.lastSkipped && !Number.isFinite(stats.gradNorm), "the step was skipped");
  const after = await model.paramValues();
  assertClose(after["layers.0.1.1.weight"], before["layers.0.1.1.weight"], {
    atol: 0,
    rtol: 0,
    label: "unchanged",
  });
  model.destroy();
});

gpuTest("Trainer rejects bad options and mis-shaped batches", (gpu) => {
  const model = Decoder.create(gpu, { ...TINY, maxSeqLen: 16 }, { seed: 1 });
  throws(
    () => new Trainer(model, { batch: 1, seqLen: 4, lr: 0 }),
    /lr must be a finite number > 0, got 0/,
  );
  throws(
    () => new Trainer(model, { batch: 1, seqLen: 4, lr: NaN }),
    /lr must be a finite number > 0, got NaN/,
  );
  throws(() => new Trainer(model, { batch: 1, seqLen: 4, clipNorm: 0 }), /clipNorm/);
  throws(
    () => new Trainer(model, { batch: 0, seqLen: 4 }),
    /batch must be a positive integer, got 0/,
  );
  throws(
    () => new Trainer(model, { batch: 1, seqLen: 17 }),
    /seqLen 17 is over the model's maxSeqLen 16/,
  );
  const t = new Trainer(model, { batch: 2, seqLen: 4, accumulate: 2 });
  throws(() => t.step([[[1, 2, 3, 4], [1, 2, 3, 4]]]), /takes 2 micro-batches/);
  throws(
    () => t.step([[[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]]),
    /micro-batch 0 is 2 × 5; this trainer was built for 2 × 4/,
  );
  throws(() => t.step([[[1, 2, 3, 4]], [[1, 2, 3, 4]]]), /micro-batch 0 is 1 × 4/);
  throws(
    () => t.step([[[1, 2, 3, 40], [1, 2, 3, 4]], [[1, 2, 3, 4], [1, 2, 3, 4]]]),
    /micro-batch 0\[0\]\[3\] = 40/,
  );
  model.destroy();
});
