import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { readSafetensors, type Tensor, writeSafetensors } from "../model/checkpoint.ts";
import type { DecoderConfig } from "../model/config.ts";
import { Decoder } from "../model/decoder.ts";
import {
  baseDecoding,
  decodingCosts,
  speculativeDecoding,
  speculativeDecodingWith,
} from "../model/decoding.ts";
import { acceptKernel } from "../kernels/speculative.ts";
import { brokenAcceptKernel } from "./kernels/broken_accept.ts";
import { gpuTest, randomNormal, randomRows } from "./helpers.ts";
import { chiSquare, probsRef } from "./reference/sampling.ts";

// Tiny models: the software adapter is shared and slow.
const CFG: DecoderConfig = {
  numTokens: 16,
  dim: 16,
  depth: 2,
  heads: 2,
  dimHead: 8,
  ffMult: 2,
  maxSeqLen: 48,
};
const DRAFT_CFG: DecoderConfig = { ...CFG, depth: 1 };

/** A copy of `model` with Gaussian noise of `std` added to every weight: a draft that agrees often. */
async function perturbed(gpu: Gpu, model: Decoder, std: number, seed: number): Promise<Decoder> {
  const { tensors } = readSafetensors(await model.toSafetensors());
  const out: Record<string, Tensor> = {};
  let s = seed;
  for (const [name, t] of tensors) {
    const noise = name === "rotary_emb.inv_freq" ? null : randomNormal(t.data.length, s++, std);
    out[name] = { shape: t.shape, data: noise ? t.data.map((v, i) => v + noise[i]) : t.data };
  }
  return await Decoder.fromSafetensors(gpu, writeSafetensors(out), {
    maxSeqLen: model.config.maxSeqLen,
  });
}

function prompts(B: number, P: number, seed: number, V = CFG.numTokens): number[][] {
  return randomRows(B, P, V, seed);
}

gpuTest(
  "speculativeDecoding() greedy equals baseDecoding() greedy token for token",
  async (gpu) => {
    const cases = [
      { seed: 1, B: 1, gamma: 1, P: 3, seqLen: 20 },
      { seed: 1, B: 8, gamma: 4, P: 3, seqLen: 20 },
      { seed: 2, B: 8, gamma: 8, P: 2, seqLen: 17 }, // gamma exceeds the tokens left at the end
      { seed: 2, B: 1, gamma: 4, P: 1, seqLen: 14 }, // prompt of one token: no prefill
      { seed: 3, B: 8, gamma: 1, P: 5, seqLen: 16 },
      { seed: 3, B: 1, gamma: 8, P: 4, seqLen: 7 }, // gamma exceeds the tokens left from the start
    ];
    for (const c of cases) {
      const target = Decoder.create(gpu, CFG, { seed: c.seed });
      const good = await perturbed(gpu, target, 0.03, 100 + c.seed); // accepts often
      const bad = Decoder.create(gpu, DRAFT_CFG, { seed: 50 + c.seed }); // accepts rarely
      const prompt = prompts(c.B, c.P, 7 * c.seed);
      const base = await baseDecoding(target, prompt, c.seqLen, { temperature: 0 });
      assertEquals(base.tokens.map((r) => r.length), new Array(c.B).fill(c.seqLen - c.P));
      for (const draft of [good, bad]) {
        const spec = await speculativeDecoding(target, draft, prompt, c.seqLen, {
          temperature: 0,
          gamma: c.gamma,
          chunkSteps: 5,
        });
        assertEquals(spec.tokens, base.tokens, `case ${JSON.stringify(c)}`);
      }
      const self = await speculativeDecoding(target, target, prompt, c.seqLen, {
        temperature: 0,
        gamma: c.gamma,
      });
      assertEquals(self.tokens, base.tokens);
      assertEquals(
        self.acceptedMean > 0 && self.steps <= Math.ceil((c.seqLen - c.P) / (c.gamma + 1)) + 1,
        true,
      );
    }
  },
);

