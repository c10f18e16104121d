/**
 * The adaptive draft length of speculative decoding (`draftThreshold`): the draft and acceptance
 * kernels against the float64 reference, exactness end to end (greedy equals the target's greedy,
 * the sampled law passes the chi-square test and broken samplers fail it), threshold 0 unchanged,
 * option errors, and the gate that skips the draft work once every row has stopped.
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  strictEqual,
  throws,
} from "node:assert/strict";
import { parseFlags, runConfig, savedArgs, UsageError } from "../cli/train_options.ts";
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { type StateLayout, stateOffsets } from "../kernels/decode_state.ts";
import { draftStepKernel } from "../kernels/decode_step.ts";
import { RNG_PURPOSE } from "../kernels/sampling.ts";
import {
  type AcceptArgs,
  acceptKernel,
  acceptSpec,
  speculativeStatsWidth,
} from "../kernels/speculative.ts";
import { readSafetensors, type Tensor, writeSafetensors } from "../model/checkpoint.ts";
import type { DecoderConfig } from "../model/config.ts";
import { Decoder } from "../model/decoder.ts";
import {
  baseDecoding,
  speculativeDecoding,
  speculativeDecodingEngine,
  speculativeDecodingWith,
} from "../model/decoding.ts";
import { validateSpeculative } from "../model/decoding_options.ts";
import { brokenAcceptKernel } from "./kernels/broken_accept.ts";
import { probsKernel } from "./kernels/sampling_kernels.ts";
import { gpuTest, randomInts, randomNormal, randomRows, rng } from "./helpers.ts";
import {
  chiSquare,
  probsRef,
  sampleRef,
  speculativeRowRef,
  uniformRef,
} from "./reference/sampling.ts";

const STOPPED = 0x80000000;

/** A state buffer's words from per-row pos, stats and seq. */
function packState(layout: StateLayout, pos: number[], stats: number[][], seq: number[][]) {
  const o = stateOffsets(layout);
  const s = new Uint32Array(o.words);
  s.set(pos, o.pos);
  stats.forEach((r, b) => s.set(r, o.stats + b * layout.statsWidth));
  seq.forEach((r, b) => s.set(r, o.seq + b * layout.seqLen));
  return s;
}

/** Filtered, tempered probabilities of logits rows as the kernels compute them (same WGSL). */
async function gpuProbs(gpu: Gpu, x: Float32Array<ArrayBuffer>, V: number, temperature: number) {
  const rows = x.length / V;
  const logits = gpu.upload("logits", x), probs = gpu.buffer("probs", x.length * 4);
  gpu.run("probs", [
    probsKernel(gpu, { logits, probs, rows, numTokens: V, filterThres: 0.3, temperature }),
  ]);
  return new Float32Array(await gpu.readF32(probs));
}

gpuTest(
  "adaptive draftStepKernel() stops rows whose draft is unsure, skips them after",
  async (gpu) => {
    const B = 7, V = 11, L = 9, G = 3, seed = 4, filterThres = 0.3;
    const layout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G, true) };
    const pos = [3, 4, 5, 9, 2, 6, 3]; // row 3 is finished
    for (const temperature of [1, 0]) {
      const x = randomNormal(B * V, 60 + temperature, 1.2);
      const probs = probsRef; // (reference) filtered, tempered q
      // step 2: rows 1 and 5 stopped at step 1 (flag), row 6 has a stale count: all three skip
      const before = [1, (1 | STOPPED) >>> 0, 1, 1, 1, (1 | STOPPED) >>> 0, 0];
      // a threshold between the rows' confidences, so some rows stop and some do not
      const conf = Array.from({ length: B }, (_, b) => {
        const row = x.subarray(b * V, (b + 1) * V);
        const u = uniformRef([b, pos[b], RNG_PURPOSE.draft, 2], seed);
        const q = probs(row, filterThres, temperature);
        const tok = sampleRef(q, u);
        // greedy: q is one-hot, so the plain softmax (temperature 1, no filter) of the argmax
        return { tok, c: temperature === 0 ? Math.max(...probsRef(row, 0, 1)) : q[tok] };
      });
      const cs = conf.filter((_, b) => before[b] === 1 && pos[b] < L).map((c) => c.c).sort();
      const threshold = (cs[1] + cs[2]) / 2;
      const SENT = 0xdead;
      const state = gpu.upload("state", packState(layout, pos, [], []));
      const drafted = gpu.upload("drafted", new Uint32Array(before));
      const draft = gpu.upload("draft", new Uint32Array(B * G).fill(SENT));
      const feedTokens = gpu.upload("feed tokens", new Uint32Array(B).fill(SENT));
      const feedStart = gpu.upload("feed start", new Uint32Array(B).fill(SENT));
      gpu.run("draft step 2", [
        draftStepKernel(gpu, {
          logits: gpu.upload("logits", x),
          state,
          layout,
          q: gpu.buffer("q", B * G * V * 4),
          draft,
          feedTokens,
          feedStart,
          n: 1,
          i: 2,
          gamma: G,
          seed,
          numTokens: V,
          temperature,
          filterThres,
          drafted,
          threshold,
        }),
      ]);
      const got = Array.from(await gpu.readU32(drafted)), gd = await gpu.readU32(draft);
      const want = before.map((w, b) => {
        if (w !== 1 || pos[b] >= L) return w; // skipped: nothing written
        return (2 | (conf[b].c < threshold ? STOPPED : 0)) >>> 0;
      });
      assertEquals(got, want, `temperature ${temperature}, threshold ${threshold}`);
      for (let b = 0; b < B; b++) {
        const ran = before[b] === 1 && pos[b] < L;
        assertEquals(gd[b * G + 1], ran ? conf[b].tok : SENT, `row ${b} draft`);
      }
      assert(want.some((w) => w === (2 | STOPPED) >>> 0) && want.some((w) => w === 2), `${want}`);
    }
  },
);

