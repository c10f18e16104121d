import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { stateOffsets } from "../kernels/decode_state.ts";
import { baseStepKernel, draftStepKernel } from "../kernels/decode_step.ts";
import { RNG_PURPOSE, topK } from "../kernels/sampling.ts";
import { speculativeStatsWidth } from "../kernels/speculative.ts";
import { philoxKernel, probsKernel, sampleKernel } from "./kernels/sampling_kernels.ts";
import { assertClose, gpuTest, randomInts, randomNormal } from "./helpers.ts";
import {
  chiSquare,
  gammaQ,
  philox4x32,
  probsRef,
  sampleRef,
  topKRef,
  uniformRef,
} from "./reference/sampling.ts";

Deno.test("philox4x32() reference matches the Random123 known answers", () => {
  const hex = (s: string) => s.split(" ").map((w) => parseInt(w, 16));
  const kat: [string, string, string][] = [
    [
      "00000000 00000000 00000000 00000000",
      "00000000 00000000",
      "6627e8d5 e169c58d bc57ac4c 9b00dbd8",
    ],
    [
      "ffffffff ffffffff ffffffff ffffffff",
      "ffffffff ffffffff",
      "408f276d 41c83b0e a20bc7c6 6d5451fd",
    ],
    [
      "243f6a88 85a308d3 13198a2e 03707344",
      "a4093822 299f31d0",
      "d16cfe09 94fdcceb 5001e420 24126ea1",
    ],
  ];
  for (const [ctr, key, out] of kat) assertEquals(philox4x32(hex(ctr), hex(key)), hex(out));
});

Deno.test("chiSquare() gives known p-values and rejects a wrong law", () => {
  // χ² quantiles: P(χ²₁ ≥ 3.841459) = 0.05, P(χ²₁₀ ≥ 18.307038) = 0.05, P(χ²₃ ≥ 11.344867) = 0.01
  assertClose([gammaQ(0.5, 3.841459 / 2)], [0.05], { atol: 1e-6, label: "dof 1" });
  assertClose([gammaQ(5, 18.307038 / 2)], [0.05], { atol: 1e-6, label: "dof 10" });
  assertClose([gammaQ(1.5, 11.344867 / 2)], [0.01], { atol: 1e-6, label: "dof 3" });
  const law = [0.1, 0.2, 0.3, 0.4];
  assert(chiSquare([100, 200, 300, 400], law).pValue > 0.99);
  assert(chiSquare([250, 250, 250, 250], law).pValue < 1e-10);
  assertEquals(chiSquare([1, 0, 0, 999], [0, 0.5, 0, 0.5]).pValue, 0); // impossible cell hit
  // small cells are pooled: 3 cells of expectation 2 make one of 6, beside 2 big ones
  assertEquals(chiSquare([1, 1, 1, 497, 500], [0.002, 0.002, 0.002, 0.497, 0.497]).dof, 2);
  // a pool still under 5 joins the smallest big cell
  assertEquals(chiSquare([1, 1, 1, 497, 500], [0.001, 0.001, 0.001, 0.4985, 0.4985]).dof, 1);
});

/** Runs dispatches and reads a u32 / f32 buffer back. */
async function runRead(gpu: Gpu, label: string, d: Parameters<Gpu["run"]>[1], out: GPUBuffer) {
  gpu.run(label, d);
  return await gpu.readF32(out);
}

gpuTest("philoxKernel() matches the reference bit for bit", async (gpu) => {
  const rows = 37, seed = 2 ** 40 + 12345; // a seed over 2³² exercises the high key word
  const ctr = new Uint32Array(randomInts(rows * 4, 2 ** 32, 7));
  ctr.set([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], 0);
  const counters = gpu.upload("counters (37, 4)", ctr);
  const out = gpu.buffer("philox out (37, 4)", rows * 16);
  gpu.run("philox", [philoxKernel(gpu, { counters, out, rows, seed })]);
  const got = Array.from(await gpu.readU32(out));
  const key = [seed >>> 0, Math.floor(seed / 2 ** 32)];
  const want = Array.from(
    { length: rows },
    (_, r) => philox4x32(Array.from(ctr.subarray(4 * r, 4 * r + 4)), key),
  ).flat();
  assertEquals(got, want);
});

