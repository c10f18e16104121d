/**
 * Decoding that is never silently wrong and stays bounded: models whose logits are not finite
 * are refused with an error naming the row, position, step and model; acceptance statistics count
 * only emitted drafts; the KV-cache pool stays bounded over many lengths, and a longer pooled
 * cache decodes exactly as a fitting one.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import type { DecoderConfig } from "../model/config.ts";
import { Decoder } from "../model/decoder.ts";
import { CachePool, roundedCacheLength } from "../model/cache_pool.ts";
import type { KVCache } from "../model/kv_cache.ts";
import { baseDecoding, speculativeDecoding } from "../model/decoding.ts";
import { gpuTest } from "./helpers.ts";

const CFG: DecoderConfig = {
  numTokens: 16,
  dim: 16,
  depth: 2,
  heads: 2,
  dimHead: 8,
  ffMult: 2,
  maxSeqLen: 64,
};

/** A model of CFG (seed) with `value` written into rows `rows` of parameter `name`. */
function poisoned(
  gpu: Gpu,
  cfg: DecoderConfig,
  seed: number,
  name: string,
  rows: number[],
  value = NaN,
): Decoder {
  const model = Decoder.create(gpu, cfg, { seed });
  const buffer = model.params.get(name)!;
  const C = cfg.dim;
  for (const r of rows) {
    gpu.device.queue.writeBuffer(buffer, r * C * 4, new Float32Array(C).fill(value));
  }
  return model;
}

const SETTINGS = [
  { temperature: 0, filterThres: 0 },
  { temperature: 0, filterThres: 0.9 },
  { temperature: 1, filterThres: 0 },
  { temperature: 1, filterThres: 0.9 },
];

gpuTest(
  "decoding refuses NaN logits of the target or the draft, naming row and step",
  async (gpu) => {
    const all = Array.from({ length: CFG.numTokens }, (_, j) => j);
    const target = Decoder.create(gpu, CFG, { seed: 1 });
    const draft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 2 });
    const nanAll = poisoned(gpu, CFG, 1, "to_logits.1.weight", all); // every logit NaN
    const nanOne = poisoned(gpu, CFG, 1, "to_logits.1.weight", [5]); // logit 5 NaN
    const nanDraft = poisoned(gpu, { ...CFG, depth: 1 }, 2, "to_logits.1.weight", [11]);
    const prompt = [[1, 2]];
    for (const s of SETTINGS) {
      const o = { ...s, seed: 3 };
      const at = /for row 0 at position 2 \(the row's step 1/;
      for (const m of [nanAll, nanOne]) {
        await rejects(() => baseDecoding(m, prompt, 6, o), (e: Error) => {
          assert(
            /base decoding: the model produced logits that cannot be sampled \(NaN\)/.test(
              e.message,
            ),
            e.message,
          );
          assert(at.test(e.message), e.message);
          return true;
        });
      }
      await rejects(
        () => speculativeDecoding(nanOne, draft, prompt, 8, { ...o, gamma: 3 }),
        /the target model produced logits that cannot be sampled \(NaN\) for row 0 at position 2 \(the row's step 1, verification row 0\)/,
      );
      await rejects(
        () => speculativeDecoding(target, nanDraft, prompt, 8, { ...o, gamma: 3 }),
        /the draft model produced logits that cannot be sampled \(NaN\) for row 0 at position 2 \(the row's step 1, draft token 1 of the step\)/,
      );
      // a self-draft with NaN logits is stopped by its first draft step
      await rejects(
        () => speculativeDecoding(nanOne, nanOne, prompt, 8, { ...o, gamma: 2 }),
        /the draft model .*\(NaN\) for row 0 at position 2/,
      );
    }
    // the clean models still decode, and every token is in the vocabulary
    const ok = await speculativeDecoding(target, draft, prompt, 12, { gamma: 3, seed: 1 });
    assert(ok.tokens.flat().every((t) => t >= 0 && t < CFG.numTokens));
  },
);

/**
 * A model whose logits hold +∞ and −∞ at every position: the final norm keeps only channel 0
 * (the others are multiplied by 0), and the logits weights of tokens 3 and 9 on that channel are
 * +∞ and −∞, so one of the two logits is +∞ and the other −∞ (the rest stay finite).
 */
function infinite(gpu: Gpu, cfg: DecoderConfig, seed: number): Decoder {
  const model = Decoder.create(gpu, cfg, { seed });
  const C = cfg.dim, norm = new Float32Array(C);
  norm[0] = 1;
  gpu.device.queue.writeBuffer(model.params.get("to_logits.0.weight")!, 0, norm);
  const w = model.params.get("to_logits.1.weight")!;
  gpu.device.queue.writeBuffer(w, 3 * C * 4, new Float32Array([Infinity]));
  gpu.device.queue.writeBuffer(w, 9 * C * 4, new Float32Array([-Infinity]));
  return model;
}

gpuTest(
  "±Inf logits: refused when sampling, the first +Inf is the argmax when greedy",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 1 });
    const draft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 2 });
    const infTarget = infinite(gpu, CFG, 1), infDraft = infinite(gpu, { ...CFG, depth: 1 }, 2);
    const prompt = [[1, 2], [7, 7]];
    for (const filterThres of [0, 0.9]) {
      const o = { temperature: 1, filterThres, seed: 3 };
      await rejects(
        () => baseDecoding(infTarget, prompt, 6, o),
        /the model produced logits that cannot be sampled \(\+Inf\) for row 0 at position 2/,
      );
      await rejects(
        () => speculativeDecoding(infTarget, draft, prompt, 8, { ...o, gamma: 2 }),
        /the target model produced logits that cannot be sampled \(\+Inf\) for row 0/,
      );
      await rejects(
        () => speculativeDecoding(target, infDraft, prompt, 8, { ...o, gamma: 2 }),
        /the draft model produced logits that cannot be sampled \(\+Inf\) for row 0/,
      );
      // greedy: each token is the one whose logit is +Inf (3 or 9), in base and speculative
      // decoding alike, with either model infinite
      const g = { temperature: 0, filterThres };
      const base = await baseDecoding(infTarget, prompt, 10, g);
      assert(base.tokens.flat().every((t) => t === 3 || t === 9), `${base.tokens}`);
      const spec = await speculativeDecoding(infTarget, draft, prompt, 10, { ...g, gamma: 2 });
      assertEquals(spec.tokens, base.tokens);
      const clean = await baseDecoding(target, prompt, 10, g);
      const specDraft = await speculativeDecoding(target, infDraft, prompt, 10, { ...g, gamma: 2 });
      assertEquals(specDraft.tokens, clean.tokens);
    }
  },
);

