import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { type Dispatch, type Gpu, grid } from "../kernels/gpu.ts";
import {
  type GemmVariant,
  gemvNT,
  type GemvVariant,
  linear,
  type MatmulArgs,
  matmulNN,
  matmulNT,
  matmulTN,
} from "../kernels/matmul.ts";
import { unrollLoops } from "../kernels/unroll.ts";
import { assertClose, gpuTest, randomF32 } from "./helpers.ts";
import { matmulNNRef, matmulNTRef, matmulTNRef } from "./reference/matmul.ts";

type Kernel = (gpu: Gpu, args: MatmulArgs) => Dispatch;
type Ref = typeof matmulNTRef;

/** Each layout: kernel, reference, and the element counts of a and b for (M, N, K). */
const LAYOUTS: { name: string; fn: Kernel; ref: Ref }[] = [
  { name: "matmulNT", fn: matmulNT, ref: matmulNTRef },
  { name: "matmulNN", fn: matmulNN, ref: matmulNNRef },
  { name: "matmulTN", fn: matmulTN, ref: matmulTNRef },
];

/** Row-major transpose of `x (rows, cols)`. */
function transpose(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
  return t;
}

/** The same dispatch with its workgroups split over x and y at a tiny limit (tests the split). */
function splitGrid(d: Dispatch): Dispatch {
  return { ...d, workgroups: grid(d.workgroups[0], 3) };
}

interface Case {
  M: number;
  N: number;
  K: number;
  bias?: boolean;
  accumulate?: boolean;
  variant?: GemmVariant | GemvVariant;
  split?: boolean;
}

/**
 * Runs `fn` on seeded inputs (a and b both have M·K and K·N elements whatever the layout) and
 * checks it against `ref`, with `c` pre-filled so that a write that skips an element, or an
 * accumulate that ignores `c`, shows.
 */
async function check(gpu: Gpu, name: string, fn: Kernel, ref: Ref, cs: Case): Promise<void> {
  const { M, N, K } = cs;
  const seed = M * 7919 + N * 104729 + K;
  const a = randomF32(M * K, seed), b = randomF32(K * N, seed + 1);
  const bias = randomF32(N, seed + 2), c0 = randomF32(M * N, seed + 3);
  const A = gpu.upload("a", a), B = gpu.upload("b", b);
  const C = gpu.upload("c (M, N)", c0), BIAS = gpu.upload("bias (N)", bias);
  const d = fn(gpu, {
    a: A,
    b: B,
    c: C,
    M,
    N,
    K,
    bias: cs.bias ? BIAS : undefined,
    accumulate: cs.accumulate,
    variant: cs.variant,
  });
  gpu.run(name, [cs.split ? splitGrid(d) : d]);
  const want = ref(a, b, M, N, K, cs.bias ? bias : undefined);
  if (cs.accumulate) { for (let i = 0; i < want.length; i++) want[i] += c0[i]; }
  const label = `${name} ${JSON.stringify(cs)}`;
  assertClose(await gpu.readF32(C, M * N), want, { atol: 1e-4, rtol: 1e-4, label });
  for (const buf of [A, B, C, BIAS]) buf.destroy();
}

// Sizes: odd ones take the scalar-load pipelines, multiples of 4 the vec4 ones; several tiles
// along M and N; K up to 300.
const SHAPES: [number, number, number][] = [
  [33, 65, 130],
  [7, 1, 3],
  [1, 7, 33],
  [36, 260, 132],
  [20, 136, 300],
];

Deno.test("matmul references agree with each other under transposes", () => {
  // A hand-computed case: [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50], bias [1, -1].
  const a = [1, 2, 3, 4], b = [5, 6, 7, 8], bias = [1, -1];
  deepStrictEqual(Array.from(matmulNNRef(a, b, 2, 2, 2, bias)), [20, 21, 44, 49]);
  const M = 3, N = 5, K = 4;
  const x = randomF32(M * K, 1), w = randomF32(N * K, 2);
  const nt = matmulNTRef(x, w, M, N, K);
  assertClose(matmulNNRef(x, transpose(w, N, K), M, N, K), nt, { atol: 1e-12, label: "NN" });
  assertClose(matmulTNRef(transpose(x, M, K), transpose(w, N, K), M, N, K), nt, {
    atol: 1e-12,
    label: "TN",
  });
});

Deno.test("unrollLoops() expands marked loops, nested and with const bounds, and nothing else", () => {
  const code = "const R: u32 = 2u;\n" +
    "for (var i = 0u; i < R; i++) { /* unroll */ for (var j = 1u; j < 3u; j++) { /* unroll */ " +
    "x[i * 4u + j] = f(i); } }\nfor (var k = 0u; k < n; k++) { y[k] = 0.0; }";
  deepStrictEqual(
    unrollLoops(code),
    "const R: u32 = 2u;\n" +
      "{ { x[0u * 4u + 1u] = f(0u); } { x[0u * 4u + 2u] = f(0u); } } " +
      "{ { x[1u * 4u + 1u] = f(1u); } { x[1u * 4u + 2u] = f(1u); } }\n" +
      "for (var k = 0u; k < n; k++) { y[k] = 0.0; }",
  );
  throws(
    () => unrollLoops("for (var i = 0u; i < n; i++) { /* unroll */ f(i); }"),
    /unknown loop bound "n"/,
  );
});

