// The private chunk cache of the sampling kernels (kernels/sampling.ts, rowCommonWgsl's
// `cacheLength`): the same bits as reading storage in every pass, on the shapes where caching can
// go wrong (a last chunk shorter than the others, empty chunks, a chunk at the cap, ties at the
// top-k threshold in several chunks, greedy), and the reference's probabilities.
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import {
  rowCommonWgsl,
  SAMPLING_CACHE_CAP,
  samplingCacheLength,
  samplingWorkgroupSize,
} from "../kernels/sampling.ts";
import { probsKernel, sampleKernel } from "./kernels/sampling_kernels.ts";
import { assertClose, gpuTest, randomInts, randomNormal } from "./helpers.ts";
import { probsRef, topKRef } from "./reference/sampling.ts";

Deno.test("samplingCacheLength() caches whole chunks up to the cap, on software adapters only", () => {
  assertEquals(samplingCacheLength(256, true), 32);
  assertEquals(samplingCacheLength(203, true), 26); // ceil: the last chunk is shorter (21)
  assertEquals(samplingCacheLength(8 * SAMPLING_CACHE_CAP, true), SAMPLING_CACHE_CAP);
  assertEquals(samplingCacheLength(8 * SAMPLING_CACHE_CAP + 1, true), 0); // storage
  assertEquals(samplingCacheLength(256, false), 0);
  throws(() => rowCommonWgsl(8, SAMPLING_CACHE_CAP + 1), /cache length must be an integer/);
  throws(() => rowCommonWgsl(8, 1.5), /cache length must be an integer in \[0, 64\], got 1.5/);
});

/** Probabilities and one token per row, with the given cache length. */
async function run(
  gpu: Gpu,
  x: Float32Array<ArrayBuffer>,
  o: { rows: number; V: number; filterThres: number; temperature: number },
  cache: number,
): Promise<{ probs: Uint32Array; tokens: number[] }> {
  const { rows, V } = o;
  const logits = gpu.upload(`logits (${rows}, ${V})`, x);
  const probs = gpu.buffer(`probs (${rows}, ${V})`, rows * V * 4);
  const counters = gpu.upload(
    `counters (${rows}, 4)`,
    new Uint32Array(randomInts(rows * 4, 2 ** 32, 3)),
  );
  const tokens = gpu.buffer(`tokens (${rows})`, rows * 4);
  const s = { ...o, numTokens: V, logits, rows, cache };
  gpu.run("cached sampling", [
    probsKernel(gpu, { ...s, probs }),
    sampleKernel(gpu, { ...s, counters, tokens, seed: 5 }),
  ]);
  return {
    probs: new Uint32Array(await gpu.read(probs)),
    tokens: Array.from(await gpu.readU32(tokens)),
  };
}

/**
 * Logits rounded to halves: many equal values, so ties at the k-th largest, −0 and +0 among them
 * (`Math.round` gives −0 for small negatives; the kernels and the reference take them as ties).
 */
function tiedLogits(n: number, seed: number): Float32Array<ArrayBuffer> {
  return randomNormal(n, seed, 1.5).map((v) => Math.round(v * 2) / 2);
}

gpuTest("the private chunk cache gives the bits of reading storage", async (gpu) => {
  const cases = [
    { V: 256, filterThres: 0.9, temperature: 1, ties: false }, // 8 chunks of 32
    { V: 203, filterThres: 0.9, temperature: 0.8, ties: false }, // last chunk shorter
    { V: 9, filterThres: 0.5, temperature: 1, ties: false }, // short and empty chunks
    { V: 8 * SAMPLING_CACHE_CAP, filterThres: 0.7, temperature: 1.2, ties: false }, // at the cap
    { V: 203, filterThres: 0.6, temperature: 1, ties: true }, // ties at the threshold
    { V: 203, filterThres: 0.9, temperature: 0, ties: true }, // greedy, first max on ties
  ];
  for (const [c, o] of cases.entries()) {
    const rows = 24, V = o.V;
    const x = o.ties ? tiedLogits(rows * V, 40 + c) : randomNormal(rows * V, 40 + c, 2);
    const wg = samplingWorkgroupSize(V, gpu.isSoftware), chunk = Math.ceil(V / wg);
    assert(chunk <= SAMPLING_CACHE_CAP, `case ${c}: a chunk of ${chunk} cannot be cached`);
    const label = `case ${c} ${JSON.stringify(o)}`;
    const cached = await run(gpu, x, { ...o, rows }, chunk);
    const storage = await run(gpu, x, { ...o, rows }, 0);
    assertEquals(cached.tokens, storage.tokens, `${label}: tokens`);
    const bad = cached.probs.findIndex((w, i) => w !== storage.probs[i]);
    assertEquals(bad, -1, `${label}: probability bits differ first at ${bad}`);
    const got = new Float32Array(cached.probs.buffer);
    const k = o.temperature === 0 ? 1 : topKRef(V, o.filterThres);
    let spanning = 0;
    for (let r = 0; r < rows; r++) {
      const row = x.subarray(r * V, (r + 1) * V), p = got.subarray(r * V, (r + 1) * V);
      assertClose(p, probsRef(row, o.filterThres, o.temperature), {
        atol: 1e-6,
        rtol: 1e-4,
        label: `${label} row ${r}`,
      });
      assertEquals(p.filter((v) => v > 0).length, k, `${label} row ${r}: kept`);
      assert(cached.tokens[r] < V && p[cached.tokens[r]] > 0, `${label} row ${r}: token`);
      // ties at the k-th largest, kept in some chunks and dropped in later ones
      const thr = [...row].sort((a, b) => b - a)[k - 1];
      const tied = [...row.keys()].filter((j) => row[j] === thr);
      const keptChunks = new Set(tied.filter((j) => p[j] > 0).map((j) => Math.floor(j / chunk)));
      if (tied.some((j) => p[j] === 0) && keptChunks.size > 1) spanning++;
    }
    if (o.ties && o.temperature > 0) assert(spanning > rows / 2, `${label}: ${spanning} rows`);
  }
});