/** One adaptive acceptance case: p from random logits, q random, each row's own k. */
async function acceptCase(gpu: Gpu, seed: number, temperature: number) {
  const B = 23, V = 9, G = 4, L = 12;
  const r = rng(seed);
  const logits = randomNormal(B * (G + 1) * V, seed + 1, 1.5);
  const p = await gpuProbs(gpu, logits, V, temperature);
  const q = new Float32Array(B * G * V), draft = new Uint32Array(B * G);
  const ql = randomNormal(B * G * V, seed + 2, 1.5);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < G; i++) {
      const k = b * G + i, pk = b * (G + 1) + i;
      // odd rows draft with the target's law (accepting all k), even rows with another one
      const row = b % 2
        ? p.subarray(pk * V, (pk + 1) * V)
        : probsRef(ql.subarray(k * V, (k + 1) * V), 0.3, temperature);
      q.set(row, k * V);
      draft[k] = sampleRef(row, r());
    }
  }
  const k = Array.from({ length: B }, (_, b) => 1 + (b >> 1) % G);
  const pos = Array.from({ length: B }, (_, b) => b === 0 ? L : 1 + Math.floor(r() * (L - 1)));
  const W = speculativeStatsWidth(G, true);
  const stats = Array.from({ length: B }, (_, b) => Array.from({ length: W }, (_, i) => b + i));
  const seq = Array.from({ length: B }, (_, b) => randomInts(L, V, seed + 10 + b));
  return { B, V, G, L, logits, p, q, draft, k, pos, stats, seq };
}

/** An acceptance kernel with one expression of its WGSL replaced (a deliberately wrong sampler). */
function mutant(from: string, to: string) {
  return (gpu: Gpu, args: AcceptArgs): Dispatch => {
    const spec = acceptSpec(gpu, args);
    if (spec.code.split(from).length !== 2) throw new Error(`"${from}" not found once`);
    return gpu.kernel({
      ...spec,
      label: `mutant ${spec.label}`,
      code: spec.code.replace(from, to),
    });
  };
}
/** The extra token after all k drafts passed from the residual of q_{k+1}, not from p_{k+1}. */
const residualAtK = mutant("residual = a < K;", "residual = a < G;");

