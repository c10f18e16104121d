import { deepStrictEqual, ok } from "node:assert/strict";
import { type Dispatch, type Gpu, grid } from "../kernels/gpu.ts";
import { RMS_EPS, rmsNorm, rmsNormBackward } from "../kernels/norm.ts";
import { assertClose, gpuTest, randomF32, randomNormal } from "./helpers.ts";
import {
  dot,
  finiteDifferences,
  RMS_EPS_REF,
  rmsNormBackwardRef,
  rmsNormRef,
} from "./reference/ops.ts";

/** The same dispatch with its workgroups split over x and y at a tiny limit (tests the split). */
function splitGrid(d: Dispatch): Dispatch {
  return { ...d, workgroups: grid(d.workgroups[0], 3) };
}

Deno.test("RMS_EPS is float32 epsilon", () => {
  deepStrictEqual(RMS_EPS, Math.fround(1.1920929e-7));
  deepStrictEqual(RMS_EPS, RMS_EPS_REF);
});

Deno.test("rmsNormBackwardRef() matches central finite differences", () => {
  for (const [T, C] of [[3, 5], [1, 1], [2, 8]]) {
    const x = randomNormal(T * C, 1), w = randomNormal(C, 2), dy = randomNormal(T * C, 3);
    const { dx, dWeight } = rmsNormBackwardRef(x, w, dy, T, C, 0.1);
    // L = Σ dy·y; a large eps keeps its contribution visible in the check.
    const fdx = finiteDifferences((xs) => dot(rmsNormRef(xs, w, T, C, 0.1).y, dy), x);
    const fdw = finiteDifferences((ws) => dot(rmsNormRef(x, ws, T, C, 0.1).y, dy), w);
    assertClose(dx, fdx, { atol: 1e-8, rtol: 1e-6, label: `dx T=${T} C=${C}` });
    assertClose(dWeight, fdw, { atol: 1e-8, rtol: 1e-6, label: `dW T=${T} C=${C}` });
  }
});

/** Runs rmsNorm (the given kernel, or the default) on seeded rows; returns y and rstd. */
async function runForward(
  gpu: Gpu,
  x: Float32Array<ArrayBuffer>,
  w: Float32Array<ArrayBuffer>,
  T: number,
  C: number,
  narrow?: boolean,
  split = false,
) {
  const xb = gpu.upload("x (T, C)", x), wb = gpu.upload("w (C)", w);
  const y = gpu.buffer("y (T, C)", T * C * 4), rstd = gpu.buffer("rstd (T)", T * 4);
  const d = rmsNorm(gpu, { x: xb, weight: wb, y, rstd, T, C, narrow });
  if (split) ok(splitGrid(d).workgroups[1] > 1, "the grid is split");
  gpu.run("rmsNorm", [split ? splitGrid(d) : d]);
  const out = { y: await gpu.readF32(y), rstd: await gpu.readF32(rstd) };
  for (const b of [xb, wb, y, rstd]) b.destroy();
  return out;
}

// C: odd, 1, multiples of 4 (the narrow kernel's vec4 loads), shorter and longer than the lanes
const SIZES: [number, number][] = [[7, 33], [1, 1], [3, 300], [5, 256], [4, 1], [6, 4], [40, 12]];

for (const narrow of [false, true]) {
  const kind = narrow ? "narrow (8 lanes per row)" : "wide";
  gpuTest(`rmsNorm() ${kind} matches the reference on odd sizes`, async (gpu) => {
    for (const [T, C] of SIZES) {
      const x = randomNormal(T * C, 10 + C), w = randomF32(C, 20 + C, 0.5, 1.5);
      const got = await runForward(gpu, x, w, T, C, narrow);
      const ref = rmsNormRef(x, w, T, C);
      assertClose(got.y, ref.y, { label: `y T=${T} C=${C}` });
      assertClose(got.rstd, ref.rstd, { label: `rstd T=${T} C=${C}` });
      // deterministic: the same bits again
      deepStrictEqual(await runForward(gpu, x, w, T, C, narrow), got, `T=${T} C=${C} rerun`);
    }
  });

  gpuTest(`rmsNorm() ${kind} handles a split grid and a zero row`, async (gpu) => {
    for (const C of [3, 8]) {
      const T = 11;
      const x = randomNormal(T * C, 5);
      x.fill(0, 3 * C, 4 * C); // row 3: rstd = 1/√eps, y = 0
      const w = randomF32(C, 6);
      const got = await runForward(gpu, x, w, T, C, narrow, true);
      const ref = rmsNormRef(x, w, T, C);
      assertClose(got.y, ref.y, { label: `y C=${C}` });
      assertClose(got.rstd, ref.rstd, { label: `rstd C=${C}` });
    }
  });
}

