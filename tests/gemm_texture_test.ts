import { deepStrictEqual, throws } from "node:assert/strict";
import type { Gpu } from "../kernels/gpu.ts";
import {
  matmulNTTexture,
  texturedGemm,
  type TexturedLayout,
  textureFromBuffer,
} from "../kernels/gemm_texture.ts";
import { matmulNN, matmulNT, matmulTN } from "../kernels/matmul.ts";
import { assertClose, gpuTest, randomF32 } from "./helpers.ts";
import { matmulNNRef, matmulNTRef, matmulTNRef } from "./reference/matmul.ts";

/** An rgba32float texture `(rows, K/4 texels)` holding `data (rows, K)`, via writeTexture. */
function texture(
  gpu: Gpu,
  label: string,
  data: Float32Array<ArrayBuffer>,
  rows: number,
  K: number,
) {
  const t = gpu.device.createTexture({
    label,
    size: [K / 4, rows],
    format: "rgba32float",
    usage: 0x04 | 0x02, // TEXTURE_BINDING | COPY_DST
  });
  gpu.device.queue.writeTexture({ texture: t }, data, { bytesPerRow: K * 4, rowsPerImage: rows }, [
    K / 4,
    rows,
  ]);
  return t;
}

interface Case {
  M: number;
  N: number;
  K: number;
  bias?: boolean;
  accumulate?: boolean;
}

/**
 * Runs the texture GEMM on seeded inputs against the float64 reference (c pre-filled, so a
 * skipped write or an ignored accumulate shows) and, bit for bit, against the storage
 * `matmulNT` register tile on the same inputs. K % 64 == 0 fills the textures with
 * textureFromBuffer (copyBufferToTexture), other K with writeTexture.
 */
async function check(gpu: Gpu, cs: Case): Promise<void> {
  const { M, N, K } = cs;
  const seed = M * 7919 + N * 104729 + K;
  const a = randomF32(M * K, seed), b = randomF32(N * K, seed + 1);
  const bias = randomF32(N, seed + 2), c0 = randomF32(M * N, seed + 3);
  const A = gpu.upload("a (M, K)", a), B = gpu.upload("b (N, K)", b);
  const BIAS = gpu.upload("bias (N)", bias);
  let aT: GPUTexture, bT: GPUTexture;
  if (K % 64 === 0) {
    const enc = gpu.device.createCommandEncoder();
    aT = textureFromBuffer(gpu, enc, A, M, K);
    bT = textureFromBuffer(gpu, enc, B, N, K);
    gpu.device.queue.submit([enc.finish()]);
  } else {
    aT = texture(gpu, "aT", a, M, K);
    bT = texture(gpu, "bT", b, N, K);
  }
  const C = gpu.upload("c (M, N)", c0), C2 = gpu.upload("c storage (M, N)", c0);
  const C3 = gpu.upload("c mixed (M, N)", c0);
  const flags = { bias: cs.bias ? BIAS : undefined, accumulate: cs.accumulate };
  gpu.run("texture gemm", [matmulNTTexture(gpu, { a: aT, b: bT, c: C, M, N, K, ...flags })]);
  // a from storage, b from its texture (activations and a weight texture)
  gpu.run("mixed gemm", [matmulNTTexture(gpu, { a: A, b: bT, c: C3, M, N, K, ...flags })]);
  gpu.run("storage gemm", [
    matmulNT(gpu, { a: A, b: B, c: C2, M, N, K, variant: "registerTile", ...flags }),
  ]);
  const got = await gpu.readF32(C, M * N), storage = await gpu.readF32(C2, M * N);
  const mixed = await gpu.readF32(C3, M * N);
  const want = matmulNTRef(a, b, M, N, K, cs.bias ? bias : undefined);
  if (cs.accumulate) { for (let i = 0; i < want.length; i++) want[i] += c0[i]; }
  const label = `matmulNTTexture ${JSON.stringify(cs)}`;
  assertClose(got, want, { atol: 1e-4, rtol: 1e-4, label });
  // same tile, same k order: the same bits as the storage register tile
  const differ = got.findIndex((v, i) => !Object.is(v, storage[i]));
  deepStrictEqual(differ, -1, `${label}: differs from matmulNT registerTile at [${differ}]`);
  const differMixed = mixed.findIndex((v, i) => !Object.is(v, storage[i]));
  deepStrictEqual(differMixed, -1, `${label}, a in storage: differs at [${differMixed}]`);
  for (const buf of [A, B, C, C2, C3, BIAS]) buf.destroy();
  aT.destroy();
  bT.destroy();
}

