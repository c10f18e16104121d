import { deepStrictEqual, ok } from "node:assert/strict";
import { add, ERF_WGSL, gelu, geluBackward, sumRows } from "../kernels/activation.ts";
import { type Dispatch, grid } from "../kernels/gpu.ts";
import { assertClose, gpuTest, randomF32, randomNormal } from "./helpers.ts";
import {
  addRef,
  erfRef,
  finiteDifferences,
  geluBackwardRef,
  geluRef,
  sumRowsRef,
} from "./reference/ops.ts";

/** The same dispatch with its workgroups split over x and y at a tiny limit (tests the split). */
function splitGrid(d: Dispatch): Dispatch {
  return { ...d, workgroups: grid(d.workgroups[0], 3) };
}

Deno.test("erfRef() matches known values and its derivative", () => {
  // Values from Abramowitz & Stegun / mpmath.
  const known: [number, number][] = [
    [0, 0],
    [0.1, 0.1124629160182849],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [-1, -0.8427007929497149],
    [2, 0.9953222650189527],
    [3, 0.9999779095030014],
    [4, 0.9999999845827421],
    [5.5, 0.9999999999999927],
    [10, 1],
  ];
  for (const [x, e] of known) {
    assertClose([erfRef(x)], [e], { atol: 1e-15, rtol: 0, label: `${x}` });
  }
  // erf'(x) = 2/√π · e^(−x²)
  for (const x of [-3, -0.7, 0, 0.3, 1.9, 4.5]) {
    const [fd] = finiteDifferences((v) => erfRef(v[0]), [x]);
    const exact = (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x);
    assertClose([fd], [exact], { atol: 1e-9, rtol: 0, label: `erf'(${x})` });
  }
});

gpuTest("ERF_WGSL is within ~1e-7 of float64 erf on a dense grid over [-10, 10]", async (gpu) => {
  const code = `
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (n)
${ERF_WGSL}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < arrayLength(&x)) { y[g.x] = erf_f32(x[g.x]); }
}`;
  // Step 1/1024 plus the branch point 0.927734375 and values around it, and some far tails.
  const xs: number[] = [];
  for (let i = -10240; i <= 10240; i++) xs.push(i / 1024);
  for (let i = -8; i <= 8; i++) xs.push(0.927734375 + i * 2 ** -24, -0.927734375 + i * 2 ** -24);
  xs.push(1e-30, -1e-30, 1e-6, 50, -50, 1e30, -1e30);
  const x = Float32Array.from(xs);
  const xb = gpu.upload("x", x), yb = gpu.buffer("y", x.length * 4);
  gpu.run("erf", [
    gpu.kernel({
      label: "erf",
      code,
      buffers: { x: xb, y: yb },
      workgroups: Math.ceil(x.length / 256),
    }),
  ]);
  const y = await gpu.readF32(yb);
  const ref = Array.from(x, erfRef);
  // ~6e-8 is the approximation; the rest is the device's exp (WGSL allows a few ulp).
  assertClose(y, ref, { atol: 1.5e-7, rtol: 0, label: "erf" });
  // Odd symmetry holds exactly, and tiny arguments keep their relative accuracy.
  deepStrictEqual(y[0], -y[20480]);
  assertClose([y[x.length - 7]], [Math.fround(1e-30) * 2 / Math.sqrt(Math.PI)], {
    atol: 0,
    rtol: 1e-6,
    label: "erf(1e-30)",
  });
});

Deno.test("geluBackwardRef() matches central finite differences", () => {
  const x = Float64Array.from([-9, -4, -1.5, -0.3, 0, 0.2, 1, 2.7, 6]);
  const dy = randomNormal(x.length, 3);
  const fd = finiteDifferences((xs) => {
    const y = geluRef(xs);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * dy[i];
    return s;
  }, x);
  assertClose(geluBackwardRef(x, dy), fd, { atol: 1e-8, rtol: 1e-7, label: "dx" });
});

