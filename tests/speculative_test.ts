import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { seqFeedKernel, type StateLayout, stateOffsets } from "../kernels/decode_state.ts";
import { RNG_PURPOSE } from "../kernels/sampling.ts";
import { acceptKernel, speculativeStatsWidth } from "../kernels/speculative.ts";
import { brokenAcceptKernel } from "./kernels/broken_accept.ts";
import { probsKernel, targetFeedKernel } from "./kernels/sampling_kernels.ts";
import { gpuTest, randomInts, randomNormal, rng } from "./helpers.ts";
import {
  chiSquare,
  probsRef,
  sampleRef,
  speculativeRowRef,
  uniformRef,
} from "./reference/sampling.ts";

/** A state buffer's contents from per-row pos, stats and seq. */
function packState(layout: StateLayout, pos: number[], stats: number[][], seq: number[][]) {
  const o = stateOffsets(layout);
  const s = new Uint32Array(o.words);
  s.set(pos, o.pos);
  stats.forEach((r, b) => s.set(r, o.stats + b * layout.statsWidth));
  seq.forEach((r, b) => s.set(r, o.seq + b * layout.seqLen));
  return s;
}

gpuTest("seqFeedKernel() and targetFeedKernel() feed from each row's position", async (gpu) => {
  const layout = { batch: 3, seqLen: 6, statsWidth: 1 };
  const seq = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25], [30, 31, 32, 33, 34, 35]];
  const state = gpu.upload("state", packState(layout, [1, 4, 6], [[0], [0], [0]], seq));
  const tokens = gpu.buffer("tokens (3, 2)", 24), start = gpu.buffer("start (3)", 12);
  gpu.run("feed", [seqFeedKernel(gpu, { state, layout, tokens, start, n: 2, back: 2 })]);
  assertEquals(Array.from(await gpu.readU32(tokens)), [10, 11, 22, 23, 34, 35]);
  assertEquals(Array.from(await gpu.readU32(start)), [0, 2, 4]);
  gpu.run("feed", [seqFeedKernel(gpu, { state, layout, tokens, start, n: 1, back: 1 })]);
  assertEquals(Array.from(await gpu.readU32(tokens, 3)), [10, 23, 35]);
  assertEquals(Array.from(await gpu.readU32(start)), [0, 3, 5]);
  const draft = gpu.upload("draft (3, 2)", new Uint32Array([1, 2, 3, 4, 5, 6]));
  const tt = gpu.buffer("target tokens (3, 3)", 36);
  gpu.run("feed target", [
    targetFeedKernel(gpu, { state, layout, draft, tokens: tt, start, gamma: 2 }),
  ]);
  assertEquals(Array.from(await gpu.readU32(tt)), [10, 1, 2, 23, 3, 4, 35, 5, 6]);
  assertEquals(Array.from(await gpu.readU32(start)), [0, 3, 5]);
});

/**
 * Inputs of an acceptance run: per row the target's logits (γ+1, V) (p is their filtered,
 * tempered softmax), q (γ, V) as f32, draft tokens, state.
 */
interface AcceptCase {
  B: number;
  V: number;
  gamma: number;
  L: number;
  logits: Float32Array<ArrayBuffer>; // (B, γ+1, V)
  filterThres: number; // of p, from the logits
  // (B, γ+1, V) p as the GPU computes it from the logits (probsKernel runs the acceptance
  // kernel's own WGSL, so the same bits): the reference's p, so that p − q = 0 exactly when the
  // draft has the target's law, as on the GPU
  p: Float32Array<ArrayBuffer>;
  q: Float32Array<ArrayBuffer>; // (B, γ, V)
  draft: Uint32Array<ArrayBuffer>; // (B, γ)
  pos: number[];
  stats: number[][];
  seq: number[][];
}

/**
 * Runs acceptKernel (with `residual: false`, the deliberately broken one of the tests) on a case
 * and returns the state words and the next draft feed it wrote.
 */