gpuTest("speculativeDecoding() rows with different prompts advance independently", async (gpu) => {
  const target = Decoder.create(gpu, CFG, { seed: 4 });
  const draft = await perturbed(gpu, target, 0.05, 400);
  const B = 8, P = 4, seqLen = 26;
  const prompt = prompts(B, P, 41);
  const spec = await speculativeDecoding(target, draft, prompt, seqLen, {
    temperature: 0,
    gamma: 3,
  });
  assertEquals(spec.tokens.map((r) => r.length), new Array(B).fill(seqLen - P));
  assert(new Set(spec.rowSteps).size > 1, `rows advanced in lockstep: ${spec.rowSteps}`);
  for (let b = 0; b < B; b++) {
    const alone = await speculativeDecoding(target, draft, [prompt[b]], seqLen, {
      temperature: 0,
      gamma: 3,
    });
    assertEquals(spec.tokens[b], alone.tokens[0], `row ${b}`);
    assertEquals(spec.rowSteps[b], alone.rowSteps[0], `row ${b} steps`);
  }
  const base = await baseDecoding(target, prompt, seqLen, { temperature: 0 });
  assertEquals(spec.tokens, base.tokens);
  // sampled: every row still gets exactly seqLen − P tokens
  const sampled = await speculativeDecoding(target, draft, prompt, seqLen, { gamma: 3, seed: 9 });
  assertEquals(sampled.tokens.map((r) => r.length), new Array(B).fill(seqLen - P));
  assert(sampled.tokens.flat().every((t) => Number.isInteger(t) && t >= 0 && t < CFG.numTokens));
});

gpuTest(
  "decoding edge cases: one token left, batch 1 and 16, gamma beyond the end",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 5 });
    const draft = Decoder.create(gpu, DRAFT_CFG, { seed: 6 });
    for (const B of [1, 16]) {
      const P = 9, seqLen = 10, prompt = prompts(B, P, 50 + B);
      for (const temperature of [0, 1]) {
        const base = await baseDecoding(target, prompt, seqLen, { temperature, seed: 3 });
        const spec = await speculativeDecoding(target, draft, prompt, seqLen, {
          temperature,
          gamma: 5,
          seed: 3,
        });
        assertEquals(base.tokens.map((r) => r.length), new Array(B).fill(1));
        assertEquals(spec.tokens.map((r) => r.length), new Array(B).fill(1));
        assertEquals(spec.steps, 1);
        assertEquals(spec.stepsEncoded, 1);
        if (temperature === 0) assertEquals(spec.tokens, base.tokens);
      }
    }
  },
);

/** The target's exact joint law of the next two tokens after `prompt`, (V, V) flattened. */
async function exactJoint(
  model: Decoder,
  prompt: number[],
  filterThres: number,
  temperature: number,
): Promise<Float64Array> {
  const V = model.config.numTokens, P = prompt.length;
  const first = await model.logits([prompt]);
  const p1 = probsRef(first.subarray((P - 1) * V, P * V), filterThres, temperature);
  const rows = Array.from({ length: V }, (_, t) => [...prompt, t]);
  const second = await model.logits(rows);
  const joint = new Float64Array(V * V);
  for (let t = 0; t < V; t++) {
    const p2 = probsRef(
      second.subarray((t * (P + 1) + P) * V, (t * (P + 1) + P + 1) * V),
      filterThres,
      temperature,
    );
    for (let u = 0; u < V; u++) joint[t * V + u] = p1[t] * p2[u];
  }
  return joint;
}

/** Counts of the first two generated tokens, per prompt group (rows alternate the prompts). */
function jointCounts(tokens: number[][], groups: number, V: number): number[][] {
  const counts = Array.from({ length: groups }, () => new Array(V * V).fill(0));
  tokens.forEach((r, b) => counts[b % groups][r[0] * V + r[1]]++);
  return counts;
}

const LAW_CFG: DecoderConfig = {
  numTokens: 8,
  dim: 16,
  depth: 1,
  heads: 2,
  dimHead: 8,
  ffMult: 2,
  maxSeqLen: 16,
};

