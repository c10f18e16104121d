/**
 * Non-finite logits at the kernel level: no sampling or acceptance kernel may write a token
 * outside [0, V). A row whose logits hold NaN (anywhere), +∞ (unless greedy) or only −∞ is
 * stopped: its error word says why, which model and where, `pos` becomes L, and nothing else of
 * the row is written. Rows that are fine (−∞ beside larger logits included) are sampled exactly
 * as the reference says.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { ROW_ERROR, rowErrors, type StateLayout, stateOffsets } from "../kernels/decode_state.ts";
import { baseStepKernel, draftStepKernel } from "../kernels/decode_step.ts";
import { RNG_PURPOSE } from "../kernels/sampling.ts";
import { acceptKernel, speculativeStatsWidth } from "../kernels/speculative.ts";
import { probsKernel } from "./kernels/sampling_kernels.ts";
import { gpuTest, randomNormal } from "./helpers.ts";
import { probsRef, rowErrorRef, sampleRef, uniformRef } from "./reference/sampling.ts";

const V = 13;
const SENT = 0xdead;

/** Logits rows of every kind: fine ones and each way of being unusable. */
function kinds(seed: number): { name: string; row: Float32Array }[] {
  const base = randomNormal(V, seed, 2);
  const min = base.indexOf(Math.min(...base));
  const withAt = (pairs: [number, number][]) => {
    const r = base.slice();
    for (const [j, v] of pairs) r[j] = v;
    return r;
  };
  return [
    { name: "finite", row: base.slice() },
    { name: "one NaN", row: withAt([[3, NaN]]) },
    { name: "NaN at the smallest logit (dropped by top-k)", row: withAt([[min, NaN]]) },
    { name: "NaN last", row: withAt([[V - 1, NaN]]) },
    { name: "+Inf", row: withAt([[5, Infinity]]) },
    { name: "two +Inf", row: withAt([[2, Infinity], [9, Infinity]]) },
    {
      name: "some -Inf, the max among them",
      row: withAt([[0, -Infinity], [1, -Infinity], [base.indexOf(Math.max(...base)), -Infinity]]),
    },
    { name: "all -Inf", row: new Float32Array(V).fill(-Infinity) },
    { name: "NaN and +Inf", row: withAt([[1, NaN], [7, Infinity]]) },
    { name: "NaN among -Inf", row: new Float32Array(V).fill(-Infinity).fill(NaN, 4, 5) },
  ];
}

const SETTINGS = [
  { temperature: 0, filterThres: 0 },
  { temperature: 0, filterThres: 0.5 },
  { temperature: 0.9, filterThres: 0 },
  { temperature: 0.9, filterThres: 0.5 },
];

/** The row's token as the reference draws it, or its error bits. */
function expectRow(
  row: Float32Array,
  o: { temperature: number; filterThres: number },
  u: number,
): { bad: number; token: number } {
  const bad = rowErrorRef(row, o.temperature);
  if (bad) return { bad, token: -1 };
  return { bad: 0, token: sampleRef(probsRef(row, o.filterThres, o.temperature), u) };
}

function packState(layout: StateLayout, pos: number[], seq: (b: number) => number[]) {
  const o = stateOffsets(layout);
  const s = new Uint32Array(o.words);
  s.set(pos, o.pos);
  for (let b = 0; b < layout.batch; b++) s.set(seq(b), o.seq + b * layout.seqLen);
  return s;
}