async function runAccept(
  gpu: Gpu,
  c: AcceptCase,
  o: { temperature: number; lenience: number; seed: number; residual?: boolean },
): Promise<{ state: Uint32Array; feedTokens: Uint32Array; feedStart: Uint32Array }> {
  const layout = { batch: c.B, seqLen: c.L, statsWidth: speculativeStatsWidth(c.gamma) };
  const state = gpu.upload("state", packState(layout, c.pos, c.stats, c.seq));
  const logits = gpu.upload("logits (B, γ+1, V)", c.logits);
  const q = gpu.upload("q (B, γ, V)", c.q);
  const draft = gpu.upload("draft (B, γ)", c.draft);
  const feedTokens = gpu.buffer("feed tokens (B, 2)", c.B * 8);
  const feedStart = gpu.buffer("feed start (B)", c.B * 4);
  const accept = o.residual === false ? brokenAcceptKernel : acceptKernel;
  gpu.run("accept", [
    accept(gpu, {
      state,
      layout,
      logits,
      q,
      draft,
      feedTokens,
      feedStart,
      gamma: c.gamma,
      numTokens: c.V,
      filterThres: c.filterThres,
      temperature: o.temperature,
      lenience: o.lenience,
      seed: o.seed,
    }),
  ]);
  return {
    state: await gpu.readU32(state),
    feedTokens: await gpu.readU32(feedTokens),
    feedStart: await gpu.readU32(feedStart),
  };
}

/** The target's probabilities of logits rows, computed on the GPU (see {@link AcceptCase}). */
async function targetProbs(
  gpu: Gpu,
  x: Float32Array<ArrayBuffer>,
  V: number,
  filterThres: number,
  temperature: number,
): Promise<Float32Array<ArrayBuffer>> {
  const rows = x.length / V;
  const logits = gpu.upload(`target logits (${rows}, ${V})`, x);
  const probs = gpu.buffer(`target probs (${rows}, ${V})`, x.length * 4);
  gpu.run("target probs", [
    probsKernel(gpu, { logits, probs, rows, numTokens: V, filterThres, temperature }),
  ]);
  return new Float32Array(await gpu.readF32(probs));
}

/** The state after acceptance, computed row by row with the float64 reference. */
function acceptRef(
  c: AcceptCase,
  o: { temperature: number; lenience: number; seed: number; residual?: boolean },
): Uint32Array {
  const { B, V, gamma: G, L } = c;
  const pos = [...c.pos], stats = c.stats.map((r) => [...r]), seq = c.seq.map((r) => [...r]);
  for (let b = 0; b < B; b++) {
    const s = pos[b];
    if (s >= L) continue;
    const row = (buf: Float32Array, n: number, i: number) =>
      Array.from(buf.subarray(((b * n) + i) * V, ((b * n) + i + 1) * V));
    const { accepted: a, token } = speculativeRowRef({
      p: Array.from({ length: G + 1 }, (_, i) => row(c.p, G + 1, i)),
      q: Array.from({ length: G }, (_, i) => row(c.q, G, i)),
      draft: Array.from(c.draft.subarray(b * G, (b + 1) * G)),
      r: Array.from({ length: G }, (_, i) => uniformRef([b, s, RNG_PURPOSE.accept, i], o.seed)),
      uExtra: uniformRef([b, s, RNG_PURPOSE.extra, 0], o.seed),
      uFallback: uniformRef([b, s, RNG_PURPOSE.extra, 1], o.seed),
      lenience: o.lenience,
      greedy: o.temperature === 0,
      residual: o.residual,
    });
    for (let i = 0; i < a; i++) if (s + i < L) seq[b][s + i] = c.draft[b * G + i];
    if (s + a < L) seq[b][s + a] = token;
    pos[b] = Math.min(s + a + 1, L);
    // [steps, accepted and emitted (below L), accepted (the reference's count), emitted at i]
    const emitted = Math.min(a, L - s);
    stats[b][0]++;
    stats[b][1] += emitted;
    stats[b][2] += a;
    for (let i = 0; i < emitted; i++) stats[b][3 + i]++;
  }
  return packState({ batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) }, pos, stats, seq);
}