gpuTest(
  "speculativeDecoding() keeps the target's joint law; the broken residual is rejected",
  async (gpu) => {
    const V = 8, B = 1024, seqLen = 4;
    const target = Decoder.create(gpu, LAW_CFG, { seed: 21 });
    const draft = Decoder.create(gpu, LAW_CFG, { seed: 22 }); // a deliberately different draft
    const group = [[1, 2], [5, 3]]; // rows alternate two prompts: they accept at different rates
    const prompt = Array.from({ length: B }, (_, b) => group[b % 2]);
    const laws: Float64Array[] = [];
    for (const g of group) laws.push(await exactJoint(target, g, 0, 1));
    // residual false: corrections from p, not max(0, p − q) (a deliberately wrong sampler)
    const run = async (residual: boolean) => {
      const counts = [new Array(V * V).fill(0), new Array(V * V).fill(0)];
      for (const seed of [1, 2]) {
        const accept = residual ? acceptKernel : brokenAcceptKernel;
        const out = await speculativeDecodingWith(accept, target, draft, prompt, seqLen, {
          gamma: 2,
          temperature: 1,
          filterThres: 0,
          seed,
        });
        jointCounts(out.tokens, 2, V).forEach((c, g) => c.forEach((n, i) => counts[g][i] += n));
        assert(
          out.acceptedMean > 0.2 && out.acceptedMean < 1.8,
          `acceptedMean ${out.acceptedMean}`,
        );
      }
      return counts.map((c, g) => chiSquare(c, laws[g]));
    };
    for (const [g, fit] of (await run(true)).entries()) {
      assert(fit.pValue > 1e-3, `prompt ${g}: exact sampler rejected ${JSON.stringify(fit)}`);
    }
    const broken = await run(false);
    assert(
      broken.some((fit) => fit.pValue < 1e-6),
      `broken sampler accepted ${JSON.stringify(broken)}`,
    );
  },
);

gpuTest(
  "speculativeDecoding() keeps the target's filtered, tempered law (top-k 0.5, temperature 0.8)",
  async (gpu) => {
    const V = 8, B = 1024, seqLen = 4, filterThres = 0.5, temperature = 0.8;
    const target = Decoder.create(gpu, LAW_CFG, { seed: 31 });
    const draft = Decoder.create(gpu, LAW_CFG, { seed: 32 });
    const group = [[4, 1], [2, 7]];
    const prompt = Array.from({ length: B }, (_, b) => group[b % 2]);
    // residual false: corrections from p, not max(0, p − q) (a deliberately wrong sampler)
    const run = async (residual: boolean) => {
      const counts = [new Array(V * V).fill(0), new Array(V * V).fill(0)];
      for (const seed of [5, 6]) {
        const accept = residual ? acceptKernel : brokenAcceptKernel;
        const out = await speculativeDecodingWith(accept, target, draft, prompt, seqLen, {
          gamma: 3,
          temperature,
          filterThres,
          seed,
        });
        jointCounts(out.tokens, 2, V).forEach((c, g) => c.forEach((n, i) => counts[g][i] += n));
      }
      return counts;
    };
    const counts = await run(true);
    for (const [g, p] of group.entries()) {
      const fit = chiSquare(counts[g], await exactJoint(target, p, filterThres, temperature));
      assert(fit.pValue > 1e-3, `prompt ${g}: ${JSON.stringify(fit)}`);
      // the filter and the temperature really shape the output: the plain law is rejected
      const plain = chiSquare(counts[g], await exactJoint(target, p, 0, 1));
      assert(plain.pValue < 1e-6, `prompt ${g}: unfiltered law accepted ${JSON.stringify(plain)}`);
    }
    const broken = await run(false);
    const fits = await Promise.all(
      group.map(async (p, g) =>
        chiSquare(broken[g], await exactJoint(target, p, filterThres, temperature))
      ),
    );
    assert(fits.some((f) => f.pValue < 1e-6), `broken sampler accepted ${JSON.stringify(fits)}`);
  },
);

