import { deepStrictEqual, ok, throws } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { matmulTN, splitKFor, weightGradient } from "../kernels/matmul.ts";
import { assertClose, gpuTest, randomF32 } from "./helpers.ts";
import { matmulTNRef } from "./reference/matmul.ts";

interface Case {
  M: number;
  N: number;
  K: number;
  splits?: number;
  bias?: boolean;
  accumulate?: boolean;
}

/**
 * Runs {@link weightGradient} on seeded `a (K, M)`, `b (K, N)` into a pre-filled `c` (so a
 * skipped output or an accumulate that ignores `c` shows) and checks it against the float64
 * reference; returns the result and how many dispatches it took.
 */
async function check(gpu: Gpu, cs: Case): Promise<{ out: Float32Array; dispatches: number }> {
  const { M, N, K } = cs;
  const seed = M * 7919 + N * 104729 + K;
  const a = randomF32(K * M, seed), b = randomF32(K * N, seed + 1);
  const bias = randomF32(N, seed + 2), c0 = randomF32(M * N, seed + 3);
  const A = gpu.upload("a (K, M)", a), B = gpu.upload("b (K, N)", b);
  const C = gpu.upload("c (M, N)", c0), BIAS = gpu.upload("bias (N)", bias);
  const ds = weightGradient(gpu, {
    a: A,
    b: B,
    c: C,
    M,
    N,
    K,
    bias: cs.bias ? BIAS : undefined,
    accumulate: cs.accumulate,
    splits: cs.splits,
  });
  gpu.run("weightGradient", ds);
  const want = matmulTNRef(a, b, M, N, K, cs.bias ? bias : undefined);
  if (cs.accumulate) { for (let i = 0; i < want.length; i++) want[i] += c0[i]; }
  const out = await gpu.readF32(C, M * N);
  // K up to ~1000 terms in [-1, 1): float32 sums stay well within 1e-4 relative to √K scale.
  assertClose(out, want, { atol: 2e-4, rtol: 1e-4, label: JSON.stringify(cs) });
  for (const buf of [A, B, C, BIAS]) buf.destroy();
  return { out, dispatches: ds.length };
}

gpuTest("weightGradient() split-K matches the float64 reference at odd sizes", async (gpu) => {
  // M, N multiples of 4 (vec4 partials) and not (scalar partials); K not a multiple of the
  // chunk; M, N not multiples of the register tile; S from 2 to 7 chunks; a 1-k last chunk
  // (K = 301 in 3 chunks of 101, 101, 99; K = 97 in 7 chunks of 14, the last 13).
  const cases: Case[] = [
    { M: 36, N: 20, K: 301, splits: 3 },
    { M: 36, N: 20, K: 301, splits: 3, bias: true, accumulate: true },
    { M: 68, N: 132, K: 517, splits: 4, accumulate: true },
    { M: 33, N: 65, K: 258, splits: 2 },
    { M: 33, N: 65, K: 258, splits: 5, bias: true, accumulate: true },
    { M: 7, N: 5, K: 97, splits: 7, accumulate: true },
    { M: 1, N: 3, K: 10, splits: 9, bias: true },
  ];
  for (const cs of cases) {
    const { dispatches } = await check(gpu, cs);
    deepStrictEqual(dispatches, 2, `split-K for ${JSON.stringify(cs)}`);
  }
  // splits = 1 is the plain matmulTN; splits > K is clamped to K chunks of one k each.
  deepStrictEqual((await check(gpu, { M: 12, N: 8, K: 40, splits: 1 })).dispatches, 1);
  await check(gpu, { M: 8, N: 4, K: 3, splits: 6, accumulate: true });
});

gpuTest("weightGradient() gives the same bits every run", async (gpu) => {
  const cs = { M: 64, N: 64, K: 700, splits: 3, accumulate: true };
  const first = await check(gpu, cs), second = await check(gpu, cs);
  deepStrictEqual(first.out, second.out);
});

gpuTest("weightGradient() picks the textured GEMM on software adapters, else splits K", (gpu) => {
  const [a, b, c] = ["a", "b", "c"].map((name) => gpu.buffer(name, 1024 * 1024 * 4));
  const pick = (M: number, N: number, K: number) =>
    weightGradient(gpu, { a, b, c, M, N, K, accumulate: true }).map((d) => d.label);
  // tiny preset at 4 × 513 tokens: logits 256×64, qkv 192×64, attnOut and ff 64×64, 64×256
  for (const [M, N] of [[256, 64], [192, 64], [64, 64], [64, 256], [256, 64]]) {
    const want = gpu.isSoftware
      ? ["store aT", "store bT", ""].map((s) => `matmulTN (textured)${s ? " " + s : ""}`)
      : ["matmulTN split-K partials", "matmulTN split-K reduce"];
    deepStrictEqual(pick(M, N, 2052), want, `${M}×${N}×2052`);
  }
  deepStrictEqual(pick(64, 64, 0), ["matmulTN"]); // nothing to store
  // The split-K choice (hardware adapters, or sizes past the texture limit), by adapter kind.
  for (const isSoftware of [true, false]) {
    for (const [M, N] of [[256, 64], [192, 64], [64, 64], [64, 256]]) {
      ok(
        splitKFor({ isSoftware }, M, N, 2052) > 1,
        `split ${M}×${N}×2052 (software ${isSoftware})`,
      );
    }
    // Short K, or many tiles already: no split.
    deepStrictEqual(splitKFor({ isSoftware }, 256, 64, 260), 1);
    deepStrictEqual(splitKFor({ isSoftware }, 64, 64, 0), 1);
  }
  deepStrictEqual(splitKFor({ isSoftware: true }, 1024, 1024, 2052), 1);
  // A forced variant is the plain GEMM with that variant.
  ok(
    weightGradient(gpu, { a, b, c, M: 64, N: 64, K: 2052, variant: "naive" })[0].pipeline ===
      matmulTN(gpu, { a, b, c, M: 64, N: 64, K: 2052, variant: "naive" }).pipeline,
  );
  // Forced splits: the split-K GEMM (or the plain one for 1) on every adapter.
  deepStrictEqual(
    weightGradient(gpu, { a, b, c, M: 64, N: 64, K: 2052, splits: 4 }).map((d) => d.label),
    ["matmulTN split-K partials", "matmulTN split-K reduce"],
  );
  throws(() => weightGradient(gpu, { a, b, c, M: 4, N: 4, K: 4, splits: 0 }), /splits = 0/);
  throws(() => weightGradient(gpu, { a, b, c, M: -1, N: 4, K: 4 }), /M = -1/);
});

gpuTest(
  "weightGradient() with M or N = 0 dispatches nothing, K = 0 gives c = bias",
  async (gpu) => {
    const bias = gpu.upload("bias", new Float32Array([1, 2, 3]));
    const a = gpu.buffer("a", 4), b = gpu.buffer("b", 4);
    const c = gpu.upload("c", new Float32Array([9, 9, 9, 9, 9, 9]));
    gpu.run("K = 0", weightGradient(gpu, { a, b, c, M: 2, N: 3, K: 0, bias, splits: 4 }));
    deepStrictEqual(Array.from(await gpu.readF32(c)), [1, 2, 3, 1, 2, 3]);
    const none = weightGradient(gpu, { a, b, c, M: 0, N: 3, K: 5000 });
    deepStrictEqual(none.map((d) => d.workgroups[0]), [0]);
  },
);