/** A random case: p and q from random logits, draft tokens drawn from q on the CPU. */
async function randomCase(
  gpu: Gpu,
  B: number,
  V: number,
  gamma: number,
  L: number,
  seed: number,
  temperature: number,
): Promise<AcceptCase> {
  const r = rng(seed);
  const q = new Float32Array(B * gamma * V);
  const pl = randomNormal(B * (gamma + 1) * V, seed + 1, 1.5);
  const ql = randomNormal(q.length, seed + 2, 1.5);
  const p = await targetProbs(gpu, pl, V, 0.3, temperature);
  const draft = new Uint32Array(B * gamma);
  for (let b = 0; b < B; b++) {
    // every other row drafts with the target's own law (all accepted when lenience ≥ 1)
    for (let i = 0; i < gamma; i++) {
      const k = b * gamma + i, pk = b * (gamma + 1) + i;
      const row = b % 2
        ? p.subarray(pk * V, (pk + 1) * V)
        : probsRef(ql.subarray(k * V, (k + 1) * V), 0.3, temperature);
      q.set(row, k * V);
      draft[k] = sampleRef(row, r());
    }
  }
  const pos = Array.from({ length: B }, (_, b) => b < 3 ? L - b : 1 + Math.floor(r() * (L - 1)));
  const stats = Array.from(
    { length: B },
    (_, b) => Array.from({ length: speculativeStatsWidth(gamma) }, (_, i) => b + i),
  );
  const seq = Array.from({ length: B }, (_, b) => randomInts(L, V, seed + 10 + b));
  return { B, V, gamma, L, logits: pl, filterThres: 0.3, p, q, draft, pos, stats, seq };
}

gpuTest("acceptKernel() matches the float64 reference row by row", async (gpu) => {
  for (
    const [i, o] of [
      { temperature: 1, lenience: 1, seed: 3 },
      { temperature: 0.7, lenience: 1.5, seed: 2 ** 35 + 1 },
      { temperature: 0, lenience: 1, seed: 4 }, // greedy: p, q one-hot
      { temperature: 1, lenience: 1, seed: 5, residual: false },
    ].entries()
  ) {
    const c = await randomCase(gpu, 29, 11, 3, 9, 100 + i, o.temperature);
    const run = await runAccept(gpu, c, o);
    const got = run.state;
    const want = acceptRef(c, o);
    assertEquals(Array.from(got), Array.from(want), `case ${i} ${JSON.stringify(o)}`);
    // active rows feed the next step's first draft forward: seq[s], seq[s + 1] at s = pos − 2
    const seqOff =
      stateOffsets({ batch: c.B, seqLen: c.L, statsWidth: speculativeStatsWidth(c.gamma) }).seq;
    for (let b = 0; b < c.B; b++) {
      if (c.pos[b] >= c.L) continue;
      const s = Math.max(got[b] - 2, 0),
        at = (j: number) => seqOff + b * c.L + Math.min(j, c.L - 1);
      assertEquals([run.feedTokens[2 * b], run.feedTokens[2 * b + 1]], [
        got[at(s)],
        got[at(s + 1)],
      ]);
      assertEquals(run.feedStart[b], s);
    }
    // the case must exercise rejections, full acceptance and finished rows
    const a = c.pos.map((s, b) => got[b] - s);
    assert(a.some((d) => d === 1) && a.some((d) => d === c.gamma + 1), `accepted ${a}`);
    assertEquals(got[0], c.L); // a finished row stays put
  }
});