Deno.test("topK() is the reference's ceil((1 − filterThres) · V)", () => {
  assertEquals(topK(256, 0.9), 26);
  for (const [V, t] of [[256, 0.9], [8, 0], [37, 0.5], [10, 0.9], [1, 0.99], [1001, 0.25]]) {
    assertEquals(topK(V, t), topKRef(V, t));
  }
});

gpuTest("probsKernel() matches the reference on odd sizes", async (gpu) => {
  const cases = [
    { rows: 5, V: 37, filterThres: 0.9, temperature: 1 },
    { rows: 3, V: 256, filterThres: 0.9, temperature: 0.7 },
    { rows: 2, V: 1001, filterThres: 0.5, temperature: 1.3 }, // several logits per thread
    { rows: 4, V: 8, filterThres: 0, temperature: 1 },
    { rows: 3, V: 33, filterThres: 0.3, temperature: 0 }, // greedy
    { rows: 1, V: 1, filterThres: 0.5, temperature: 2 },
    { rows: 2, V: 37, filterThres: 0.9, temperature: 1e-20 }, // 1/T clamped like safe_div: one-hot
  ];
  for (const [c, { rows, V, filterThres, temperature }] of cases.entries()) {
    const x = randomNormal(rows * V, 100 + c, 2);
    const logits = gpu.upload(`logits (${rows}, ${V})`, x);
    const probs = gpu.buffer(`probs (${rows}, ${V})`, rows * V * 4);
    const got = await runRead(gpu, "probs", [
      probsKernel(gpu, { logits, probs, rows, numTokens: V, temperature, filterThres }),
    ], probs);
    const want = new Float64Array(rows * V);
    for (let r = 0; r < rows; r++) {
      want.set(probsRef(x.subarray(r * V, (r + 1) * V), filterThres, temperature), r * V);
    }
    assertClose(got, want, { atol: 1e-6, rtol: 1e-4, label: `case ${c} V=${V}` });
    // exactly k survive (greedy: 1)
    const k = temperature < 1e-6 ? 1 : topKRef(V, filterThres);
    for (let r = 0; r < rows; r++) {
      assertEquals(got.subarray(r * V, (r + 1) * V).filter((v) => v > 0).length, k);
    }
  }
});

gpuTest(
  "probsKernel(): −0 and +0 at the k-th value are ties, as the reference's sort has them",
  async (gpu) => {
    // k = ceil(0.5·8) = 4: 3, 2, 1 and then one of the zeros: the lowest index, whatever its sign
    for (const zeros of [[-0, 0, 0, -0], [0, -0, -0, 0]]) {
      const x = new Float32Array([zeros[0], 3, zeros[1], 2, -1, zeros[2], 1, zeros[3]]);
      const logits = gpu.upload("signed zeros (1, 8)", x);
      const probs = gpu.buffer("probs (1, 8)", 32);
      const got = await runRead(gpu, "probs signed zeros", [
        probsKernel(gpu, {
          logits,
          probs,
          rows: 1,
          numTokens: 8,
          temperature: 1,
          filterThres: 0.5,
        }),
      ], probs);
      const kept = Array.from(got).flatMap((v, j) => v > 0 ? [j] : []);
      assertEquals(kept, [0, 1, 3, 6], `zeros ${zeros.map((z) => Object.is(z, -0) ? "-0" : "0")}`);
      assertClose(got, probsRef(x, 0.5, 1), { atol: 1e-7 });
    }
  },
);