gpuTest("rmsNorm() takes the narrow kernel exactly on software adapters", (gpu) => {
  const b = gpu.buffer("any", 64);
  const args = { x: b, weight: b, y: b, rstd: b, T: 2, C: 8 };
  const pick = rmsNorm(gpu, args).pipeline;
  ok(pick === rmsNorm(gpu, { ...args, narrow: gpu.isSoftware }).pipeline);
  ok(pick !== rmsNorm(gpu, { ...args, narrow: !gpu.isSoftware }).pipeline);
});

/**
 * Runs rmsNorm then rmsNormBackward (the given kernels, or the default) `runs` times
 * (re-encoding the same dispatches) on fresh buffers, dx/dW preset to random `dx0`/`dw0`;
 * returns dx, dW and the matching reference.
 */
async function runBackward(
  gpu: Gpu,
  T: number,
  C: number,
  seed: number,
  acc: { accumulateDx?: boolean; accumulateDw?: boolean; narrow?: boolean },
  split = false,
  runs = 1,
) {
  const x = randomNormal(T * C, seed), w = randomF32(C, seed + 1, 0.5, 1.5);
  const dy = randomNormal(T * C, seed + 2);
  const dx0 = randomF32(T * C, seed + 3), dw0 = randomF32(C, seed + 4);
  const xb = gpu.upload("x", x), wb = gpu.upload("w", w), dyb = gpu.upload("dy", dy);
  const dxb = gpu.upload("dx", dx0), dwb = gpu.upload("dW", dw0);
  const y = gpu.buffer("y", T * C * 4), rstd = gpu.buffer("rstd", T * 4);
  let bwd = rmsNormBackward(gpu, {
    x: xb,
    weight: wb,
    rstd,
    dy: dyb,
    dx: dxb,
    dWeight: dwb,
    T,
    C,
    ...acc,
  });
  if (split) {
    bwd = bwd.map(splitGrid);
    ok(bwd[0].workgroups[1] > 1, "the dx grid is split");
  }
  const fwd = rmsNorm(gpu, { x: xb, weight: wb, y, rstd, T, C });
  for (let r = 0; r < runs; r++) gpu.run("rmsNorm fwd+bwd", [fwd, ...bwd]);
  const ref = rmsNormBackwardRef(x, w, dy, T, C);
  if (acc.accumulateDx) { for (let i = 0; i < T * C; i++) ref.dx[i] = dx0[i] + runs * ref.dx[i]; }
  if (acc.accumulateDw) {
    for (let i = 0; i < C; i++) ref.dWeight[i] = dw0[i] + runs * ref.dWeight[i];
  }
  const out = {
    dx: await gpu.readF32(dxb),
    dW: await gpu.readF32(dwb),
    ref,
    dispatches: bwd.length,
  };
  for (const b of [xb, wb, dyb, dxb, dwb, y, rstd]) b.destroy();
  return out;
}

