import { deepStrictEqual as assertEquals, ok, throws as assertThrows } from "node:assert/strict";
import {
  adamUpdate,
  gradSumSquares,
  STATS_WORDS,
  StatsWord,
  SUMSQ_CHUNK,
} from "../kernels/adam.ts";
import type { Gpu } from "../kernels/gpu.ts";
import { Adam, type AdamOptions, type Parameter } from "../model/optimizer.ts";
import { assertClose, gpuTest, randomF32, randomNormal } from "./helpers.ts";
import {
  type AdamRefState,
  adamRefState,
  adamStepRef,
  clipGradNormRef,
} from "./reference/optimizer.ts";

/** Odd sizes: a scalar, a short vector, one and several sum-of-squares chunks (8192 floats). */
const SIZES = [1, 7, 1000, 70000];

/** Parameters with seeded values in [-1, 1) and zero gradients. */
function makeParams(gpu: Gpu, sizes: number[], seed: number): Parameter[] {
  return sizes.map((size, k) => ({
    name: `p${k}.weight`,
    param: gpu.upload(`p${k} (${size}) f32`, randomF32(size, seed + k)),
    grad: gpu.buffer(`p${k} grad (${size}) f32`, 4 * size),
    size,
  }));
}

/**
 * Gradients of step `step` (1-based): normal noise scaled per step (so the norm and the clip
 * coefficient change), with a few tiny entries in the 7-element parameter where eps matters.
 */
function stepGrads(sizes: number[], step: number, scale: number): Float32Array<ArrayBuffer>[] {
  return sizes.map((n, k) => {
    const g = randomNormal(n, 1000 * step + k, scale);
    if (n === 7) g[2] = g[5] = 3e-9 * (step % 2 ? 1 : -1);
    return g;
  });
}

/** Writes the gradients, prepares and submits one step the way a training loop does. */
function gpuStep(gpu: Gpu, opt: Adam, params: Parameter[], grads: Float32Array<ArrayBuffer>[]) {
  params.forEach((p, k) => gpu.write(p.grad, grads[k]));
  opt.prepareStep();
  gpu.run("adam step", [...opt.stepDispatches()]);
}

async function readAll(gpu: Gpu, buffers: GPUBuffer[]): Promise<Float32Array[]> {
  return await Promise.all(buffers.map((b) => gpu.readF32(b)));
}

/** Largest finite magnitude (NaN elements are compared as NaN by assertClose). */
function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i])) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * assertClose that also requires NaN exactly where the reference has NaN (helpers' assertClose
 * reports a NaN pair as a mismatch).
 */
function assertCloseNaN(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol: number; rtol: number; label: string },
) {
  const nan = (a: ArrayLike<number>) => Array.from(a, (x) => Number.isNaN(x));
  assertEquals(nan(actual), nan(expected), `${tol.label}: NaN positions`);
  const keep = (a: ArrayLike<number>) => Array.from(a).filter((x) => !Number.isNaN(x));
  assertClose(keep(actual), keep(expected), tol);
}

/** Compares params and moments with the float64 reference, tolerances scaled per array. */
async function assertMatchesRef(
  gpu: Gpu,
  opt: Adam,
  params: Parameter[],
  refParams: Float64Array[],
  ref: AdamRefState,
  what: string,
) {
  const got = await readAll(gpu, params.map((p) => p.param));
  const state = await opt.state();
  params.forEach((p, k) => {
    assertCloseNaN(got[k], refParams[k], { atol: 1e-6, rtol: 1e-6, label: `${what} ${p.name}` });
    for (const [key, expected] of [["exp_avg", ref.expAvg[k]], ["exp_avg_sq", ref.expAvgSq[k]]]) {
      assertCloseNaN(state[`${key}.${p.name}`], expected as Float64Array, {
        atol: 1e-6 * maxAbs(expected as Float64Array),
        rtol: 1e-5,
        label: `${what} ${key}.${p.name}`,
      });
    }
  });
  assertEquals(state.step, new Float32Array([ref.step]));
}

/**
 * Three steps on GPU and reference with the given clip norm; returns the reference clip
 * coefficients so the caller can check the case it meant (active / inactive) really happened.
 */