gpuTest(
  "matmulNTTexture() (a texture or storage) matches the float64 reference and matmulNT's bits",
  async (gpu) => {
    for (const [M, N] of [[5, 7], [33, 20]]) {
      for (const K of [12, 64]) await check(gpu, { M, N, K });
    }
    await check(gpu, { M: 33, N: 20, K: 64, bias: true, accumulate: true });
    // several tiles along N (128 columns per workgroup) and M (16 rows), narrowed tile at N = 20
    await check(gpu, { M: 37, N: 300, K: 128, bias: true });
    await check(gpu, { M: 1, N: 1, K: 4, accumulate: true });
  },
);

gpuTest("matmulNTTexture() and textureFromBuffer() reject bad sizes by name", (gpu) => {
  const tex = (w: number, h: number, format: GPUTextureFormat = "rgba32float") =>
    gpu.device.createTexture({ size: [w, h], format, usage: 0x04 | 0x02 });
  const a = tex(3, 5), b = tex(3, 7);
  const c = gpu.buffer("c (5, 7)", 5 * 7 * 4);
  throws(
    () => matmulNTTexture(gpu, { a, b, c, M: 5, N: 7, K: 10 }),
    /K 10 must be a positive multiple of 4/,
  );
  throws(() => matmulNTTexture(gpu, { a, b, c, M: 5, N: 8, K: 12 }), /"b" is 3 × 7 texels/);
  throws(() => matmulNTTexture(gpu, { a, b, c, M: 5, N: 7, K: 16 }), /"a" is 3 × 5 texels/);
  const r = tex(3, 5, "r32float");
  throws(() => matmulNTTexture(gpu, { a: r, b, c, M: 5, N: 7, K: 12 }), /"a" is a 2d r32float/);
  const lim = gpu.device.limits.maxTextureDimension2D;
  throws(
    () => matmulNTTexture(gpu, { a, b, c, M: lim + 1, N: 7, K: 12 }),
    /"a" would be 3 × \d+ texels, over the device's maxTextureDimension2D/,
  );
  throws(
    () => matmulNTTexture(gpu, { a, b, c: gpu.buffer("small c", 16), M: 5, N: 7, K: 12 }),
    /"c" has 16 bytes/,
  );
  throws(
    () => matmulNTTexture(gpu, { a: gpu.buffer("small a", 16), b, c, M: 5, N: 7, K: 12 }),
    /"a" has 16 bytes, \(M 5, K 12\) needs 240/,
  );
  const enc = gpu.device.createCommandEncoder();
  throws(() => textureFromBuffer(gpu, enc, c, 5, 12), /K 12 must be a positive multiple of 64/);
  throws(() => textureFromBuffer(gpu, enc, c, 5, 64), /has 140 bytes, \(5, 64\) needs 1280/);
  for (const t of [a, b, r]) t.destroy();
});

/**
 * texturedGemm on seeded inputs against the float64 reference for its layout (c pre-filled), and
 * NT against matmulNT's bits. Returns the result so callers can compare runs.
 */