gpuTest("a row that meets NaN mid-decode is named with its own position and step", async (gpu) => {
  const prompt = [[1, 2], [3, 4], [5, 6]], P = 2, seqLen = 14;
  const clean = Decoder.create(gpu, CFG, { seed: 4 });
  const ref = await baseDecoding(clean, prompt, seqLen, { temperature: 0 });
  // a token row 1 first emits at step k + 1 (k ≥ 2) that no other row ever sees: poisoning its
  // embedding makes row 1's logits NaN from the step that feeds it, k + 2, at position P + k + 1
  const seen = (b: number, upTo: number) =>
    new Set([...prompt[b], ...ref.tokens[b].slice(0, upTo)]);
  let k = -1;
  for (let i = 2; i < seqLen - P - 1 && k < 0; i++) {
    const t = ref.tokens[1][i];
    const elsewhere = [0, 2].some((b) => seen(b, seqLen).has(t));
    if (!seen(1, i).has(t) && !elsewhere) k = i;
  }
  assert(k >= 0, `no usable token in ${JSON.stringify(ref.tokens)}`);
  const bad = poisoned(gpu, CFG, 4, "token_emb.weight", [ref.tokens[1][k]]);
  await rejects(
    () => baseDecoding(bad, prompt, seqLen, { temperature: 0, chunkSteps: 3 }),
    new RegExp(
      `\\(NaN\\) for row 1 at position ${P + k + 1} \\(the row's step ${k + 2}\\); no token`,
    ),
  );
});

gpuTest("acceptance statistics count the accepted drafts that were emitted", async (gpu) => {
  // the issue's example: a self-draft, 15 prompt tokens, seqLen 16, gamma 8: one token emitted
  const model = Decoder.create(gpu, CFG, { seed: 6 });
  const prompt = [Array.from({ length: 15 }, (_, i) => (i * 7) % 16)];
  for (const temperature of [0, 1]) {
    const out = await speculativeDecoding(model, model, prompt, 16, { gamma: 8, temperature });
    assertEquals(out.tokens[0].length, 1);
    assertEquals(out.steps, 1);
    assertEquals(out.acceptedMeanRaw, 8, `T ${temperature}: the self-draft accepts all 8`);
    assertEquals(out.acceptedMean, 1, `T ${temperature}: only one of them was emitted`);
    assertEquals(out.acceptedPerPosition, [1, 0, 0, 0, 0, 0, 0, 0]);
  }
  // far from the end the two agree
  const long = await speculativeDecoding(model, model, [[1, 2]], 40, { gamma: 2, temperature: 0 });
  assert(long.acceptedMean <= long.acceptedMeanRaw && long.acceptedMean > 1.5);
  const sum = long.acceptedPerPosition.reduce((a, b) => a + b, 0);
  assert(Math.abs(sum - long.acceptedMean) < 1e-9, `${sum} vs ${long.acceptedMean}`);
});