async function threeSteps(gpu: Gpu, clipNorm: number | undefined, label: string) {
  // A large lr makes f32 errors in the bias corrections or the step size show in the params.
  const lr = 0.1;
  const params = makeParams(gpu, SIZES, 11);
  const opt = new Adam(gpu, params, { lr, clipNorm });
  const refParams = params.map((_, k) => Float64Array.from(randomF32(SIZES[k], 11 + k)));
  const ref = adamRefState(SIZES);
  const coefs: number[] = [];
  const scales = [1, 0.3, 2];
  for (let step = 1; step <= 3; step++) {
    const grads = stepGrads(SIZES, step, scales[step - 1]);
    gpuStep(gpu, opt, params, grads);
    const clip = clipGradNormRef(grads, clipNorm ?? Infinity);
    adamStepRef(refParams, clip.grads, ref, { lr });
    coefs.push(clip.clipCoef);
    const stats = await opt.readStats();
    assertClose([stats.gradNorm], [clip.totalNorm], { rtol: 1e-5, label: `${label} norm ${step}` });
    assertClose([stats.clipCoef], [clip.clipCoef], { rtol: 1e-5, label: `${label} coef ${step}` });
    assertEquals(await opt.gradNorm(), stats.gradNorm);
    // The gradients themselves are scaled on the fly, never in place.
    assertEquals(await gpu.readF32(params[1].grad), grads[1]);
  }
  assertEquals(opt.step, 3);
  await assertMatchesRef(gpu, opt, params, refParams, ref, label);
  opt.destroy();
  return coefs;
}

gpuTest(
  "Adam matches the float64 torch reference over three steps without clipping",
  async (gpu) => {
    const coefs = await threeSteps(gpu, undefined, "no clip");
    assertEquals(coefs, [1, 1, 1]);
  },
);

gpuTest("Adam with an inactive clip norm matches the unclipped reference", async (gpu) => {
  const coefs = await threeSteps(gpu, 1e6, "inactive clip");
  assertEquals(coefs, [1, 1, 1]);
});

gpuTest("Adam clips like clip_grad_norm_ on steps over the max norm only", async (gpu) => {
  // Norms are about 266, 80 and 533: clipped, not clipped, clipped.
  const coefs = await threeSteps(gpu, 150, "clip");
  ok(coefs[0] < 0.6 && coefs[1] === 1 && coefs[2] < 0.3, `coefficients ${coefs}`);
});

gpuTest("Adam's clip coefficient is max_norm / (norm + 1e-6) as in torch", async (gpu) => {
  // A norm of 2e-6 makes torch's 1e-6 visible: the coefficient is 1/3, not 1/2.
  const params = makeParams(gpu, [7], 95);
  const opt = new Adam(gpu, params, { clipNorm: 1e-6 });
  const g = randomNormal(7, 96);
  const norm = Math.hypot(...g);
  for (let i = 0; i < 7; i++) g[i] *= 2e-6 / norm;
  gpuStep(gpu, opt, params, [g]);
  const clip = clipGradNormRef([g], 1e-6);
  ok(Math.abs(clip.clipCoef - 1 / 3) < 1e-6, `reference coefficient ${clip.clipCoef}`);
  const stats = await opt.readStats();
  assertClose([stats.gradNorm, stats.clipCoef], [clip.totalNorm, clip.clipCoef], {
    rtol: 1e-5,
    label: "norm and coefficient",
  });
  opt.destroy();
});

gpuTest("Adam with skipNonFinite skips NaN and Inf steps without counting them", async (gpu) => {
  const sizes = [7, 1000];
  const lr = 1e-2, clipNorm = 10;
  const params = makeParams(gpu, sizes, 21);
  const opt = new Adam(gpu, params, { lr, clipNorm, skipNonFinite: true });
  const refParams = params.map((_, k) => Float64Array.from(randomF32(sizes[k], 21 + k)));
  const ref = adamRefState(sizes);
  const refStep = (grads: Float32Array[]) =>
    adamStepRef(refParams, clipGradNormRef(grads, clipNorm).grads, ref, { lr });

  const g1 = stepGrads(sizes, 1, 1);
  gpuStep(gpu, opt, params, g1);
  refStep(g1);
  const after1 = await readAll(gpu, params.map((p) => p.param));
  const state1 = await opt.state();

  const bad = [NaN, Infinity];
  for (let i = 0; i < bad.length; i++) {
    const g = stepGrads(sizes, 2 + i, 1);
    g[i][3] = bad[i];
    gpuStep(gpu, opt, params, g);
    const stats = await opt.readStats();
    assertEquals(stats.lastSkipped, true);
    assertEquals(stats.gradNorm, bad[i]);
    assertEquals(stats.step, 1);
    assertEquals(stats.skipped, i + 1);
    assertEquals(await readAll(gpu, params.map((p) => p.param)), after1);
    assertEquals(await opt.state(), state1);
  }

  const g4 = stepGrads(sizes, 4, 1);
  gpuStep(gpu, opt, params, g4);
  refStep(g4);
  assertEquals((await opt.readStats()).lastSkipped, false);
  assertEquals(opt.step, 4); // prepared on the host; the GPU applied 2
  await assertMatchesRef(gpu, opt, params, refParams, ref, "after skips");
  opt.destroy();
});