async function checkTextured(
  gpu: Gpu,
  layout: TexturedLayout,
  cs: Case,
): Promise<Float32Array> {
  const { M, N, K } = cs;
  const seed = M * 31 + N * 37 + K * 41 + layout.charCodeAt(1);
  const a = randomF32(M * K, seed), b = randomF32(N * K, seed + 1);
  const bias = randomF32(N, seed + 2), c0 = randomF32(M * N, seed + 3);
  const A = gpu.upload("a", a), B = gpu.upload("b", b), BIAS = gpu.upload("bias (N)", bias);
  const C = gpu.upload("c (M, N)", c0), C2 = gpu.upload("c storage (M, N)", c0);
  const flags = { bias: cs.bias ? BIAS : undefined, accumulate: cs.accumulate };
  gpu.run("textured", texturedGemm(gpu, layout, { a: A, b: B, c: C, M, N, K, ...flags }));
  const storageKernel = { NT: matmulNT, NN: matmulNN, TN: matmulTN }[layout];
  // matmulNT's register tile, whose bits the textured NT reproduces (the default elsewhere
  // than on software adapters is another tile)
  const variant = layout === "NT" ? { variant: "registerTile" as const } : {};
  gpu.run("storage", [storageKernel(gpu, { a: A, b: B, c: C2, M, N, K, ...flags, ...variant })]);
  const got = await gpu.readF32(C, M * N), storage = await gpu.readF32(C2, M * N);
  const ref = { NT: matmulNTRef, NN: matmulNNRef, TN: matmulTNRef }[layout];
  const want = ref(a, b, M, N, K, cs.bias ? bias : undefined);
  if (cs.accumulate) { for (let i = 0; i < want.length; i++) want[i] += c0[i]; }
  const label = `texturedGemm ${layout} ${JSON.stringify(cs)}`;
  assertClose(got, want, { atol: 1e-4, rtol: 1e-4, label });
  if (layout === "NT" && K % 4 === 0) {
    const differ = got.findIndex((v, i) => !Object.is(v, storage[i]));
    deepStrictEqual(differ, -1, `${label}: differs from matmulNT at [${differ}]`);
  }
  for (const buf of [A, B, C, C2, BIAS]) buf.destroy();
  return got;
}

gpuTest(
  "texturedGemm() NT/NN/TN match the float64 references at odd sizes (K padded), NT matmulNT's bits",
  async (gpu) => {
    for (const layout of ["NT", "NN", "TN"] as const) {
      await checkTextured(gpu, layout, { M: 5, N: 7, K: 13 });
      await checkTextured(gpu, layout, { M: 37, N: 300, K: 130, bias: true });
      await checkTextured(gpu, layout, { M: 19, N: 64, K: 517, bias: true, accumulate: true });
      await checkTextured(gpu, layout, { M: 1, N: 1, K: 1, accumulate: true });
    }
    await checkTextured(gpu, "NT", { M: 33, N: 20, K: 64, accumulate: true });
  },
);

gpuTest(
  "texturedGemm(): scratch textures grown by a bigger GEMM keep earlier dispatches and results",
  async (gpu) => {
    // the first GEMM's dispatches are built on small scratch textures, the second grows them;
    // running the first again must give the same result (its textures were not replaced under it)
    const M = 9, N = 11, K = 10;
    const a = randomF32(M * K, 5), b = randomF32(K * N, 6);
    const A = gpu.upload("a (M, K)", a), B = gpu.upload("b (K, N)", b);
    const C = gpu.buffer("c (M, N)", M * N * 4);
    const small = texturedGemm(gpu, "NN", { a: A, b: B, c: C, M, N, K });
    await checkTextured(gpu, "NN", { M: 70, N: 90, K: 700 });
    gpu.run("small again", small);
    assertClose(await gpu.readF32(C, M * N), matmulNNRef(a, b, M, N, K), {
      atol: 1e-4,
      rtol: 1e-4,
      label: "small NN after the scratch grew",
    });
    throws(
      () => texturedGemm(gpu, "NT", { a: A, b: B, c: C, M: 0, N, K }),
      /M 0, N 11, K 10 must be positive/,
    );
    throws(
      () => texturedGemm(gpu, "TN", { a: A, b: B, c: C, M: 20, N, K }),
      /"a" \("a \(M, K\)"\) has 360 bytes, \(10, 20\) needs 800/,
    );
    for (const buf of [A, B, C]) buf.destroy();
  },
);
