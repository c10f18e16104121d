import { deepStrictEqual as assertEquals, ok, throws } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import { rotary, rotaryBackward, rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { assertClose, gpuTest, randomNormal } from "./helpers.ts";
import { rotaryBackwardRef, rotaryRef } from "./reference/attention.ts";

Deno.test("rotaryInvFreq() is 1 / 10000^(2i/D) rounded to float32", () => {
  // exponents 0, 1/4, 1/2, 3/4 give exact powers 1, 10, 100, 1000
  assertEquals(rotaryInvFreq(8), Float32Array.from([1, 0.1, 0.01, 0.001]));
  for (const D of [2, 6, 16, 64, 128]) {
    const inv = rotaryInvFreq(D);
    assertEquals(inv.length, D / 2);
    for (let i = 0; i < D / 2; i++) {
      const exact = Math.pow(10000, -2 * i / D);
      ok(Math.abs(inv[i] - exact) <= 2 ** -22 * exact, `D=${D} i=${i}: ${inv[i]} vs ${exact}`);
    }
  }
  assertEquals(rotaryInvFreq(64)[16], Math.fround(0.01));
  throws(() => rotaryInvFreq(7), /even/);
});

Deno.test("rotaryTable() takes cos/sin of the float32 angle", () => {
  const inv = rotaryInvFreq(8);
  const { cos, sin } = rotaryTable(1001, inv);
  assertEquals(cos.length, 1001 * 4);
  assertEquals(Array.from(cos.subarray(0, 4)), [1, 1, 1, 1]);
  assertEquals(Array.from(sin.subarray(0, 4)), [0, 0, 0, 0]);
  // 1000 · float32(0.1) = 100.0000015 in float64, but torch's float32 product rounds to 100
  assertEquals(cos[1000 * 4 + 1], Math.fround(Math.cos(100)));
  assertEquals(sin[1000 * 4 + 1], Math.fround(Math.sin(100)));
  ok(Math.abs(Math.fround(Math.cos(1000 * inv[1])) - cos[1000 * 4 + 1]) > 1e-7);
});

Deno.test("rotaryBackwardRef() matches central finite differences", () => {
  const [T, H, D] = [3, 2, 6];
  const sizes = { T, H, D };
  const pos = [0, 5, 11];
  const inv = rotaryInvFreq(D);
  const x = Float64Array.from(randomNormal(T * 3 * H * D, 1));
  const g = Float64Array.from(randomNormal(T * 3 * H * D, 2)); // dLoss/dy
  const loss = (xx: Float64Array) => {
    const y = rotaryRef(xx, pos, inv, sizes);
    let s = 0;
    for (let e = 0; e < y.length; e++) s += y[e] * g[e];
    return s;
  };
  const grad = rotaryBackwardRef(g, pos, inv, sizes);
  const eps = 1e-6;
  const numeric = new Float64Array(x.length);
  for (let e = 0; e < x.length; e++) {
    const xp = x.slice(), xm = x.slice();
    xp[e] += eps;
    xm[e] -= eps;
    numeric[e] = (loss(xp) - loss(xm)) / (2 * eps);
  }
  assertClose(grad, numeric, { atol: 1e-8, rtol: 1e-7, label: "rotary grad" });
});

/** Runs rotary (or its backward) on the GPU and returns the result with the reference's. */
async function rotaryCase(
  gpu: Gpu,
  { B, n, H, D, maxLen, start, backward }: {
    B: number;
    n: number;
    H: number;
    D: number;
    maxLen: number;
    start: number[];
    backward: boolean;
  },
) {
  const T = B * n;
  const x = randomNormal(T * 3 * H * D, 10 + D + n); // (T, 3, H, D)
  const inv = rotaryInvFreq(D);
  const table = rotaryTable(maxLen, inv);
  const buf = gpu.upload("qkv (T, 3, H, D)", x);
  const cos = gpu.upload("cos (maxLen, D/2)", table.cos);
  const sin = gpu.upload("sin (maxLen, D/2)", table.sin);
  const startBuf = gpu.upload("start (B)", new Uint32Array(start));
  const args = { cos, sin, start: startBuf, B, n, H, D, maxLen };
  gpu.run("rotary", [
    backward ? rotaryBackward(gpu, { dqkv: buf, ...args }) : rotary(gpu, { qkv: buf, ...args }),
  ]);
  const positions = Array.from({ length: T }, (_, t) => start[Math.floor(t / n)] + (t % n));
  const ref = (backward ? rotaryBackwardRef : rotaryRef)(x, positions, inv, { T, H, D }, maxLen);
  return { x, gpuOut: await gpu.readF32(buf), ref, positions };
}

for (const backward of [false, true]) {
  const name = backward ? "rotaryBackward()" : "rotary()";
  gpuTest(`${name} matches the reference with per-row starts and odd sizes`, async (gpu) => {
    for (const D of [10, 8]) {
      // row 1 runs past maxLen = 10 (positions 10, 11): those tokens stay as they are
      const [B, n, H, maxLen] = [3, 5, 3, 10];
      const { x, gpuOut, ref, positions } = await rotaryCase(gpu, {
        B,
        n,
        H,
        D,
        maxLen,
        start: [0, 7, 2],
        backward,
      });
      assertClose(gpuOut, ref, { atol: 2e-6, rtol: 1e-5, label: `${name} D=${D}` });
      // v and the skipped tokens are bit-for-bit untouched; every other q, k element moved
      for (let t = 0; t < B * n; t++) {
        for (let s = 0; s < 3; s++) {
          const at = (t * 3 + s) * H * D;
          const same = gpuOut.subarray(at, at + H * D).every((v, e) => v === x[at + e]);
          assertEquals(same, s === 2 || positions[t] >= maxLen || positions[t] === 0);
        }
      }
    }
  });
}

gpuTest("rotaryBackward() undoes rotary() (the rotation is orthogonal)", async (gpu) => {
  const [B, n, H, D, maxLen] = [2, 3, 1, 16, 300];
  const x = randomNormal(B * n * 3 * H * D, 5);
  const table = rotaryTable(maxLen, rotaryInvFreq(D));
  const buf = gpu.upload("qkv (T, 3, H, D)", x);
  const args = {
    cos: gpu.upload("cos (maxLen, D/2)", table.cos),
    sin: gpu.upload("sin (maxLen, D/2)", table.sin),
    start: gpu.upload("start (B)", new Uint32Array([280, 3])),
    B,
    n,
    H,
    D,
    maxLen,
  };
  gpu.run("rotary round trip", [
    rotary(gpu, { qkv: buf, ...args }),
    rotaryBackward(gpu, { dqkv: buf, ...args }),
  ]);
  assertClose(await gpu.readF32(buf), x, { atol: 1e-6, rtol: 0, label: "round trip" });
});