gpuTest(
  "baseStepKernel() stops rows with non-finite logits, never writes a bad token",
  async (gpu) => {
    const rows = kinds(41);
    const B = rows.length + 1, L = 6, seed = 3;
    const layout = { batch: B, seqLen: L, statsWidth: 1 };
    const o = stateOffsets(layout);
    // the last row is finished and has a NaN: it is left alone
    const pos = rows.map((_, b) => 1 + (b % (L - 1))).concat([L]);
    const x = new Float32Array(B * V);
    rows.forEach((r, b) => x.set(r.row, b * V));
    x[(B - 1) * V + 2] = NaN;
    for (const [c, s] of SETTINGS.entries()) {
      const init = packState(layout, pos, (b) => new Array(L).fill(0).map((_, i) => 100 + b + i));
      const state = gpu.upload("state", init);
      const logits = gpu.upload(`logits (${B}, 1, ${V})`, x);
      const feedTokens = gpu.upload("feed tokens", new Uint32Array(B).fill(SENT));
      const feedStart = gpu.upload("feed start", new Uint32Array(B).fill(SENT));
      gpu.run("base step", [
        baseStepKernel(gpu, {
          ...s,
          logits,
          state,
          layout,
          n: 1,
          seed,
          numTokens: V,
          feedTokens,
          feedStart,
        }),
      ]);
      const got = await gpu.readU32(state);
      const want = init.slice();
      const wantFeed = new Array(B).fill(SENT);
      for (let b = 0; b < B - 1; b++) {
        const u = uniformRef([b, pos[b], RNG_PURPOSE.base, 0], seed);
        const e = expectRow(rows[b].row, s, u);
        if (e.bad) {
          want[o.err + 2 * b] = e.bad | (ROW_ERROR.target << 4);
          want[o.err + 2 * b + 1] = pos[b];
          want[b] = L;
        } else {
          want[o.seq + b * L + pos[b]] = e.token;
          want[b]++;
          want[o.stats + b]++;
          wantFeed[b] = e.token;
        }
      }
      const label = `setting ${c} ${JSON.stringify(s)}`;
      for (let b = 0; b < B; b++) {
        assertEquals(
          [got[b], got[o.err + 2 * b], got[o.err + 2 * b + 1], got[o.stats + b]],
          [want[b], want[o.err + 2 * b], want[o.err + 2 * b + 1], want[o.stats + b]],
          `${label}, row ${b} (${rows[b]?.name ?? "finished"})`,
        );
      }
      assertEquals(Array.from(got), Array.from(want), label);
      assertEquals(Array.from(await gpu.readU32(feedTokens)), wantFeed, label);
      // every token in the sequences is one of the vocabulary or the initial fill
      for (let i = 0; i < B * L; i++) assert(got[o.seq + i] < V || got[o.seq + i] >= 100);
      // the host decodes the flags: NaN rows and all -Inf rows fail at every setting
      const errs = rowErrors(layout, got);
      assert(errs.some((e) => e.row === 1 && e.reasons.includes("NaN") && e.source === "target"));
      assert(errs.some((e) => e.row === 7 && e.reasons.includes("every logit -Inf")));
      assertEquals(errs.some((e) => e.row === 4), s.temperature > 0, `${label}: +Inf row`);
    }
  },
);