gpuTest("Adam without skipNonFinite lets a NaN gradient through as torch does", async (gpu) => {
  const sizes = [7, 1000];
  const lr = 1e-2;
  // Clipping multiplies every gradient by NaN; without clipping only the NaN element is hit.
  for (const clipNorm of [10, undefined]) {
    const params = makeParams(gpu, sizes, 31);
    const opt = new Adam(gpu, params, { lr, clipNorm });
    const refParams = params.map((_, k) => Float64Array.from(randomF32(sizes[k], 31 + k)));
    const ref = adamRefState(sizes);
    const g = stepGrads(sizes, 1, 1);
    g[1][500] = NaN;
    gpuStep(gpu, opt, params, g);
    adamStepRef(refParams, clipGradNormRef(g, clipNorm ?? Infinity).grads, ref, { lr });
    const nans = refParams.flatMap((p) => Array.from(p)).filter(Number.isNaN).length;
    assertEquals(nans, clipNorm ? 1007 : 1);
    await assertMatchesRef(gpu, opt, params, refParams, ref, `NaN, clipNorm ${clipNorm}`);
    opt.destroy();
  }
});

gpuTest("Adam kernels cover every element once when workgroups split over x and y", async (gpu) => {
  const n = 70000;
  const g = randomNormal(n, 41);
  const grad = gpu.upload("grad (n) f32", g);
  // partials (3 + 9 + 1): a sentinel before and after this buffer's 9 chunks of SUMSQ_CHUNK.
  const chunks = Math.ceil(n / SUMSQ_CHUNK);
  assertEquals(chunks, 9);
  const partials = gpu.upload("partials (13) f32", new Float32Array(13).fill(-1));
  // 9 workgroups as a 2 × 5 grid: one workgroup past the end must write nothing.
  const split = gradSumSquares(gpu, { grad, partials, n, offset: 3, gridLimit: 2 });
  assertEquals(split.workgroups, [2, 5, 1]);
  gpu.run("split sumsq", [split]);
  const got = await gpu.readF32(partials);
  assertEquals([got[0], got[1], got[2], got[12]], [-1, -1, -1, -1]);
  let sum = 0, ref = 0;
  for (let j = 3; j < 12; j++) sum += got[j];
  for (const x of g) ref += x * x;
  assertClose([sum], [ref], { rtol: 1e-5, label: "sum of squares" });

  // The update with a split grid equals the update with a 1-D grid, bitwise: vec4 elements
  // (n % 4 = 0: 9 workgroups, a 5 × 2 grid) and scalar ones (n + 1: 35, a 9 × 4 grid).
  const stats = new Uint32Array(STATS_WORDS);
  const statsF32 = new Float32Array(stats.buffer); // the f32 words of the same buffer
  statsF32[StatsWord.coef] = 0.5;
  statsF32[StatsWord.stepSize] = 1e-2 / 0.1;
  statsF32[StatsWord.bc2Sqrt] = Math.sqrt(1e-3);
  const statsBuf = gpu.upload("stats", stats);
  for (const [size, limit, split] of [[n, 5, [5, 2, 1]], [n + 1, 10, [9, 4, 1]]] as const) {
    const p0 = randomF32(size, 42), gs = randomNormal(size, 43);
    const gradS = gpu.upload("grad (size) f32", gs);
    const results: Float32Array[] = [];
    for (const gridLimit of [undefined, limit]) {
      const param = gpu.upload("param (size) f32", p0);
      const expAvg = gpu.upload("m (size) f32", new Float32Array(size));
      const expAvgSq = gpu.upload("v (size) f32", new Float32Array(size));
      const d = adamUpdate(gpu, {
        param,
        grad: gradS,
        expAvg,
        expAvgSq,
        stats: statsBuf,
        n: size,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        gridLimit,
      });
      if (gridLimit) assertEquals(d.workgroups, [...split]);
      gpu.run("split adam", [d]);
      results.push(await gpu.readF32(param));
    }
    assertEquals(results[1], results[0]);
    ok(results[0].every((x, i) => x !== p0[i]), `every element moved (n = ${size})`);
  }
});

gpuTest("Adam.zeroGradDispatches() zeroes every gradient and nothing else", async (gpu) => {
  const params = makeParams(gpu, SIZES, 51);
  const opt = new Adam(gpu, params);
  params.forEach((p, k) => gpu.write(p.grad, randomF32(p.size, 60 + k, 1, 2)));
  ok((await gpu.readF32(params[3].grad)).every((x) => x >= 1), "gradients written");
  gpu.run("zero grad", opt.zeroGradDispatches());
  for (const p of params) assertEquals(await gpu.readF32(p.grad), new Float32Array(p.size));
  assertEquals(await gpu.readF32(params[2].param), randomF32(1000, 53));
  opt.destroy();
});