gpuTest(
  "acceptKernel() greedy accepts while x_i is the argmax, then emits the next argmax",
  async (gpu) => {
    const V = 8, G = 3, L = 9;
    const oneHot = (js: number[]) =>
      new Float32Array(js.flatMap((j) => Array.from({ length: V }, (_, v) => +(v === j))));
    const c: AcceptCase = {
      B: 3,
      V,
      gamma: G,
      L,
      logits: oneHot([2, 5, 1, 7, 2, 5, 1, 7, 2, 5, 1, 7]), // p = one-hot at the argmax
      filterThres: 0,
      p: oneHot([2, 5, 1, 7, 2, 5, 1, 7, 2, 5, 1, 7]),
      q: oneHot([2, 5, 3, 2, 5, 1, 4, 4, 4]),
      draft: new Uint32Array([2, 5, 3, 2, 5, 1, 4, 4, 4]),
      pos: [2, 2, 7],
      stats: [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
      seq: [[9, 9, 0, 0, 0, 0, 0, 0, 0], [9, 9, 0, 0, 0, 0, 0, 0, 0], [9, 9, 9, 9, 9, 9, 9, 0, 0]],
    };
    const got = (await runAccept(gpu, c, { temperature: 0, lenience: 1, seed: 0 })).state;
    const o = stateOffsets({ batch: 3, seqLen: L, statsWidth: speculativeStatsWidth(G) });
    assertEquals(Array.from(got.subarray(0, 3)), [5, 6, 8]);
    // [steps, accepted and emitted, accepted, emitted at draft position 0, 1, 2] per row
    assertEquals(Array.from(got.subarray(o.stats, o.seq)), [
      ...[1, 2, 2, 1, 1, 0],
      ...[1, 3, 3, 1, 1, 1],
      ...[1, 0, 0, 0, 0, 0],
    ]);
    assertEquals(Array.from(got.subarray(o.seq)), [
      ...[9, 9, 2, 5, 1, 0, 0, 0, 0], // x1, x2 accepted, x3 rejected: argmax of p_3
      ...[9, 9, 2, 5, 1, 7, 0, 0, 0], // all accepted, then the bonus argmax of p_4
      ...[9, 9, 9, 9, 9, 9, 9, 2, 0], // x1 rejected: argmax of p_1
    ]);
  },
);

/** The law of the first token a speculative step emits, from many identical rows. */
async function firstTokenCounts(
  gpu: Gpu,
  o: { gamma: number; residual: boolean; lenience: number },
  pLogits: Float32Array[],
  qRows: Float64Array[],
): Promise<number[]> {
  const B = 4096, V = pLogits[0].length, G = o.gamma, L = 4 + G;
  const r = rng(77);
  const logits = new Float32Array(B * (G + 1) * V), q = new Float32Array(B * G * V);
  const draft = new Uint32Array(B * G);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i <= G; i++) logits.set(pLogits[i], (b * (G + 1) + i) * V);
    for (let i = 0; i < G; i++) {
      q.set(qRows[i], (b * G + i) * V);
      draft[b * G + i] = sampleRef(qRows[i], r()); // x_i ~ q_i, independent of the GPU's RNG
    }
  }
  const c: AcceptCase = {
    B,
    V,
    gamma: G,
    L,
    logits,
    filterThres: 0,
    p: await targetProbs(gpu, logits, V, 0, 1),
    q,
    draft,
    pos: new Array(B).fill(2),
    stats: Array.from({ length: B }, () => new Array(speculativeStatsWidth(G)).fill(0)),
    seq: Array.from({ length: B }, () => new Array(L).fill(0)),
  };
  const got = (await runAccept(gpu, c, { temperature: 1, seed: 9, ...o })).state;
  const seqOff = stateOffsets({ batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) }).seq;
  const counts = new Array(V).fill(0);
  for (let b = 0; b < B; b++) counts[got[seqOff + b * L + 2]]++;
  return counts;
}

gpuTest("acceptKernel() keeps the target's law; the broken residual is rejected", async (gpu) => {
  const V = 8;
  const pLogits = [0, 1, 2, 3].map((i) => randomNormal(V, 200 + i, 1.5));
  const pRows = pLogits.map((l) => probsRef(l, 0, 1));
  const qRows = [0, 1, 2].map((i) => probsRef(randomNormal(V, 300 + i, 1.5), 0, 1));
  for (const gamma of [1, 3]) {
    const exact = await firstTokenCounts(
      gpu,
      { gamma, residual: true, lenience: 1 },
      pLogits,
      qRows,
    );
    const fit = chiSquare(exact, pRows[0]);
    assert(fit.pValue > 1e-3, `gamma ${gamma}: exact sampler rejected ${JSON.stringify(fit)}`);
    const broken = await firstTokenCounts(
      gpu,
      { gamma, residual: false, lenience: 1 },
      pLogits,
      qRows,
    );
    const bad = chiSquare(broken, pRows[0]);
    assert(bad.pValue < 1e-6, `gamma ${gamma}: broken sampler accepted ${JSON.stringify(bad)}`);
  }
  // lenience > 1 accepts more drafts and so departs from the target's law
  const lenient = await firstTokenCounts(
    gpu,
    { gamma: 1, residual: true, lenience: 4 },
    pLogits,
    qRows,
  );
  assert(chiSquare(lenient, pRows[0]).pValue < 1e-6, "lenience 4 kept the target's law");
});