gpuTest("draftStepKernel() stops rows whose draft logits are not finite", async (gpu) => {
  const rows = kinds(43);
  const B = rows.length, L = 9, G = 3, seed = 8;
  const layout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) };
  const o = stateOffsets(layout);
  const pos = rows.map((_, b) => 1 + (b % 4));
  const x = new Float32Array(B * V);
  rows.forEach((r, b) => x.set(r.row, b * V));
  for (const s of SETTINGS) {
    for (const i of [2, G]) { // a step that feeds the next draft forward, and the last one
      const init = packState(layout, pos, () => new Array(L).fill(1));
      const state = gpu.upload("state", init);
      const logits = gpu.upload(`logits (${B}, 1, ${V})`, x);
      const q = gpu.upload("q", new Float32Array(B * G * V).fill(-1));
      const draft = gpu.upload("draft", new Uint32Array(B * G).fill(SENT));
      const feeds = i < G
        ? {
          feedTokens: gpu.upload("feed tokens", new Uint32Array(B).fill(SENT)),
          feedStart: gpu.upload("feed start", new Uint32Array(B).fill(SENT)),
        }
        : {
          targetTokens: gpu.upload("target tokens", new Uint32Array(B * (G + 1)).fill(SENT)),
          targetStart: gpu.upload("target start", new Uint32Array(B).fill(SENT)),
        };
      gpu.run("draft step", [
        draftStepKernel(gpu, {
          ...s,
          ...feeds,
          logits,
          state,
          layout,
          q,
          draft,
          n: 1,
          i,
          gamma: G,
          seed,
          numTokens: V,
        }),
      ]);
      const got = await gpu.readU32(state), gd = await gpu.readU32(draft);
      const gq = await gpu.readF32(q);
      const gfeed = await gpu.readU32((feeds.feedTokens ?? feeds.targetTokens)!);
      const want = init.slice();
      for (let b = 0; b < B; b++) {
        const label = `${JSON.stringify(s)} i ${i} row ${b} (${rows[b].name})`;
        const u = uniformRef([b, pos[b], RNG_PURPOSE.draft, i], seed);
        const e = expectRow(rows[b].row, s, u);
        const d = gd[b * G + i - 1];
        if (e.bad) {
          want[o.err + 2 * b] = e.bad | (ROW_ERROR.draft << 4) | (i << 8);
          want[o.err + 2 * b + 1] = pos[b] + i - 1;
          want[b] = L;
          assertEquals(d, SENT, `${label}: a stopped row wrote a draft token`);
          assert(gq.subarray((b * G + i - 1) * V, (b * G + i) * V).every((v) => v === -1), label);
          assert(gfeed[i < G ? b : b * (G + 1)] === SENT, `${label}: a stopped row fed`);
        } else {
          assertEquals(d, e.token, label);
        }
      }
      assertEquals(Array.from(got), Array.from(want), `${JSON.stringify(s)} i ${i}`);
      assert(Array.from(gd).every((t) => t < V || t === SENT), "a draft token out of range");
    }
  }
});

/** The target's probabilities of one logits row as the kernels compute them (same WGSL). */
async function gpuProbs(gpu: Gpu, row: Float32Array, temperature: number, filterThres: number) {
  const logits = gpu.upload("row", new Float32Array(row));
  const probs = gpu.buffer("probs", V * 4);
  gpu.run("probs", [
    probsKernel(gpu, { logits, probs, rows: 1, numTokens: V, temperature, filterThres }),
  ]);
  return new Float32Array(await gpu.readF32(probs));
}