gpuTest(
  "adaptive acceptKernel() is Algorithm 1 with gamma = k per row (float64 reference)",
  async (gpu) => {
    for (const [i, temperature] of [1, 0.7, 0].entries()) {
      const c = await acceptCase(gpu, 500 + i, temperature);
      const layout = { batch: c.B, seqLen: c.L, statsWidth: speculativeStatsWidth(c.G, true) };
      const run = async (accept = acceptKernel) => {
        const state = gpu.upload("state", packState(layout, c.pos, c.stats, c.seq));
        gpu.run("accept", [
          accept(gpu, {
            state,
            layout,
            logits: gpu.upload("logits", c.logits),
            q: gpu.upload("q", c.q),
            draft: gpu.upload("draft", c.draft),
            drafted: gpu.upload(
              "drafted",
              new Uint32Array(c.k.map((k, b) => k | (b % 3 ? 0 : STOPPED))),
            ),
            feedTokens: gpu.buffer("feed tokens", c.B * 8),
            feedStart: gpu.buffer("feed start", c.B * 4),
            gamma: c.G,
            numTokens: c.V,
            filterThres: 0.3,
            temperature,
            lenience: 1,
            seed: 7,
          }),
        ]);
        return Array.from(await gpu.readU32(state));
      };
      // the reference: Algorithm 1 on the first k drafts and the first k + 1 target rows
      const pos = [...c.pos], stats = c.stats.map((r) => [...r]), seq = c.seq.map((r) => [...r]);
      for (let b = 0; b < c.B; b++) {
        const s = pos[b], k = c.k[b], G = c.G, V = c.V;
        if (s >= c.L) continue;
        const row = (buf: Float32Array, n: number, j: number) =>
          Array.from(buf.subarray((b * n + j) * V, (b * n + j + 1) * V));
        const { accepted: a, token } = speculativeRowRef({
          p: Array.from({ length: k + 1 }, (_, j) => row(c.p, G + 1, j)),
          q: Array.from({ length: k }, (_, j) => row(c.q, G, j)),
          draft: Array.from(c.draft.subarray(b * G, b * G + k)),
          r: Array.from({ length: k }, (_, j) => uniformRef([b, s, RNG_PURPOSE.accept, j], 7)),
          uExtra: uniformRef([b, s, RNG_PURPOSE.extra, 0], 7),
          uFallback: uniformRef([b, s, RNG_PURPOSE.extra, 1], 7),
          lenience: 1,
          greedy: temperature === 0,
        });
        for (let j = 0; j < a; j++) if (s + j < c.L) seq[b][s + j] = c.draft[b * G + j];
        if (s + a < c.L) seq[b][s + a] = token;
        pos[b] = Math.min(s + a + 1, c.L);
        const emitted = Math.min(a, c.L - s);
        stats[b][0]++;
        stats[b][1] += emitted;
        stats[b][2] += a;
        for (let j = 0; j < emitted; j++) stats[b][3 + j]++;
        stats[b][3 + G] += k; // drafted
      }
      const want = Array.from(packState(layout, pos, stats, seq));
      assertEquals(await run(), want, `temperature ${temperature}`);
      // the case has rows that accepted all k < γ drafts: their bonus comes from p_{k+1}
      const full = c.pos.map((s, b) => s < c.L && pos[b] - s === c.k[b] + 1 && c.k[b] < c.G);
      assert(full.filter(Boolean).length >= 2, `rows that accepted all k < gamma: ${full}`);
      if (temperature > 0) {
        // sampling that bonus from the residual of q_{k+1} instead changes those rows
        assert(
          (await run(residualAtK)).some((w, j) => w !== want[j]),
          "residual-at-k mutant passed",
        );
      }
    }
  },
);

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

gpuTest(
  "adaptive draft length: greedy equals the target's greedy, rows stop on their own",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 11 });
    const draft = await perturbed(gpu, target, 0.03, 111);
    const P = 3, seqLen = 24, gamma = 4;
    const prompt = randomRows(4, P, CFG.numTokens, 12);
    const base = await baseDecoding(target, prompt, seqLen, { temperature: 0 });
    const o = { temperature: 0, gamma, draftThreshold: 0.13, chunkSteps: 3 };
    const spec = await speculativeDecoding(target, draft, prompt, seqLen, o);
    assertEquals(spec.tokens, base.tokens);
    // rows stop at different points: the mean draft length is strictly between 1 and gamma
    assert(spec.draftedMean > 1.2 && spec.draftedMean < gamma - 0.5, `${spec.draftedMean}`);
    assert(spec.acceptedMean > 0.5, `acceptedMean ${spec.acceptedMean}`);
    // batch 1, and each row alone advances as in the batch
    const means: number[] = [];
    for (let b = 0; b < prompt.length; b++) {
      const alone = await speculativeDecoding(target, draft, [prompt[b]], seqLen, o);
      assertEquals(alone.tokens[0], base.tokens[b], `row ${b}`);
      assertEquals(alone.rowSteps[0], spec.rowSteps[b], `row ${b} steps`);
      means.push(alone.draftedMean);
    }
    assert(new Set(means).size > 1, `every row drafted alike: ${means}`);
    // greedy never stops early without a threshold
    const fixed = await speculativeDecoding(target, draft, prompt, seqLen, {
      ...o,
      draftThreshold: 0,
    });
    assertEquals(fixed.draftedMean, gamma);
    assertEquals(fixed.tokens, base.tokens);
  },
);

