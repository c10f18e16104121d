import { deepStrictEqual, ok } from "node:assert/strict";
import { type Dispatch, type Gpu, grid } from "../kernels/gpu.ts";
import { crossEntropy, IGNORE, sumLoss } from "../kernels/loss.ts";
import { assertClose, gpuTest, randomF32, randomInts, randomNormal } from "./helpers.ts";
import { crossEntropyRef, finiteDifferences, IGNORE_REF, sumLossRef } from "./reference/ops.ts";

/** The same dispatch with its workgroups split over x and y at a tiny limit (tests the split). */
function splitGrid(d: Dispatch): Dispatch {
  return { ...d, workgroups: grid(d.workgroups[0], 3) };
}

Deno.test("IGNORE is 0xFFFFFFFF", () => {
  deepStrictEqual(IGNORE, 0xffffffff);
  deepStrictEqual(IGNORE, IGNORE_REF);
});

Deno.test("crossEntropyRef() dLogits matches finite differences of scale·Σ losses", () => {
  const T = 4, V = 5, scale = 0.37;
  const logits = randomNormal(T * V, 1, 2);
  const targets = [2, IGNORE_REF, 0, 4];
  const { losses, dLogits } = crossEntropyRef(logits, targets, T, V, scale);
  deepStrictEqual(losses[1], 0);
  const fd = finiteDifferences(
    (l) => sumLossRef(crossEntropyRef(l, targets, T, V, scale).losses, scale),
    logits,
  );
  assertClose(dLogits, fd, { atol: 1e-8, rtol: 1e-6, label: "dLogits" });
  // −log softmax of a uniform row is log V.
  const uniform = crossEntropyRef([3, 3, 3], [1], 1, 3, 1);
  assertClose(uniform.losses, [Math.log(3)], { atol: 1e-15, label: "uniform" });
});

/** Runs crossEntropy (with dLogits preset to garbage) and checks it against the reference. */
async function checkCrossEntropy(
  gpu: Gpu,
  logits: Float32Array<ArrayBuffer>,
  targets: Uint32Array<ArrayBuffer>,
  T: number,
  V: number,
  scale: number,
  { withGrad = true, split = false, inPlace = false } = {},
): Promise<void> {
  const lb = gpu.upload("logits", logits), tb = gpu.upload("targets", targets);
  const losses = gpu.upload("losses", randomF32(T, 5));
  const dLogits = inPlace ? lb : withGrad ? gpu.upload("dLogits", randomF32(T * V, 6)) : undefined;
  let d = crossEntropy(gpu, { logits: lb, targets: tb, losses, dLogits, T, V, scale });
  if (split) d = splitGrid(d);
  gpu.run("crossEntropy", [d]);
  const ref = crossEntropyRef(logits, targets, T, V, scale);
  const label = `T=${T} V=${V}`;
  assertClose(await gpu.readF32(losses), ref.losses, { atol: 2e-5, rtol: 1e-5, label });
  if (dLogits) {
    assertClose(await gpu.readF32(dLogits), ref.dLogits, { atol: 1e-6, rtol: 1e-4, label });
  }
}

gpuTest("crossEntropy() matches the reference on odd sizes with ignored targets", async (gpu) => {
  const cases: [number, number][] = [[7, 19], [1, 19], [5, 300], [3, 1], [6, 256], [9, 2]];
  for (const [T, V] of cases) {
    const logits = randomNormal(T * V, T + V, 3);
    const targets = Uint32Array.from(randomInts(T, V, T * V));
    if (T > 1) targets[1] = IGNORE;
    if (T > 4) targets[T - 1] = IGNORE;
    await checkCrossEntropy(gpu, logits, targets, T, V, 1 / T);
  }
});