gpuTest(
  "acceptKernel() stops rows whose target logits it reads are not finite, only those",
  async (gpu) => {
    const G = 2, L = 12, seed = 5;
    const fine = randomNormal(V, 51, 2);
    const masked = fine.slice(); // token 4 has probability 0 under the target
    masked[4] = -Infinity;
    const nan = fine.slice(), inf = fine.slice(), allNeg = new Float32Array(V).fill(-Infinity);
    nan[6] = NaN;
    inf[8] = Infinity;
    const top = fine.indexOf(Math.max(...fine));
    for (const s of SETTINGS) {
      const greedy = s.temperature === 0;
      // p_i of the target rows that are fine: drafts drawn from q = p are always accepted
      const pFine = await gpuProbs(gpu, fine, s.temperature, s.filterThres);
      const pMasked = await gpuProbs(gpu, masked, s.temperature, s.filterThres);
      // a draft token p accepts for sure (q = p): greedy, the argmax; else any kept token
      const sure = greedy ? top : pFine.indexOf(Math.max(...pFine));
      // each case: target rows p_1..p_{γ+1}, draft q rows and tokens, and what must happen
      const cases: {
        name: string;
        target: Float32Array[];
        q: Float32Array[];
        draft: number[];
        pos?: number;
        bad?: { bits: number; index: number };
      }[] = [
        { name: "NaN in p_1", target: [nan, fine, fine], q: [pFine, pFine], draft: [sure, sure] },
        {
          name: "NaN in p_2 after x_1 accepted",
          target: [fine, nan, fine],
          q: [pFine, pFine],
          draft: [sure, sure],
        },
        {
          name: "+Inf in the bonus row",
          target: [fine, fine, inf],
          q: [pFine, pFine],
          draft: [sure, sure],
        },
        {
          name: "all -Inf in p_1",
          target: [allNeg, fine, fine],
          q: [pFine, pFine],
          draft: [sure, sure],
        },
        {
          // x_1 = 4 has p = 0 (masked), so it is rejected and p_2, p_3 are never read
          name: "NaN in rows after a rejection",
          target: [masked, nan, nan],
          q: [oneHot(4), pFine],
          draft: [4, sure],
        },
        {
          name: "a finished row",
          target: [nan, nan, nan],
          q: [pFine, pFine],
          draft: [sure, sure],
          pos: L,
        },
        { name: "fine", target: [fine, fine, fine], q: [pFine, pFine], draft: [sure, sure] },
      ];
      for (const c of cases) {
        const bits = c.target.map((r) => rowErrorRef(r, s.temperature));
        // the rows read: up to the first bad one while drafts are accepted (all here but the
        // rejection case, which reads p_1 only)
        const read = c.name.startsWith("NaN in rows after") ? 1 : G + 1;
        const first = bits.slice(0, read).findIndex((x) => x !== 0);
        if (first >= 0 && c.pos === undefined) c.bad = { bits: bits[first], index: first };
      }
      const B = cases.length;
      const layout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G) };
      const o = stateOffsets(layout);
      const pos = cases.map((c) => c.pos ?? 3);
      const init = packState(layout, pos, () => new Array(L).fill(1));
      const logits = new Float32Array(B * (G + 1) * V), q = new Float32Array(B * G * V);
      cases.forEach((c, b) => {
        c.target.forEach((r, i) => logits.set(r, (b * (G + 1) + i) * V));
        c.q.forEach((r, i) => q.set(r, (b * G + i) * V));
      });
      const state = gpu.upload("state", init);
      const feedTokens = gpu.buffer("feed tokens", B * 8), feedStart = gpu.buffer("feed", B * 4);
      gpu.run("accept", [
        acceptKernel(gpu, {
          ...s,
          state,
          layout,
          logits: gpu.upload("target logits", logits),
          q: gpu.upload("q", q),
          draft: gpu.upload("draft", new Uint32Array(cases.flatMap((c) => c.draft))),
          gamma: G,
          lenience: 1,
          seed,
          numTokens: V,
          feedTokens,
          feedStart,
        }),
      ]);
      const got = await gpu.readU32(state);
      cases.forEach((c, b) => {
        const label = `${JSON.stringify(s)} ${c.name}`;
        const err = [got[o.err + 2 * b], got[o.err + 2 * b + 1]];
        const seq = Array.from(got.subarray(o.seq + b * L, o.seq + (b + 1) * L));
        if (c.bad) {
          assertEquals(err, [
            c.bad.bits | (ROW_ERROR.target << 4) | (c.bad.index << 8),
            pos[b] + c.bad.index,
          ], label);
          assertEquals(got[b], L, `${label}: the row is stopped`);
          assertEquals(seq, new Array(L).fill(1), `${label}: a stopped row wrote tokens`);
          assertEquals(got[o.stats + b * layout.statsWidth], 0, `${label}: a stopped step counted`);
        } else {
          assertEquals(err, [0, 0], label);
          assert(seq.every((t) => t < V), `${label}: a token out of range ${seq}`);
        }
      });
      // the rejection case emits the correction, drawn where p − q > 0: never token 4
      const r = cases.findIndex((c) => c.name.startsWith("NaN in rows after"));
      assertEquals(got[r], pos[r] + 1);
      assert(got[o.seq + r * L + pos[r]] !== 4 && pMasked[got[o.seq + r * L + pos[r]]] > 0);
      // greedy takes the first +Inf of the bonus row as its argmax
      const inf2 = cases.findIndex((c) => c.name.startsWith("+Inf"));
      if (greedy) assertEquals(got[o.seq + inf2 * L + pos[inf2] + G], 8);
    }
  },
);

function oneHot(j: number): Float32Array {
  const r = new Float32Array(V);
  r[j] = 1;
  return r;
}
