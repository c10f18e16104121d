/**
 * The decode attention over the KV texture (kernels/attention_decode.ts): the float64 reference
 * with per-row starts and a cache, the split kernel's bits (positions past the cache included),
 * and kvTextureWrite against kvWrite.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { attention, kvWrite } from "../kernels/attention.ts";
import {
  attentionDecode,
  kvTexture,
  kvTextureSupported,
  kvTextureWrite,
} from "../kernels/attention_decode.ts";
import { assertClose, gpuTest, randomNormal } from "./helpers.ts";
import { attentionRef, splitQkv } from "./reference/attention.ts";
import { readKvTexture, writeKvTexture } from "./reference/texture.ts";

/** Same bits: reports the first differing index. */
function assertBits(a: Float32Array, b: Float32Array, label: string): void {
  assertEquals(a.length, b.length, label);
  const i = a.findIndex((v, j) => !Object.is(v, b[j]));
  assert(i < 0, `${label}: differs at [${i}]: ${a[i]} vs ${b[i]}`);
}

gpuTest(
  "attentionDecode: float64 reference, the split kernel's bits, rows past the cache",
  async (gpu) => {
    const cases = [
      { B: 3, n: 5, H: 3, D: 8, maxLen: 40, start: [0, 17, 34], ref: true },
      { B: 1, n: 10, H: 1, D: 32, maxLen: 50, start: [7], ref: true }, // 2 chunks of ≤ 8 queries
      { B: 2, n: 3, H: 2, D: 16, maxLen: 13, start: [0, 11], ref: false }, // position 13: none
    ];
    for (const { B, n, H, D, maxLen, start, ref } of cases) {
      const T = B * n, sizes = { B, n, H, D, maxLen };
      const qkvHost = randomNormal(T * 3 * H * D, 10 * D + n);
      const cacheHost = randomNormal(2 * B * H * maxLen * D, 10 * D + n + 1);
      const qkv = gpu.upload("qkv", qkvHost), kv = gpu.upload("kv", cacheHost);
      const kvTex = kvTexture(gpu, "kv texture", B, H, D, maxLen);
      writeKvTexture(gpu, kvTex, cacheHost);
      const startBuf = gpu.upload("start", new Uint32Array(start));
      const out = gpu.buffer("out", T * H * D * 4), lse = gpu.buffer("lse", B * H * n * 4);
      const outS = gpu.buffer("out split", T * H * D * 4);
      const lseS = gpu.buffer("lse split", B * H * n * 4);
      gpu.run("decode", [
        kvWrite(gpu, { qkv, kv, start: startBuf, ...sizes }),
        kvTextureWrite(gpu, { qkv, kvTex, start: startBuf, ...sizes }),
        attentionDecode(gpu, { qkv, kvTex, start: startBuf, out, lse, ...sizes }),
        attention(gpu, {
          qkv,
          kv,
          start: startBuf,
          out: outS,
          lse: lseS,
          variant: "split",
          ...sizes,
        }),
      ]);
      const label = `B=${B} n=${n} H=${H} D=${D} maxLen=${maxLen}`;
      const got = await gpu.readF32(out), gotLse = await gpu.readF32(lse);
      assertBits(got, await gpu.readF32(outS), `${label}: out vs split`);
      assertBits(gotLse, await gpu.readF32(lseS), `${label}: lse vs split`);
      if (ref) {
        const { q, k, v } = splitQkv(qkvHost, { T, H, D });
        const half = B * H * maxLen * D;
        const want = attentionRef({
          q,
          k,
          v,
          ...sizes,
          start,
          cacheK: cacheHost.subarray(0, half),
          cacheV: cacheHost.subarray(half),
        });
        assertClose(got, want.out, { atol: 2e-6, rtol: 1e-5, label });
        assertClose(gotLse, want.lse, { atol: 2e-6, rtol: 1e-6, label: `${label} lse` });
      }
      kvTex.destroy();
    }
  },
);

gpuTest("kvTextureWrite: the texture holds what kvWrite puts in the cache", async (gpu) => {
  const [B, n, H, D, maxLen] = [3, 4, 3, 24, 9];
  const start = [0, 3, 7]; // row 2 writes positions 7, 8 and skips 9, 10
  const qkvHost = randomNormal(B * n * 3 * H * D, 5);
  const preset = new Float32Array(2 * B * H * maxLen * D).fill(-7);
  const kv = gpu.upload("kv", preset), qkv = gpu.upload("qkv", qkvHost);
  const kvTex = kvTexture(gpu, "kv texture", B, H, D, maxLen);
  writeKvTexture(gpu, kvTex, preset);
  const startBuf = gpu.upload("start", new Uint32Array(start));
  const sizes = { B, n, H, D, maxLen };
  gpu.run("write", [
    kvWrite(gpu, { qkv, kv, start: startBuf, ...sizes }),
    kvTextureWrite(gpu, { qkv, kvTex, start: startBuf, ...sizes }),
  ]);
  const cache = await gpu.readF32(kv);
  assert(cache.some((v) => v !== -7) && cache.some((v) => v === -7));
  assertEquals(await readKvTexture(gpu, kvTex), cache);
  kvTex.destroy();
});

gpuTest("KV textures: software adapters only, D a multiple of 8, within limits", (gpu) => {
  assertEquals(kvTextureSupported(gpu, 1, 4, 32, 512), gpu.isSoftware);
  assert(!kvTextureSupported(gpu, 1, 4, 12, 512) && !kvTextureSupported(gpu, 1, 4, 32, 1e6));
  const b = gpu.buffer("b", 64);
  throws(
    () =>
      kvTextureWrite(gpu, {
        qkv: b,
        kvTex: undefined!,
        start: b,
        B: 1,
        n: 1,
        H: 1,
        D: 6,
        maxLen: 4,
      }),
    /dimHead % 8 = 0, got 6/,
  );
});