gpuTest(
  "draftThreshold 0 is the fixed gamma, and a threshold that never stops changes nothing",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 13 });
    const draft = await perturbed(gpu, target, 0.05, 130);
    const prompt = randomRows(3, 2, CFG.numTokens, 14), seqLen = 22;
    const o = { gamma: 3, seed: 5, temperature: 0.9, filterThres: 0.5 };
    const plain = await speculativeDecoding(target, draft, prompt, seqLen, o);
    const zero = await speculativeDecoding(target, draft, prompt, seqLen, {
      ...o,
      draftThreshold: 0,
    });
    assertEquals(zero.tokens, plain.tokens);
    assertEquals(zero.rowSteps, plain.rowSteps);
    assertEquals(zero.dispatches, plain.dispatches); // the very same kernels
    assertEquals([plain.draftedMean, zero.draftedMean], [3, 3]);
    // the adaptive kernels with a threshold below every q(x): the same tokens, all drafted
    const tiny = await speculativeDecoding(target, draft, prompt, seqLen, {
      ...o,
      draftThreshold: 1e-30,
    });
    assertEquals(tiny.tokens, plain.tokens);
    assertEquals(tiny.draftedMean, 3);
    assert(tiny.dispatches > plain.dispatches, "the adaptive path was not taken");
  },
);

gpuTest("draftThreshold: bad values are errors naming the option", (gpu) => {
  const m = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 1 });
  for (const bad of [NaN, -0.1, 1, 1.5, Infinity, "0.3" as unknown as number]) {
    throws(
      () => validateSpeculative(m, m, [[1, 2]], 8, { draftThreshold: bad }),
      (e: Error) => e.message.includes("draftThreshold must be a probability in [0, 1)"),
      String(bad),
    );
  }
  for (const ok of [0, 0.5, 0.999]) {
    assertEquals(validateSpeculative(m, m, [[1, 2]], 8, { draftThreshold: ok }).draftThreshold, ok);
  }
});

gpuTest(
  "adaptive draft length: once every row stopped, the gated draft work is zero",
  async (gpu) => {
    const target = Decoder.create(gpu, CFG, { seed: 15 });
    const draft = Decoder.create(gpu, { ...CFG, depth: 1 }, { seed: 16 });
    const prompt = randomRows(3, 3, CFG.numTokens, 17), G = 4;
    for (const [threshold, stops] of [[0.999, true], [1e-30, false]] as const) {
      const e = speculativeDecodingEngine(target, draft, prompt, 20, {
        gamma: G,
        filterThres: 0, // q(x) < 0.999 for every token of these random models
        draftThreshold: threshold,
      });
      try {
        const gated = e.step.filter((d) => d.indirect);
        const forward = e.parts.find((p) => p.name === "draft forward n=1")!.dispatches.length;
        // draft forwards of steps 2..γ and samplings of steps 2..γ − 1
        assertEquals(gated.length, (G - 1) * forward + (G - 2));
        assertEquals(e.parts.filter((p) => p.name === "draft gate").length, G - 1);
        gpu.run("prefill and one step", [...e.prefill, ...e.step]);
        const counts = Array.from(await gpu.readU32(gated[0].indirect!.buffer));
        const n = counts.length / 2, full = counts.slice(0, n), now = counts.slice(n);
        assert(full.some((c) => c > 0));
        assertEquals(now, stops ? new Array(n).fill(0) : full, `threshold ${threshold}`);
        // the state: every row advanced and drafted 1 (stops) or γ tokens
        const W = e.layout.statsWidth, o = stateOffsets(e.layout);
        const words = await gpu.readU32(e.state);
        for (let b = 0; b < 3; b++) {
          assertEquals(words[o.stats + b * W + 3 + G], stops ? 1 : G, `row ${b} drafted`);
          assert(words[b] > 3, `row ${b} did not advance`);
        }
      } finally {
        e.destroy();
      }
    }
  },
);

/** The target's exact joint law of the next three tokens after `prompt`, (V, V, V) flattened. */
async function exactJoint3(model: Decoder, prompt: number[]): Promise<Float64Array> {
  const V = model.config.numTokens;
  const law = async (rows: number[][]) => {
    const n = rows[0].length, x = await model.logits(rows);
    return rows.map((_, r) => probsRef(x.subarray((r * n + n - 1) * V, (r * n + n) * V), 0, 1));
  };
  const [p1] = await law([prompt]);
  const p2 = await law(Array.from({ length: V }, (_, t) => [...prompt, t]));
  const p3 = await law(Array.from({ length: V * V }, (_, tu) => [...prompt, tu / V | 0, tu % V]));
  const joint = new Float64Array(V * V * V);
  for (let t = 0; t < V; t++) {
    for (let u = 0; u < V; u++) {
      for (let w = 0; w < V; w++) joint[(t * V + u) * V + w] = p1[t] * p2[t][u] * p3[t * V + u][w];
    }
  }
  return joint;
}