gpuTest("probsKernel() keeps the lowest indices among ties at the k-th value", async (gpu) => {
  // k = ceil(0.25·10) = 3: the 2 at index 7, then the first two of the 1s (indices 1, 2)
  const x = new Float32Array([
    0,
    1,
    1,
    1,
    -1,
    0,
    1,
    2,
    1,
    0,
    /* row 2: greedy ties */ 5,
    7,
    7,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  const logits = gpu.upload("tied logits (2, 10)", x);
  const probs = gpu.buffer("probs (2, 10)", 80);
  const got = await runRead(gpu, "probs ties", [
    probsKernel(gpu, { logits, probs, rows: 1, numTokens: 10, temperature: 1, filterThres: 0.75 }),
  ], probs);
  const kept = Array.from(got.subarray(0, 10)).flatMap((v, j) => v > 0 ? [j] : []);
  assertEquals(kept, [1, 2, 7]);
  assertClose(got.subarray(0, 10), probsRef(x.subarray(0, 10), 0.75, 1), { atol: 1e-7 });
  // greedy: first index of the max
  const logits2 = gpu.upload("tied logits row 2 (1, 10)", x.slice(10));
  const g = await runRead(gpu, "probs greedy ties", [
    probsKernel(gpu, {
      logits: logits2,
      probs,
      rows: 1,
      numTokens: 10,
      temperature: 0,
      filterThres: 0.9,
    }),
  ], probs);
  assertEquals(Array.from(g.subarray(0, 10)), [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
});

/** Samples one token per row from logits rows with the given counters. */
async function sample(
  gpu: Gpu,
  x: Float32Array<ArrayBuffer>,
  ctr: Uint32Array<ArrayBuffer>,
  o: { rows: number; V: number; filterThres: number; temperature: number; seed: number },
): Promise<number[]> {
  const logits = gpu.upload(`logits (${o.rows}, ${o.V})`, x);
  const counters = gpu.upload(`counters (${o.rows}, 4)`, ctr);
  const tokens = gpu.buffer(`tokens (${o.rows})`, o.rows * 4);
  gpu.run("sample", [
    sampleKernel(gpu, { ...o, logits, counters, tokens, numTokens: o.V }),
  ]);
  return Array.from(await gpu.readU32(tokens));
}

gpuTest("sampleKernel() draws the reference's token for the same uniform", async (gpu) => {
  for (
    const o of [
      { rows: 64, V: 37, filterThres: 0.5, temperature: 1, seed: 3 },
      { rows: 16, V: 700, filterThres: 0, temperature: 0.8, seed: 2 ** 33 + 5 },
    ]
  ) {
    const x = randomNormal(o.rows * o.V, 11);
    const ctr = new Uint32Array(randomInts(o.rows * 4, 2 ** 32, 12));
    const got = await sample(gpu, x, ctr, o);
    let mismatches = 0;
    for (let r = 0; r < o.rows; r++) {
      const p = probsRef(x.subarray(r * o.V, (r + 1) * o.V), o.filterThres, o.temperature);
      const u = uniformRef(Array.from(ctr.subarray(4 * r, 4 * r + 4)), o.seed);
      const want = sampleRef(p, u);
      if (got[r] !== want) {
        // only acceptable when u sits within f32 rounding of a CDF boundary
        let cum = 0;
        for (let j = 0; j < Math.min(got[r], want); j++) cum += p[j];
        const margin = Math.abs(cum + p[Math.min(got[r], want)] - u);
        assert(margin < 1e-5, `row ${r}: got ${got[r]}, want ${want} (u ${u}, margin ${margin})`);
        mismatches++;
      }
    }
    assert(mismatches <= 1, `${mismatches} boundary mismatches`);
  }
});

gpuTest(
  "sampleKernel() follows the filtered law (chi-square) and rejects a wrong one",
  async (gpu) => {
    const V = 8, rows = 4096, filterThres = 0.5, temperature = 0.8, seed = 42;
    const row = randomNormal(V, 5, 1.5);
    const x = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) x.set(row, r * V);
    const ctr = new Uint32Array(rows * 4);
    for (let r = 0; r < rows; r++) ctr.set([r, 7, 0, 0], 4 * r);
    const got = await sample(gpu, x, ctr, { rows, V, filterThres, temperature, seed });
    const counts = new Array(V).fill(0);
    for (const t of got) counts[t]++;
    const law = probsRef(row, filterThres, temperature);
    const fit = chiSquare(counts, law);
    assert(fit.pValue > 1e-3, `law rejected: ${JSON.stringify(fit)} counts ${counts}`);
    // the same counts against the unfiltered law (or another temperature) must be rejected
    assert(
      chiSquare(counts, probsRef(row, 0, temperature)).pValue < 1e-6,
      "unfiltered law accepted",
    );
    assert(
      chiSquare(counts, probsRef(row, filterThres, 1)).pValue < 1e-3,
      "wrong temperature accepted",
    );
  },
);

gpuTest("sampleKernel() is the argmax at temperature 0 (first index on ties)", async (gpu) => {
  const V = 9, rows = 3;
  const x = new Float32Array([
    1,
    3,
    3,
    0,
    0,
    0,
    0,
    0,
    0,
    -1,
    -2,
    -3,
    -4,
    -5,
    -6,
    -7,
    -8,
    -0.5,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  const ctr = new Uint32Array(randomInts(rows * 4, 2 ** 32, 1));
  assertEquals(await sample(gpu, x, ctr, { rows, V, filterThres: 0.9, temperature: 0, seed: 1 }), [
    1,
    8,
    0,
  ]);
});

gpuTest(
  "sampleKernel() gives the same tokens for the same seed, others for another",
  async (gpu) => {
    const V = 16, rows = 200;
    const x = randomNormal(rows * V, 9);
    const ctr = new Uint32Array(rows * 4);
    for (let r = 0; r < rows; r++) ctr.set([r, 0, 0, 0], 4 * r);
    const o = { rows, V, filterThres: 0, temperature: 1 };
    const a = await sample(gpu, x, ctr, { ...o, seed: 5 });
    const b = await sample(gpu, x, ctr, { ...o, seed: 5 });
    const c = await sample(gpu, x, ctr, { ...o, seed: 6 });
    assertEquals(a, b);
    assert(a.filter((t, i) => t !== c[i]).length > rows / 4, "another seed changed too few tokens");
  },
);

gpuTest("baseStepKernel() samples at each row's position and skips finished rows", async (gpu) => {
  const B = 4, V = 13, L = 5, n = 2, seed = 11, temperature = 0.9, filterThres = 0.5;
  const layout = { batch: B, seqLen: L, statsWidth: 1 };
  const o = stateOffsets(layout);
  const pos = [1, 3, 5, 4];
  const init = new Uint32Array(o.words);
  init.set(pos, 0);
  init.set([7, 0, 2, 1], o.stats);
  for (let i = 0; i < B * L; i++) init[o.seq + i] = 100 + i;
  const state = gpu.upload("state", init);
  const x = randomNormal(B * n * V, 21, 2);
  const logits = gpu.upload("logits (4, 2, 13)", x);
  const SENT = 0xdead;
  const feedTokens = gpu.upload("feed tokens (4)", new Uint32Array(B).fill(SENT));
  const feedStart = gpu.upload("feed start (4)", new Uint32Array(B).fill(SENT));
  gpu.run("base step", [
    baseStepKernel(gpu, {
      logits,
      state,
      layout,
      n,
      seed,
      numTokens: V,
      temperature,
      filterThres,
      feedTokens,
      feedStart,
    }),
  ]);
  const got = await gpu.readU32(state);
  const want = init.slice();
  const wantFeed = new Array(B).fill(SENT), wantStart = new Array(B).fill(SENT);
  for (let b = 0; b < B; b++) {
    if (pos[b] >= L) continue;
    const row = x.subarray((b * n + n - 1) * V, (b * n + n) * V); // the last position's logits
    const u = uniformRef([b, pos[b], RNG_PURPOSE.base, 0], seed);
    want[o.seq + b * L + pos[b]] = sampleRef(probsRef(row, filterThres, temperature), u);
    want[b]++;
    want[o.stats + b]++;
    wantFeed[b] = want[o.seq + b * L + pos[b]]; // the next forward feeds the new token
    wantStart[b] = pos[b]; // at its position
  }
  assertEquals(Array.from(got), Array.from(want));
  assertEquals(Array.from(await gpu.readU32(feedTokens)), wantFeed);
  assertEquals(Array.from(await gpu.readU32(feedStart)), wantStart);
});

gpuTest(
  "draftStepKernel() writes q_i, x_i and the next draft or target feed from the row of interest",
  async (gpu) => {
    const B = 3, V = 13, L = 6, G = 3, seed = 5, temperature = 1.2, filterThres = 0.4;
    const layout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) };
    const pos = [1, 4, 6]; // row 0: the n = 2 forward started at 0, so its row 0 is the one
    const init = new Uint32Array(stateOffsets(layout).words);
    init.set(pos, 0);
    const state = gpu.upload("state", init);
    const SENT = 0xdead;
    const q = gpu.upload("q (3, 3, 13)", new Float32Array(B * G * V).fill(-1));
    const draft = gpu.upload("draft (3, 3)", new Uint32Array(B * G).fill(SENT));
    const feedTokens = gpu.upload("feed tokens (3)", new Uint32Array(B).fill(SENT));
    const feedStart = gpu.upload("feed start (3)", new Uint32Array(B).fill(SENT));
    const targetTokens = gpu.upload("target tokens (3, 4)", new Uint32Array(B * (G + 1)));
    const targetStart = gpu.upload("target start (3)", new Uint32Array(B).fill(SENT));
    const x2 = randomNormal(B * 2 * V, 31, 2), x1 = randomNormal(B * V, 32, 2);
    const logits2 = gpu.upload("logits (3, 2, 13)", x2),
      logits1 = gpu.upload("logits (3, 1, 13)", x1);
    const common = {
      state,
      layout,
      q,
      draft,
      gamma: G,
      seed,
      numTokens: V,
      temperature,
      filterThres,
    };
    gpu.run("draft steps", [
      draftStepKernel(gpu, { ...common, logits: logits2, n: 2, i: 1, feedTokens, feedStart }),
      draftStepKernel(gpu, { ...common, logits: logits1, n: 1, i: 3, targetTokens, targetStart }),
    ]);
    const gq = await gpu.readF32(q), gd = Array.from(await gpu.readU32(draft));
    const gft = Array.from(await gpu.readU32(feedTokens)),
      gfs = Array.from(await gpu.readU32(feedStart));
    const wq = new Float64Array(B * G * V).fill(-1), wd = new Array(B * G).fill(SENT);
    const wft = new Array(B).fill(SENT), wfs = new Array(B).fill(SENT);
    for (let b = 0; b < B; b++) {
      if (pos[b] >= L) continue;
      for (const [i, x, r] of [[1, x2, pos[b] >= 2 ? b * 2 + 1 : b * 2], [3, x1, b]] as const) {
        const probs = probsRef(x.subarray(r * V, (r + 1) * V), filterThres, temperature);
        wq.set(probs, (b * G + i - 1) * V);
        wd[b * G + i - 1] = sampleRef(probs, uniformRef([b, pos[b], RNG_PURPOSE.draft, i], seed));
      }
      wft[b] = wd[b * G];
      wfs[b] = pos[b];
    }
    assertClose(gq, wq, { atol: 1e-6, rtol: 1e-4, label: "q" });
    assertEquals(gd, wd);
    assertEquals(gft, wft);
    assertEquals(gfs, wfs);
    // the last step feeds the target for every row: [seq[pos − 1] (0 here), x_1, x_2, x_3]
    const wtt = pos.flatMap((_, b) => [0, ...wd.slice(b * G, (b + 1) * G)]);
    assertEquals(Array.from(await gpu.readU32(targetTokens)), wtt);
    assertEquals(Array.from(await gpu.readU32(targetStart)), pos.map((p) => p - 1));
  },
);