gpuTest("Adam.state() and loadState() round-trip: the next step is the same", async (gpu) => {
  const sizes = [7, 1000, 1];
  const options: AdamOptions = { lr: 1e-2, clipNorm: 20 };
  const a = makeParams(gpu, sizes, 71);
  const optA = new Adam(gpu, a, options);
  for (let step = 1; step <= 2; step++) gpuStep(gpu, optA, a, stepGrads(sizes, step, 1));
  const state = await optA.state();
  assertEquals(
    Object.keys(state).sort(),
    ["exp_avg.p0.weight", "exp_avg.p1.weight", "exp_avg.p2.weight", "exp_avg_sq.p0.weight"]
      .concat(["exp_avg_sq.p1.weight", "exp_avg_sq.p2.weight", "step"]),
  );
  assertEquals(state.step, new Float32Array([2]));
  assertEquals(state["exp_avg.p1.weight"].length, 1000);

  // A second optimizer over copies of the current parameters, with the state loaded.
  const values = await readAll(gpu, a.map((p) => p.param));
  const b = a.map((p, k) => ({
    ...p,
    param: gpu.upload(`b${k}`, new Float32Array(values[k])),
    grad: gpu.buffer(`b${k} grad`, 4 * p.size),
  }));
  const optB = new Adam(gpu, b, options);
  optB.loadState(state);
  assertEquals(optB.step, 2);
  assertEquals(await optB.state(), state);

  const g3 = stepGrads(sizes, 3, 1);
  gpuStep(gpu, optA, a, g3);
  gpuStep(gpu, optB, b, g3);
  assertEquals(
    await readAll(gpu, b.map((p) => p.param)),
    await readAll(gpu, a.map((p) => p.param)),
  );
  assertEquals(await optB.state(), await optA.state());
  optA.destroy();
  optB.destroy();
});

gpuTest(
  "Adam.loadState() names the key and both sizes when the state does not fit",
  async (gpu) => {
    const opt = new Adam(gpu, makeParams(gpu, [7, 3], 81));
    const good = await opt.state();
    const without = (key: string) =>
      Object.fromEntries(Object.entries(good).filter(([k]) => k !== key));
    assertThrows(
      () => opt.loadState(without("exp_avg_sq.p1.weight")),
      /"exp_avg_sq\.p1\.weight" is missing/,
    );
    assertThrows(() => opt.loadState(without("step")), /"step" is missing/);
    assertThrows(
      () => opt.loadState({ ...good, "exp_avg.p0.weight": new Float32Array(6) }),
      /"exp_avg\.p0\.weight" has 6 elements, expected 7/,
    );
    assertThrows(
      () => opt.loadState({ ...good, "exp_avg.other": new Float32Array(6) }),
      /"exp_avg\.other" names no parameter/,
    );
    assertThrows(() => opt.loadState({ ...good, step: new Float32Array([1.5]) }), /"step" must be/);
    // Unrelated keys (say, the model's weights in the same file) are ignored.
    opt.loadState({ ...good, "token_emb.weight": new Float32Array(3) });
    opt.destroy();
  },
);

gpuTest("new Adam() rejects bad options with the option's name and value", (gpu) => {
  const params = makeParams(gpu, [3], 91);
  const cases: [AdamOptions, RegExp][] = [
    [{ lr: 0 }, /option lr must be a finite number > 0, got 0/],
    [{ lr: -1e-3 }, /option lr .* got -0\.001/],
    [{ lr: NaN }, /option lr .* got NaN/],
    [{ lr: Infinity }, /option lr .* got Infinity/],
    [{ clipNorm: 0 }, /option clipNorm must be > 0 .* got 0/],
    [{ clipNorm: -1 }, /option clipNorm .* got -1/],
    [{ clipNorm: NaN }, /option clipNorm .* got NaN/],
    [{ beta1: 1 }, /option beta1 must be in \[0, 1\), got 1/],
    [{ beta1: -0.1 }, /option beta1 .* got -0\.1/],
    [{ beta2: 1 }, /option beta2 must be in \[0, 1\), got 1/],
    [{ eps: -1e-8 }, /option eps must be a finite number ≥ 0, got -1e-8/],
  ];
  for (const [options, message] of cases) {
    assertThrows(() => new Adam(gpu, params, options), message);
  }
  assertThrows(() => new Adam(gpu, []), /empty parameter list/);
  assertThrows(() => new Adam(gpu, [params[0], params[0]]), /"p0\.weight" twice/);
  assertThrows(
    () => new Adam(gpu, [{ ...params[0], size: 4 }]),
    /"p0\.weight": param buffer holds 3 floats, size is 4/,
  );
  const opt = new Adam(gpu, params, { clipNorm: Infinity });
  assertEquals(opt.lr, 1e-4);
  assertThrows(() => (opt.lr = 0), /option lr .* got 0/);
  opt.lr = 3e-4;
  assertEquals(opt.lr, 3e-4);
  opt.destroy();
});