gpuTest("gelu() and geluBackward() match the reference on odd sizes", async (gpu) => {
  for (const n of [1, 7, 257, 1001]) {
    const x = randomNormal(n, n, 3);
    if (n > 7) x.set([-12, -5, 0, 5, 12]);
    const dy = randomNormal(n, n + 1);
    const xb = gpu.upload("x", x), dyb = gpu.upload("dy", dy);
    const y = gpu.buffer("y", n * 4), dx = gpu.buffer("dx", n * 4);
    gpu.run("gelu", [gelu(gpu, { x: xb, y, n }), geluBackward(gpu, { x: xb, dy: dyb, dx, n })]);
    assertClose(await gpu.readF32(y), geluRef(x), { atol: 1e-6, rtol: 1e-5, label: `y n=${n}` });
    assertClose(await gpu.readF32(dx), geluBackwardRef(x, dy), {
      atol: 1e-6,
      rtol: 1e-5,
      label: `dx n=${n}`,
    });
  }
});

gpuTest("gelu(), geluBackward() and add() index correctly on a split grid", async (gpu) => {
  const n = 256 * 7 + 5; // 8 workgroups, split 3 × 3
  const x = randomNormal(n, 1), y0 = randomNormal(n, 2), dy = randomNormal(n, 3);
  const xb = gpu.upload("x", x), yb = gpu.upload("y", y0), dyb = gpu.upload("dy", dy);
  const g = gpu.buffer("g", n * 4), dx = gpu.buffer("dx", n * 4);
  const ds = [
    gelu(gpu, { x: xb, y: g, n }),
    geluBackward(gpu, { x: xb, dy: dyb, dx, n }),
    add(gpu, { x: yb, y: xb, n }),
  ].map(splitGrid);
  ok(ds.every((d) => d.workgroups[1] > 1));
  gpu.run("split", ds);
  assertClose(await gpu.readF32(g), geluRef(x), { atol: 1e-6, rtol: 1e-5, label: "y" });
  assertClose(await gpu.readF32(dx), geluBackwardRef(x, dy), { atol: 1e-6, label: "dx" });
  assertClose(await gpu.readF32(yb), addRef(y0, x), { atol: 1e-6, label: "x + y" });
});

gpuTest("add() adds in place and leaves elements past n alone", async (gpu) => {
  const n = 300;
  const x = randomF32(n + 3, 1), y = randomF32(n + 3, 2);
  const xb = gpu.upload("x", x), yb = gpu.upload("y", y);
  gpu.run("add", [add(gpu, { x: xb, y: yb, n })]);
  const expected = addRef(x, y);
  expected.set(x.subarray(n), n);
  assertClose(await gpu.readF32(xb), expected, { atol: 1e-6, label: "x" });
});

gpuTest(
  "sumRows() matches the reference, wide and narrow, with and without accumulation",
  async (gpu) => {
    const cases: [number, number, boolean][] = [
      [7, 33, false],
      [7, 33, true],
      [1, 1, false],
      [300, 5, true],
      [70, 300, false],
      [33, 8, false],
      [5, 200, true], // narrow: 4 workgroups of 64 columns, the last one partly past N
    ];
    for (
      const [M, N, accumulate, narrow] of cases.flatMap((c) =>
        [false, true].map((n) => [...c, n] as const)
      )
    ) {
      const x = randomNormal(M * N, M + N), out0 = randomF32(N, 9);
      const xb = gpu.upload("x", x), out = gpu.upload("out", out0);
      let d = sumRows(gpu, { x: xb, out, M, N, accumulate, narrow });
      if (N >= 200) d = splitGrid(d);
      gpu.run("sumRows", [d]);
      const ref = sumRowsRef(x, M, N);
      if (accumulate) { for (let i = 0; i < N; i++) ref[i] += out0[i]; }
      assertClose(await gpu.readF32(out), ref, {
        atol: 1e-5,
        rtol: 1e-5,
        label: `M=${M} N=${N} acc=${accumulate} narrow=${narrow}`,
      });
    }
  },
);