for (const { name, fn, ref } of LAYOUTS) {
  gpuTest(`${name}() matches the reference on odd and aligned sizes`, async (gpu) => {
    for (const [M, N, K] of SHAPES) {
      await check(gpu, name, fn, ref, { M, N, K });
      await check(gpu, name, fn, ref, { M, N, K, bias: true, accumulate: true });
    }
    await check(gpu, name, fn, ref, { M: 36, N: 260, K: 132, bias: true });
    await check(gpu, name, fn, ref, { M: 9, N: 5, K: 17, accumulate: true });
  });

  gpuTest(`${name}() variants naive and workgroupTile match the reference`, async (gpu) => {
    for (const variant of ["naive", "workgroupTile"] as const) {
      for (const [M, N, K] of [[33, 65, 130], [70, 129, 20], [1, 1, 1]]) {
        await check(gpu, name, fn, ref, { M, N, K, variant, bias: true, accumulate: M === 1 });
      }
    }
  });

  gpuTest(`${name}() computes the linear tile id of a grid split over x and y`, async (gpu) => {
    for (const variant of ["naive", "workgroupTile", "registerTile"] as const) {
      await check(gpu, name, fn, ref, { M: 70, N: 300, K: 8, variant, split: true });
    }
    await check(gpu, name, fn, ref, { M: 33, N: 150, K: 7, split: true });
  });
}

gpuTest("matmulNT() splits more than 65535 workgroups over the grid", async (gpu) => {
  // 16-row tiles: 65537 of them, so the runtime splits the grid over x and y.
  const M = 16 * 65536 + 5, N = 3, K = 4;
  const a = randomF32(M * K, 7), b = randomF32(N * K, 8);
  const A = gpu.upload("a", a), B = gpu.upload("b", b), C = gpu.buffer("c", M * N * 4);
  // the register tile on any adapter (hardware adapters default to another tile)
  const d = matmulNT(gpu, { a: A, b: B, c: C, M, N, K, variant: "registerTile" });
  ok(d.workgroups[1] > 1, `grid ${d.workgroups} should be split`);
  gpu.run("matmulNT large M", [d]);
  assertClose(await gpu.readF32(C), matmulNTRef(a, b, M, N, K), { atol: 1e-5, label: "large M" });
  for (const buf of [A, B, C]) buf.destroy();
});

gpuTest("matmul kernels handle K = 0 (c = bias) and M = 0 (nothing)", async (gpu) => {
  const bias = gpu.upload("bias", new Float32Array([1, 2, 3]));
  const a = gpu.buffer("a", 4), b = gpu.buffer("b", 4);
  for (const { name, fn } of LAYOUTS) {
    const c = gpu.upload("c", new Float32Array([9, 9, 9, 9, 9, 9]));
    gpu.run(name, [fn(gpu, { a, b, c, M: 2, N: 3, K: 0, bias })]);
    deepStrictEqual(Array.from(await gpu.readF32(c)), [1, 2, 3, 1, 2, 3], name);
    const none = fn(gpu, { a, b, c, M: 0, N: 3, K: 5 });
    deepStrictEqual(none.workgroups[0], 0);
    gpu.run(name, [none]);
    deepStrictEqual(Array.from(await gpu.readF32(c)), [1, 2, 3, 1, 2, 3], `${name} M = 0`);
  }
});

gpuTest("gemvNT() matches the reference for small M, both variants", async (gpu) => {
  for (const variant of ["registerTile", "splitK"] as const) {
    for (const [M, N, K] of [[1, 65, 130], [1, 260, 132], [3, 33, 64], [16, 20, 36]]) {
      await check(gpu, "gemvNT", gemvNT, matmulNTRef, { M, N, K, variant });
      await check(gpu, "gemvNT", gemvNT, matmulNTRef, {
        M,
        N,
        K,
        variant,
        bias: true,
        accumulate: true,
      });
    }
    // More rows than one block: two blocks of 16, on a split grid.
    await check(gpu, "gemvNT", gemvNT, matmulNTRef, { M: 17, N: 9, K: 8, variant, split: true });
  }
});

// [N, K]: both multiples of 4 (the vec4 GEMV, R = M), N odd (register tiles with vec4 loads),
// K odd (scalar loads)
const GEMV_SHAPES: [number, number][] = [[36, 64], [33, 20], [10, 7]];

gpuTest("gemvNT() and linear() match the reference for every M from 2 to 15", async (gpu) => {
  const checks: Promise<void>[] = []; // readbacks in flight together
  for (let M = 2; M <= 15; M++) {
    for (const [N, K] of GEMV_SHAPES) {
      const flags = { bias: M % 2 === 0, accumulate: M % 3 === 0 };
      for (const variant of ["registerTile", "splitK"] as const) {
        checks.push(check(gpu, "gemvNT", gemvNT, matmulNTRef, { M, N, K, variant, ...flags }));
      }
      checks.push(check(gpu, "linear", linear, matmulNTRef, { M, N, K, ...flags }));
    }
  }
  await Promise.all(checks);
});