gpuTest("crossEntropy() is stable for huge logits and works without dLogits", async (gpu) => {
  const T = 4, V = 33;
  const logits = randomNormal(T * V, 7, 3);
  for (let v = 0; v < V; v++) {
    logits[v] += 1e4; // exp would overflow without the max shift
    logits[V + v] -= 1e4;
  }
  logits[2 * V + 5] = 80; // one dominant logit: tiny probabilities elsewhere
  const targets = new Uint32Array([3, 0, 5, 7]);
  await checkCrossEntropy(gpu, logits, targets, T, V, 2);
  await checkCrossEntropy(gpu, logits, targets, T, V, 1, { withGrad: false });
});

gpuTest("crossEntropy() can write dLogits in place over the logits", async (gpu) => {
  for (const [T, V] of [[7, 19], [3, 300], [2, 1]]) {
    const logits = randomNormal(T * V, T * V, 2);
    const targets = Uint32Array.from(randomInts(T, V, 9));
    targets[T - 1] = IGNORE;
    await checkCrossEntropy(gpu, logits, targets, T, V, 0.25, { inPlace: true });
  }
});

gpuTest("crossEntropy() rows index correctly on a split grid", async (gpu) => {
  const T = 11, V = 7;
  const logits = randomNormal(T * V, 3);
  const targets = Uint32Array.from(randomInts(T, V, 4));
  targets[6] = IGNORE;
  await checkCrossEntropy(gpu, logits, targets, T, V, 0.5, { split: true });
});

gpuTest("crossEntropy() gives NaN for a target ≥ V that isn't IGNORE", async (gpu) => {
  const T = 3, V = 4;
  const lb = gpu.upload("logits", randomNormal(T * V, 1));
  const tb = gpu.upload("targets", new Uint32Array([1, V, IGNORE]));
  const losses = gpu.buffer("losses", T * 4), dLogits = gpu.buffer("dLogits", T * V * 4);
  gpu.run("ce", [crossEntropy(gpu, { logits: lb, targets: tb, losses, dLogits, T, V, scale: 1 })]);
  const l = await gpu.readF32(losses), g = await gpu.readF32(dLogits);
  ok(Number.isFinite(l[0]) && l[0] > 0);
  ok(Number.isNaN(l[1]), `loss ${l[1]}`);
  deepStrictEqual(l[2], 0);
  ok(g.subarray(V, 2 * V).every(Number.isNaN));
  deepStrictEqual(Array.from(g.subarray(2 * V)), [0, 0, 0, 0]);
});

gpuTest("sumLoss() matches the reference for any T, with and without accumulation", async (gpu) => {
  for (
    const [T, accumulate] of [[1, false], [7, true], [256, false], [257, true], [
      3001,
      false,
    ]] as const
  ) {
    const losses = randomF32(T, T, 0, 5);
    const lb = gpu.upload("losses", losses), out = gpu.upload("out", new Float32Array([1.25]));
    const scale = 1 / T;
    gpu.run("sumLoss", [sumLoss(gpu, { losses: lb, out, T, scale, accumulate })]);
    const expected = sumLossRef(losses, scale) + (accumulate ? 1.25 : 0);
    assertClose(await gpu.readF32(out), [expected], { atol: 1e-6, rtol: 1e-6, label: `T=${T}` });
  }
});

gpuTest("crossEntropy() then sumLoss() give the mean loss", async (gpu) => {
  const T = 9, V = 19;
  const logits = randomNormal(T * V, 2), targets = Uint32Array.from(randomInts(T, V, 3));
  targets[4] = IGNORE;
  const lb = gpu.upload("logits", logits), tb = gpu.upload("targets", targets);
  const losses = gpu.buffer("losses", T * 4), out = gpu.buffer("out", 4);
  gpu.run("mean loss", [
    crossEntropy(gpu, { logits: lb, targets: tb, losses, T, V, scale: 1 / 8 }),
    sumLoss(gpu, { losses, out, T, scale: 1 / 8 }),
  ]);
  const ref = sumLossRef(crossEntropyRef(logits, targets, T, V, 1).losses, 1 / 8);
  assertClose(await gpu.readF32(out), [ref], { atol: 1e-6, rtol: 1e-5, label: "mean" });
});