for (const narrow of [false, true]) {
  const kind = narrow ? "narrow (8 lanes per row)" : "wide";
  gpuTest(
    `rmsNormBackward() ${kind} matches the reference, with and without accumulation, run twice`,
    async (gpu) => {
      // C: odd, 1, multiples of 4 (vec4 loads) shorter and longer than 8 lanes × 4
      const cases: [number, number, boolean, boolean][] = [
        [7, 33, false, false],
        [7, 33, true, true],
        [1, 1, false, true],
        [3, 300, true, false],
        [1, 300, false, false],
        [9, 1, true, true],
        [5, 4, false, true],
        [6, 12, true, false],
        [4, 128, true, true],
        [3, 256, false, false],
        [2, 36, true, true],
      ];
      for (const [T, C, accumulateDx, accumulateDw] of cases) {
        const seed = T * 100 + C;
        const r = await runBackward(
          gpu,
          T,
          C,
          seed,
          { accumulateDx, accumulateDw, narrow },
          false,
          2,
        );
        const label = `T=${T} C=${C} acc=${accumulateDx}/${accumulateDw}`;
        assertClose(r.dx, r.ref.dx, { atol: 1e-5, rtol: 1e-4, label: `dx ${label}` });
        assertClose(r.dW, r.ref.dWeight, { atol: 1e-5, rtol: 1e-4, label: `dW ${label}` });
        // deterministic: the same bits again, and with the grid split over x and y
        const again = await runBackward(gpu, T, C, seed, { accumulateDx, accumulateDw, narrow });
        const split = await runBackward(
          gpu,
          T,
          C,
          seed,
          { accumulateDx, accumulateDw, narrow },
          T > 3,
        );
        deepStrictEqual(split.dx, again.dx, `dx ${label} split`);
        deepStrictEqual(split.dW, again.dW, `dW ${label} split`);
      }
    },
  );

  gpuTest(
    `rmsNormBackward() ${kind} reduces dWeight over many rows in chunks, deterministically`,
    async (gpu) => {
      // T > 512 rows takes the two-stage path (partials per chunk, then their column sums);
      // C = 5: scalar loads, C = 8: vec4 loads in the narrow kernels.
      for (const C of [5, 8]) {
        const T = 1100;
        const a = await runBackward(gpu, T, C, 77, { accumulateDw: true, narrow });
        deepStrictEqual(a.dispatches, 3);
        assertClose(a.dx, a.ref.dx, { atol: 1e-5, rtol: 1e-4, label: `dx C=${C}` });
        assertClose(a.dW, a.ref.dWeight, { atol: 2e-4, rtol: 1e-4, label: `dW C=${C}` });
        const b = await runBackward(gpu, T, C, 77, { accumulateDw: true, narrow }, true);
        deepStrictEqual(b.dW, a.dW, "same bits with a split grid");
        deepStrictEqual(b.dx, a.dx);
        // Encoded twice: dWeight gets the gradient twice, dx (not accumulated) once.
        const c = await runBackward(gpu, T, C, 78, { accumulateDw: true, narrow }, false, 2);
        assertClose(c.dx, c.ref.dx, { atol: 1e-5, rtol: 1e-4, label: `dx C=${C}, 2 runs` });
        assertClose(c.dW, c.ref.dWeight, { atol: 4e-4, rtol: 1e-4, label: `dW C=${C}, 2 runs` });
      }
    },
  );

  gpuTest(`rmsNorm() and rmsNormBackward() ${kind} work past 65535 rows`, async (gpu) => {
    const T = 65600, C = 4;
    const r = await runBackward(gpu, T, C, 5, { narrow });
    assertClose(r.dx, r.ref.dx, { atol: 1e-5, rtol: 1e-4, label: "dx" });
    assertClose(r.dW, r.ref.dWeight, { atol: 1e-3, rtol: 1e-4, label: "dW" });
  });
}

gpuTest("rmsNormBackward() takes the narrow kernels exactly on software adapters", (gpu) => {
  const b = gpu.buffer("any", 64);
  const args = { x: b, weight: b, rstd: b, dy: b, dx: b, dWeight: b, T: 2, C: 8 };
  const pick = rmsNormBackward(gpu, args).map((d) => d.pipeline);
  const same = rmsNormBackward(gpu, { ...args, narrow: gpu.isSoftware }).map((d) => d.pipeline);
  const other = rmsNormBackward(gpu, { ...args, narrow: !gpu.isSoftware }).map((d) => d.pipeline);
  deepStrictEqual(pick.length, 2);
  ok(pick.every((p, i) => p === same[i]));
  ok(pick.every((p, i) => p !== other[i]));
});