Deno.test("CachePool reuses the shortest long-enough free cache and evicts LRU beyond maxFree", () => {
  const made: { batch: number; maxLen: number; freed: boolean }[] = [];
  const pool = new CachePool((batch, maxLen) => {
    const c = { batch, maxLen, freed: false };
    made.push(c);
    return {
      batch,
      maxLen,
      layers: [{ size: batch * maxLen } as GPUBuffer],
      destroy: () => void (c.freed = true),
    } as unknown as KVCache;
  }, { maxFree: 2 });
  assertEquals([5, 8, 9, 17, 100, 129].map(roundedCacheLength), [5, 8, 10, 20, 112, 160]);
  const a = pool.acquire(1, 17);
  assertEquals(a.cache.maxLen, 20);
  a.release();
  a.release(); // twice is harmless
  const b = pool.acquire(1, 10); // reuses the longer free cache
  assertEquals(b.cache, a.cache);
  const c = pool.acquire(1, 10); // that one is busy: a new one
  assertEquals(c.cache.maxLen, 10);
  const d = pool.acquire(2, 10); // another batch: a new one
  b.release();
  c.release();
  d.release(); // three free, maxFree 2: the least recently used (b's) is freed
  assertEquals(pool.size, 2);
  assertEquals(made.map((m) => m.freed), [true, false, false]);
  assertEquals(pool.bytes, 10 + 20);
  pool.destroy();
  assert(made.every((m) => m.freed));
});

gpuTest(
  "the cache pool stays bounded over many lengths; a longer cache decodes the same",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 8 });
    const draft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 9 });
    const prompt = [[3, 1], [4, 1]], G = 3;
    // The largest pool entry: a cache of the longest length with every plan a decode adopts over
    // it (prefill, step, verify; the fused plans pad their inputs to 64 KiB, so plans outweigh
    // the KV cache here), measured on a fresh model whose base decode reuses the speculative
    // decode's longer cache.
    const largest = Decoder.create(gpu, CFG, { seed: 8 });
    const largestDraft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 9 });
    await speculativeDecoding(largest, largestDraft, prompt, CFG.maxSeqLen!, { gamma: G, seed: 1 });
    await baseDecoding(largest, prompt, CFG.maxSeqLen!, { seed: 1, chunkSteps: 64 });
    assertEquals(largest.caches.size, 1);
    const bound = 4 * largest.caches.bytes;
    largest.destroy();
    largestDraft.destroy();
    let most = 0;
    const lengths = new Set<number>(); // the distinct cache lengths a pool without eviction keeps
    for (let seqLen = 3; seqLen <= CFG.maxSeqLen!; seqLen += 1) {
      const spec = seqLen % 2 === 0;
      if (spec) await speculativeDecoding(model, draft, prompt, seqLen, { gamma: G, seed: seqLen });
      else await baseDecoding(model, prompt, seqLen, { seed: seqLen, chunkSteps: 64 });
      lengths.add(roundedCacheLength(spec ? seqLen + G + 1 : seqLen));
      most = Math.max(most, model.caches.bytes);
      assert(model.caches.size <= 4, `${model.caches.size} caches pooled after seqLen ${seqLen}`);
    }
    assert(most <= bound, `the pool grew to ${most} bytes, over ${bound}`);
    assert(lengths.size > 3 * 4, "the lengths must be many enough to show the bound");
    console.log(`pool: at most ${most} bytes (bound ${bound}; ${lengths.size} distinct lengths)`);
    // the pool now holds long caches: a short decode reuses one, with the same tokens as a fresh
    // model (same seed) whose pool gives it a fitting cache
    const probe = model.caches.acquire(2, 20);
    assert(probe.cache.maxLen > 20, `expected a longer cache, got ${probe.cache.maxLen}`);
    probe.release();
    const fresh = Decoder.create(gpu, CFG, { seed: 8 });
    const freshDraft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 9 });
    for (const temperature of [0, 1]) {
      const o = { temperature, seed: 5 };
      assertEquals(
        (await baseDecoding(model, prompt, 20, o)).tokens,
        (await baseDecoding(fresh, prompt, 20, o)).tokens,
      );
      assertEquals(
        (await speculativeDecoding(model, draft, prompt, 17, { ...o, gamma: G })).tokens,
        (await speculativeDecoding(fresh, freshDraft, prompt, 17, { ...o, gamma: G })).tokens,
      );
    }
    for (const m of [model, draft, fresh, freshDraft]) m.destroy();
  },
);

gpuTest(
  "decoding stops with an error, not a hang, when the GPU does not run its steps",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 3 });
    // a destroyed weight makes every submit invalid: the state never advances
    model.params.get("to_logits.1.weight")!.destroy();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hang = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("decoding hung")), 20_000);
    });
    try {
      await rejects(
        Promise.race([baseDecoding(model, [[1, 2, 3]], 12, { temperature: 0 }), hang]),
        /WebGPU validation error during baseDecoding|the GPU did not run the steps/,
      );
    } finally {
      clearTimeout(timer);
    }
  },
);