/** Marginals (t1, t2) and (t2, t3) of a (V, V, V) law or count table. */
function pairs(x: ArrayLike<number>, V: number): [number[], number[]] {
  const a = new Array(V * V).fill(0), b = new Array(V * V).fill(0);
  for (let i = 0; i < V * V * V; i++) {
    a[Math.floor(i / V)] += x[i];
    b[i % (V * V)] += x[i];
  }
  return [a, b];
}

gpuTest(
  "adaptive draft length keeps the target's law; broken samplers are rejected",
  async (gpu) => {
    const LAW: DecoderConfig = { ...CFG, numTokens: 8, depth: 1, maxSeqLen: 16 };
    const V = 8, B = 2048, prompt = [3, 6], seqLen = 5, gamma = 3;
    const target = Decoder.create(gpu, LAW, { seed: 21 });
    const draft = Decoder.create(gpu, LAW, { seed: 22 }); // a deliberately different draft
    const law = pairs(await exactJoint3(target, prompt), V);
    const run = async (accept = acceptKernel) => {
      const counts = new Array(V * V * V).fill(0);
      let drafted = 0, accepted = 0;
      for (const seed of [1, 2]) {
        const out = await speculativeDecodingWith(
          accept,
          target,
          draft,
          new Array(B).fill(prompt),
          seqLen,
          {
            gamma,
            temperature: 1,
            filterThres: 0,
            draftThreshold: 0.3,
            seed,
          },
        );
        out.tokens.forEach((r) => counts[(r[0] * V + r[1]) * V + r[2]]++);
        drafted += out.draftedMean / 2;
        accepted += out.acceptedMean / 2;
      }
      const fits = pairs(counts, V).map((c, i) => chiSquare(c, law[i]));
      return { fits, drafted, accepted };
    };
    const exact = await run();
    // rows stop early (well below γ), and still accept drafts
    assert(exact.drafted > 1.1 && exact.drafted < 2, `draftedMean ${exact.drafted}`);
    assert(exact.accepted > 0.2, `acceptedMean ${exact.accepted}`);
    for (const fit of exact.fits) {
      assert(
        fit.pValue > 1e-3,
        `exact sampler rejected ${JSON.stringify(fit)}`,
      );
    }
    // corrections from p instead of max(0, p − q), and bonus tokens from the residual of q_{k+1}
    for (
      const [name, accept] of [["broken residual", brokenAcceptKernel], [
        "residual at k",
        residualAtK,
      ]] as const
    ) {
      const { fits } = await run(accept);
      assert(fits.some((f) => f.pValue < 1e-6), `${name} accepted ${JSON.stringify(fits)}`);
    }
  },
);

Deno.test("train.ts --draft-threshold: limits named, off unless given, saved for resume", () => {
  const adapter = { isSoftware: true, adapterName: "test", maxBinding: 134217728 };
  for (
    const [args, message] of [
      [["--draft-threshold", "0.995"], '--draft-threshold must be ≤ 0.99, got "0.995"'],
      [["--draft-threshold=-0.1"], '--draft-threshold must be > 0, got "-0.1"'],
      [["--draft-threshold", "most"], '--draft-threshold must be > 0, got "most"'],
    ] as [string[], string][]
  ) {
    throws(
      () => parseFlags(args),
      (e: Error) => e instanceof UsageError && e.message.includes(message),
    );
  }
  const off = runConfig(parseFlags(["--preset", "tiny"]), undefined, adapter);
  assert(!("draftThreshold" in off) && !("draft-threshold" in savedArgs(off)), "off: not saved");
  const zero = runConfig(
    parseFlags(["--preset", "tiny", "--draft-threshold", "0"]),
    undefined,
    adapter,
  );
  strictEqual(zero.draftThreshold, 0);
  const on = runConfig(
    parseFlags(["--preset", "tiny", "--draft-threshold", "0.4"]),
    undefined,
    adapter,
  );
  const saved = JSON.parse(JSON.stringify(savedArgs(on)));
  strictEqual(saved["draft-threshold"], 0.4);
  strictEqual(
    runConfig(parseFlags(["--resume", "x"]), saved, adapter, "s.json").draftThreshold,
    0.4,
  );
});