gpuTest("baseDecoding() samples the target's filtered, tempered joint law", async (gpu) => {
  const V = 8, B = 1024, seqLen = 4, filterThres = 0.5, temperature = 0.8;
  const target = Decoder.create(gpu, LAW_CFG, { seed: 23 });
  const group = [[1, 2], [6, 0]];
  const prompt = Array.from({ length: B }, (_, b) => group[b % 2]);
  const out = await baseDecoding(target, prompt, seqLen, { filterThres, temperature, seed: 4 });
  const counts = jointCounts(out.tokens, 2, V);
  for (const [g, p] of group.entries()) {
    const fit = chiSquare(counts[g], await exactJoint(target, p, filterThres, temperature));
    assert(fit.pValue > 1e-3, `prompt ${g}: ${JSON.stringify(fit)}`);
    // and not the unfiltered law
    const wrong = chiSquare(counts[g], await exactJoint(target, p, 0, temperature));
    assert(wrong.pValue < 1e-6, `prompt ${g}: unfiltered law accepted ${JSON.stringify(wrong)}`);
  }
});

gpuTest(
  "decoding streams chunks, reads back once per chunk and repeats under a seed",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 7 });
    const draft = await perturbed(gpu, target, 0.05, 700);
    const prompt = prompts(3, 3, 70), seqLen = 30;
    for (const spec of [false, true]) {
      const decode = (
        o: {
          seed: number;
          chunkSteps: number;
          onTokens?: (rows: number[][]) => void;
          timer?: GpuTimer;
        },
      ) =>
        spec
          ? speculativeDecoding(target, draft, prompt, seqLen, { gamma: 3, ...o })
          : baseDecoding(target, prompt, seqLen, o);
      const streamed: number[][] = [[], [], []];
      let calls = 0;
      const timer = new GpuTimer(gpu);
      const a = await decode({
        seed: 8,
        chunkSteps: 4,
        timer,
        onTokens: (rows) => {
          calls++;
          rows.forEach((r, b) => streamed[b].push(...r));
        },
      });
      timer.destroy();
      assertEquals(streamed, a.tokens);
      assert(calls > 1 && calls <= a.readbacks, `${calls} callbacks, ${a.readbacks} readbacks`);
      assertEquals(a.readbacks, a.submits); // one readback per chunk
      assertEquals(a.readbacksPerToken, a.readbacks / (3 * (seqLen - 3)));
      assert(a.gpuMs !== undefined && a.gpuMs >= 0, "gpuMs");
      // the output does not depend on the chunking; another seed changes it
      const b = await decode({ seed: 8, chunkSteps: 32 });
      assertEquals(b.tokens, a.tokens);
      assert(b.readbacks < a.readbacks);
      const c = await decode({ seed: 9, chunkSteps: 32 });
      assert(c.tokens.flat().some((t, i) => t !== a.tokens.flat()[i]), "another seed, same tokens");
      // at least feed, forward(s) and sampling per step
      assert(b.dispatches > 3 * b.stepsEncoded, `${b.dispatches} dispatches`);
      const costs = decodingCosts(b);
      assertEquals(costs.dispatchesPerToken, b.dispatches / b.generated);
      assertEquals(costs.tokens, 3 * (seqLen - 3));
      assert(costs.targetForwardsPerToken > 0 && costs.wallMsPerToken > 0);
      if (spec) assert(costs.draftForwardsPerToken > costs.targetForwardsPerToken);
    }
  },
);