/**
 * Runs `fn` on the first M rows of `a (15, K)` with bias and accumulation into `c0`, returns c.
 */
async function rows(
  gpu: Gpu,
  fn: Kernel,
  host: { a: Float32Array<ArrayBuffer>; b: Float32Array<ArrayBuffer> },
  more: { bias: Float32Array<ArrayBuffer>; c0: Float32Array<ArrayBuffer> },
  M: number,
  N: number,
  K: number,
  variant?: GemmVariant | GemvVariant,
): Promise<Float32Array> {
  const a = gpu.upload("a (M, K)", host.a.slice(0, M * K)), b = gpu.upload("b (N, K)", host.b);
  const bias = gpu.upload("bias (N)", more.bias),
    c = gpu.upload("c (M, N)", more.c0.slice(0, M * N));
  gpu.run("rows", [fn(gpu, { a, b, c, M, N, K, bias, accumulate: true, variant })]);
  const out = await gpu.readF32(c);
  for (const buf of [a, b, bias, c]) buf.destroy();
  return out;
}

gpuTest(
  "gemvNT() registerTile gives each row the GEMM's bits whatever M is; linear() too on software",
  async (gpu) => {
    // Promised by kernels/matmul.ts: the GEMV's "registerTile" sums each output in the order of
    // the GEMM's "registerTile" (k in order, then bias, then c), so a row
    // gets the same bits at every M. On software adapters those are linear()'s and matmulNT()'s
    // defaults, so speculative verification (M = γ + 1) reproduces decode steps (M = 1). On
    // hardware they are the split-K GEMV and the workgroup-tile GEMM, whose sums run in other
    // orders: no bits are promised there (the reference test above covers them).
    for (const [N, K] of GEMV_SHAPES) {
      const MAX = 15;
      const seed = 31 * N + K;
      const host = { a: randomF32(MAX * K, seed), b: randomF32(N * K, seed + 1) };
      const more = { bias: randomF32(N, seed + 2), c0: randomF32(MAX * N, seed + 3) };
      const gemm = await rows(gpu, matmulNT, host, more, MAX, N, K, "registerTile"); // (MAX, N)
      const want = matmulNTRef(host.a, host.b, MAX, N, K, more.bias).map((v, i) => v + more.c0[i]);
      assertClose(gemm, want, { atol: 1e-4, rtol: 1e-4, label: `GEMM N=${N} K=${K}` });
      const gemv = await Promise.all(
        Array.from(
          { length: MAX },
          (_, i) => rows(gpu, gemvNT, host, more, i + 1, N, K, "registerTile"),
        ),
      );
      const lin = await Promise.all(
        Array.from({ length: MAX }, (_, i) => rows(gpu, linear, host, more, i + 1, N, K)),
      );
      for (let M = 1; M <= MAX; M++) {
        const label = `N=${N} K=${K} M=${M}`;
        deepStrictEqual(gemv[M - 1], gemm.slice(0, M * N), `gemvNT registerTile ${label}`);
        if (gpu.isSoftware) deepStrictEqual(lin[M - 1], gemm.slice(0, M * N), `linear ${label}`);
      }
    }
  },
);

gpuTest("linear() picks the GEMV for small M and the GEMM otherwise", async (gpu) => {
  const [a, b, c] = ["a", "b", "c"].map((name) => gpu.buffer(name, 64 * 64 * 4));
  const args = { a, b, c, N: 64, K: 32 };
  for (const M of [1, 5, 16]) {
    ok(linear(gpu, { ...args, M }).pipeline === gemvNT(gpu, { ...args, M }).pipeline, `M=${M}`);
  }
  // M = 40: the tiled GEMM, or the GEMV where linear() serves that many rows with it
  const p40 = linear(gpu, { ...args, M: 40 }).pipeline;
  ok(
    p40 === matmulNT(gpu, { ...args, M: 40 }).pipeline ||
      p40 === gemvNT(gpu, { ...args, M: 40 }).pipeline,
  );
  ok(linear(gpu, { ...args, M: 5 }).pipeline !== matmulNT(gpu, { ...args, M: 5 }).pipeline);
  for (const [M, N, K] of [[1, 130, 64], [5, 33, 7], [40, 72, 64]]) {
    await check(gpu, "linear", linear, matmulNTRef, { M, N, K, bias: true });
  }
});

gpuTest("matmul kernels reject bad sizes and unknown variants", (gpu) => {
  const x = gpu.buffer("x", 4);
  const args = { a: x, b: x, c: x, M: 1, N: 1, K: 1 };
  throws(() => matmulNT(gpu, { ...args, M: -1 }), /M = -1/);
  throws(() => matmulNN(gpu, { ...args, K: 1.5 }), /K = 1.5/);
  throws(() => matmulTN(gpu, { ...args, N: 2 ** 31 }), /N = 2147483648/);
  throws(() => matmulNT(gpu, { ...args, variant: "splitK" }), /unknown variant splitK/);
  throws(() => gemvNT(gpu, { ...args, variant: "naive" }), /unknown variant naive/);
});
