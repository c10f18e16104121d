/**
 * The training attention kernels' texture variants (software adapters read their inner loops'
 * operands from rgba32float textures): the same bits as the storage kernels, and the float64
 * reference, at odd sizes.
 */
import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { attentionBackward, kvWrite, trainingAttention } from "../kernels/attention.ts";
import type { Gpu } from "../kernels/gpu.ts";
import { assertClose, gpuTest, randomNormal } from "./helpers.ts";
import { attentionBackwardRef, attentionRef, splitQkv } from "./reference/attention.ts";

interface Case {
  B: number;
  n: number;
  H: number;
  D: number;
  /** Queries (keys) per invocation; default: the adapter's. */
  per?: number;
}

/**
 * A training forward (start 0) then the backward, with every kernel on textures or on storage;
 * returns out, lse and dqkv, and the dispatch labels (to check which path ran).
 */
async function trainingPass(
  gpu: Gpu,
  c: Case,
  qkvHost: Float32Array<ArrayBuffer>,
  dOutHost: Float32Array<ArrayBuffer>,
  texture: boolean,
) {
  const { B, n, H, D } = c;
  // the texture variants need per > 1: the software default, given here on other adapters
  const per = c.per ?? (gpu.isSoftware ? undefined : 2);
  const T = B * n;
  const s = { B, n, H, D, maxLen: n, per };
  const qkv = gpu.upload("qkv (T, 3, H, D)", qkvHost);
  const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * n * D * 4);
  const start = gpu.upload("start (B)", new Uint32Array(B));
  const out = gpu.buffer("out (T, H, D)", T * H * D * 4);
  const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
  const dOut = gpu.upload("dOut (T, H, D)", dOutHost);
  // garbage first: the backward must overwrite every element
  const dqkv = gpu.upload("dqkv (T, 3, H, D)", new Float32Array(T * 3 * H * D).fill(1e30));
  const fwd = trainingAttention(gpu, { qkv, kv, start, out, lse, ...s, texture });
  const bwd = attentionBackward(gpu, { qkv, out, dOut, lse, dqkv, ...s, texture });
  gpu.run("train attention", [kvWrite(gpu, { qkv, kv, start, ...s }), ...fwd, ...bwd]);
  const got = {
    out: await gpu.readF32(out),
    lse: await gpu.readF32(lse),
    dqkv: await gpu.readF32(dqkv),
    labels: [...fwd, ...bwd].map((d) => d.label),
  };
  for (const b of [qkv, kv, start, out, lse, dOut, dqkv]) b.destroy();
  return got;
}

gpuTest(
  "training attention: the texture variants give the storage kernels' bits and match the reference",
  async (gpu) => {
    // n ≥ 64 (the tiled forward) and not a multiple of 8 or 64: partial groups and workgroups
    const cases: Case[] = [
      { B: 1, n: 67, H: 3, D: 32 },
      { B: 3, n: 65, H: 1, D: 8 },
      { B: 2, n: 131, H: 2, D: 8 },
      { B: 2, n: 73, H: 2, D: 32 },
      { B: 3, n: 97, H: 2, D: 8, per: 2 }, // other queries (keys) per invocation
      { B: 1, n: 70, H: 3, D: 32, per: 4 },
    ];
    for (const c of cases) {
      const { B, n, H, D, per } = c;
      const T = B * n;
      const qkvHost = randomNormal(T * 3 * H * D, 500 + n + D);
      const dOutHost = randomNormal(T * H * D, 600 + n + D);
      const tex = await trainingPass(gpu, c, qkvHost, dOutHost, true);
      const sto = await trainingPass(gpu, c, qkvHost, dOutHost, false);
      const label = `B=${B} n=${n} H=${H} D=${D} per=${per}`;
      // the texture path really ran, and the storage one did not
      assertEquals(tex.labels.filter((l) => l.includes("(texture)")).length, 4, label);
      assertEquals(sto.labels.filter((l) => l.includes("(texture)")).length, 0, label);
      assertEquals(tex.out, sto.out, `out ${label}`);
      assertEquals(tex.lse, sto.lse, `lse ${label}`);
      assertEquals(tex.dqkv, sto.dqkv, `dqkv ${label}`);
      const { q, k, v } = splitQkv(qkvHost, { T, H, D });
      const ref = attentionRef({ q, k, v, B, n, H, D });
      assertClose(tex.out, ref.out, { atol: 2e-6, rtol: 1e-5, label: `out ${label}` });
      assertClose(tex.lse, ref.lse, { atol: 2e-6, rtol: 1e-6, label: `lse ${label}` });
      const g = attentionBackwardRef({ q, k, v, dOut: dOutHost, B, n, H, D });
      const d = splitQkv(tex.dqkv, { T, H, D });
      assertClose(d.q, g.dq, { atol: 4e-6, rtol: 1e-5, label: `dq ${label}` });
      assertClose(d.k, g.dk, { atol: 4e-6, rtol: 1e-5, label: `dk ${label}` });
      assertClose(d.v, g.dv, { atol: 4e-6, rtol: 1e-5, label: `dv ${label}` });
    }
  },
);

gpuTest(
  "training attention: sizes without a texture path take the storage kernels",
  (gpu) => {
    const b = gpu.buffer("any (4)", 16);
    const bufs = { qkv: b, kv: b, start: b, out: b, lse: b };
    const textured = (labels: string[]) => labels.some((l) => l.includes("(texture)"));
    // D % 4 ≠ 0 (no whole texels per head vector): storage by default, an error when forced
    const odd = { B: 1, n: 70, H: 2, D: 10, maxLen: 70 };
    assertEquals(textured(trainingAttention(gpu, { ...bufs, ...odd }).map((d) => d.label)), false);
    assertThrows(
      () => trainingAttention(gpu, { ...bufs, ...odd, texture: true }),
      /no texture path for B 1, n 70, H 2, D 10/,
    );
    const bwd = { qkv: b, out: b, dOut: b, lse: b, dqkv: b, ...odd };
    assertEquals(textured(attentionBackward(gpu, bwd).map((d) => d.label)), false);
    assertThrows(
      () => attentionBackward(gpu, { ...bwd, texture: true }),
      /no texture variant for B 1, n 70, H 2, D 10/,
    );
    // fewer than 64 queries a row: the split forward, on storage
    const short = { B: 2, n: 9, H: 1, D: 8, maxLen: 9 };
    assertEquals(trainingAttention(gpu, { ...bufs, ...short }).map((d) => d.label), [
      "attention split",
    ]);
    // qkv taller than the device's 2-D texture limit: storage, or an error when forced
    const lim = gpu.device.limits.maxTextureDimension2D;
    const tall = { B: 1, n: lim + 1, H: 1, D: 8, maxLen: lim + 1 };
    assertEquals(textured(trainingAttention(gpu, { ...bufs, ...tall }).map((d) => d.label)), false);
    assertEquals(
      textured(attentionBackward(gpu, { ...bwd, ...tall }).map((d) => d.label)),
      false,
    );
    assertThrows(() => trainingAttention(gpu, { ...bufs, ...tall, texture: true }), /texture/);
    // on a software adapter the texture path is the default where it applies
    const fits = { B: 1, n: 70, H: 2, D: 8, maxLen: 70 };
    assertEquals(
      textured(trainingAttention(gpu, { ...bufs, ...fits }).map((d) => d.label)),
      gpu.isSoftware,
    );
    assertEquals(
      textured(attentionBackward(gpu, { ...bwd, ...fits }).map((d) => d.label)),
      gpu.isSoftware,
    );
  },
);