gpuTest("decoding rejects bad input with clear errors", async (gpu) => {
  const target = Decoder.create(gpu, CFG, { seed: 8 });
  const draft = Decoder.create(gpu, DRAFT_CFG, { seed: 9 });
  const other = Decoder.create(gpu, { ...DRAFT_CFG, numTokens: 17 }, { seed: 9 });
  const ok = [[1, 2, 3]];
  const spec = (o: Record<string, unknown>, prompt = ok, seqLen = 8, d = draft) =>
    rejects(() => speculativeDecoding(target, d, prompt, seqLen, o), o.re as RegExp);
  const base = (o: Record<string, unknown>, prompt = ok, seqLen = 8) =>
    rejects(() => baseDecoding(target, prompt, seqLen, o), o.re as RegExp);
  await spec({ gamma: 0, re: /gamma must be an integer ≥ 1/ });
  await spec({ gamma: 2.5, re: /gamma must be an integer ≥ 1/ });
  for (const t of [-1, NaN, Infinity]) {
    await spec({ temperature: t, re: /temperature must be a finite number ≥ 0/ });
    await base({ temperature: t, re: /temperature must be a finite number ≥ 0/ });
  }
  for (const f of [1, -0.1, 1.5]) {
    await spec({ filterThres: f, re: /filterThres must be in \[0, 1\)/ });
    await base({ filterThres: f, re: /filterThres must be in \[0, 1\)/ });
  }
  await spec({ lenience: 0, re: /lenience must be a finite number > 0/ });
  await spec({ re: /target and draft must share the vocabulary/ }, ok, 8, other);
  for (
    const [prompt, re] of [
      [[], /prompt must be a non-empty array/],
      [[[]], /prompt rows are empty/],
      [[[1, 2], [3]], /prompt rows must all have the same length/],
      [[[1, 16]], /prompt\[0\]\[1\] = 16 is not a token/],
      [[[1, -1]], /is not a token/],
      [[[1, 0.5]], /is not a token/],
    ] as [number[][], RegExp][]
  ) {
    await spec({ re }, prompt);
    await base({ re }, prompt);
  }
  // not an array of rows: said so, with strings quoted (not "empty batch")
  for (
    const [prompt, re] of [
      ["abc", /prompt must be an array of rows \(number\[\]\[\]\), got string "abc"/],
      [{ length: 1 }, /prompt must be an array of rows \(number\[\]\[\]\), got Object/],
      [[1, 2, 3], /prompt\[0\] is number 1, not an array of tokens/],
      [["ab"], /prompt\[0\] is string "ab", not an array of tokens/],
    ] as [unknown, RegExp][]
  ) {
    await spec({ re }, prompt as number[][]);
    await base({ re }, prompt as number[][]);
  }
  await base({ temperature: "1", re: /temperature must be .*, got string "1"/ });
  await spec({ gamma: "4", re: /gamma must be an integer ≥ 1, got string "4"/ });
  await base({ onTokens: 3, re: /onTokens must be a function, got 3/ });
  await rejects(
    () => baseDecoding(target, ok, 8, null as unknown as object),
    /options must be an object, got null/,
  );
  await spec({ re: /seqLen \(which counts the prompt\) must be more than 3; got 3/ }, ok, 3);
  await base({ re: /must be more than 3; got 2/ }, ok, 2);
  await spec({ re: /seqLen 49 is over the model's maxSeqLen 48/ }, ok, 49);
  await base({ re: /seqLen 49 is over the model's maxSeqLen 48/ }, ok, 49);
  await base({ seed: -1, re: /seed must be a non-negative safe integer/ });
  await base({ chunkSteps: 0, re: /chunkSteps must be an integer ≥ 1/ });
});

gpuTest("long decodes read back at most once per 64 generated tokens", async (gpu) => {
  const cfg = { ...CFG, maxSeqLen: 300 };
  const target = Decoder.create(gpu, cfg, { seed: 3 });
  const draft = Decoder.create(gpu, { ...cfg, depth: 1 }, { seed: 4 });
  const prompt = prompts(1, 4, 9);
  const base = await baseDecoding(target, prompt, 260, { seed: 1 });
  assert(
    base.readbacksPerToken <= 1 / 64,
    `base: ${base.readbacks} readbacks for ${base.generated}`,
  );
  const spec = await speculativeDecoding(target, draft, prompt, 260, { seed: 1, gamma: 4 });
  assert(
    spec.readbacksPerToken <= 1 / 64,
    `spec: ${spec.readbacks} readbacks for ${spec.generated}`,
  );
});
