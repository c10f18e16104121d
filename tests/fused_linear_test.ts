/**
 * The fused small-M GEMVs (kernels/fused_linear.ts) against float64 references, against the
 * unfused kernels bit for bit, and row by row whatever M; with storage and with uniform
 * bindings (W in one or several 64 KiB chunks).
 */
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { assertClose, gpuTest, randomF32 } from "./helpers.ts";
import { fusedLinear, fusedLinearSupported, STORAGE_UNIFORM } from "../kernels/fused_linear.ts";
import { linear } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { gelu } from "../kernels/activation.ts";
import { rotary, rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { kvWrite } from "../kernels/attention.ts";
import { embedding } from "../kernels/embedding.ts";
import { kvTexture } from "../kernels/attention_decode.ts";
import { readKvTexture, writeKvTexture } from "./reference/texture.ts";
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { matmulNTRef } from "./reference/matmul.ts";
import { normLinearGeluRef, normLinearRef, normQkvKvRef } from "./reference/fused.ts";

const TOL = { atol: 2e-5, rtol: 2e-4 };

/**
 * Same bits as the unfused kernels (NaN-free data), reporting the first differing index: on
 * software adapters, whose unfused GEMV and norm the fused kernels reproduce. Elsewhere (and
 * under SPECDEC_AS_HARDWARE=1) the unfused kernels sum in another order: within TOL.
 */
function assertBits(gpu: Gpu, a: Float32Array, b: Float32Array, label: string): void {
  if (!gpu.isSoftware) return assertClose(a, b, { ...TOL, label });
  assertSameBits(a, b, label);
}

/** Same bits, on any adapter (NaN-free data): reports the first differing index. */
function assertSameBits(a: Float32Array, b: Float32Array, label: string): void {
  assertEquals(a.length, b.length, label);
  const i = a.findIndex((v, j) => !Object.is(v, b[j]));
  assert(i < 0, `${label}: differs at [${i}]: ${a[i]} vs ${b[i]}`);
}

/** A buffer the fused kernels may bind as a uniform. */
const up = (gpu: Gpu, label: string, data: Float32Array<ArrayBuffer>) =>
  gpu.upload(label, data, STORAGE_UNIFORM);

/** The dispatch, checking it took the bindings asked for. */
function checked(d: Dispatch, uniform: boolean): Dispatch {
  assertEquals(d.label.endsWith(" uniform"), uniform, d.label);
  return d;
}

/** The unfused norm (narrow, as software adapters run it) feeding a register-tile GEMV. */
function unfusedNormLinear(
  gpu: Gpu,
  x: GPUBuffer,
  norm: GPUBuffer,
  w: GPUBuffer,
  M: number,
  N: number,
  K: number,
  out: GPUBuffer,
  bias?: GPUBuffer,
) {
  const xn = gpu.buffer("xn", M * K * 4), rstd = gpu.buffer("rstd", M * 4);
  return [
    rmsNorm(gpu, { x, weight: norm, y: xn, rstd, T: M, C: K, narrow: true }),
    linear(gpu, { a: xn, b: w, bias, c: out, M, N, K, variant: "registerTile" }),
  ];
}

gpuTest("fusedLinear norm none / biasGelu: float64 reference, unfused bits, any M", async (gpu) => {
  const K = 20, N = 12; // K not a multiple of 8, N not a multiple of a lane's 8 columns
  const norm = randomF32(K, 3, 0.5, 1.5), w = randomF32(N * K, 4, -0.5, 0.5);
  const bias = randomF32(N, 5);
  const nb = up(gpu, "norm", norm), wb = up(gpu, "w", w), bb = up(gpu, "bias", bias);
  for (const uniform of [false, true]) {
    for (const M of [1, 5, 19]) { // 19: two blocks of 10 rows
      const x = randomF32(M * K, 10 + M, -2, 2);
      const xb = up(gpu, "x", x);
      const out = gpu.buffer("out", M * N * 4), ref = gpu.buffer("ref", M * N * 4);
      const outG = gpu.buffer("outG", M * N * 4), h = gpu.buffer("h", M * N * 4);
      const refG = gpu.buffer("refG", M * N * 4);
      const args = { x: xb, norm: nb, w: wb, M, N, K, uniform };
      gpu.run("fused", [
        // uniform bindings serve up to 16 rows (M = 19: storage)
        checked(fusedLinear(gpu, { ...args, epilogue: { kind: "none", out } }), uniform && M <= 16),
        checked(
          fusedLinear(gpu, { ...args, epilogue: { kind: "biasGelu", bias: bb, out: outG } }),
          uniform && M <= 16,
        ),
        ...unfusedNormLinear(gpu, xb, nb, wb, M, N, K, ref),
        ...unfusedNormLinear(gpu, xb, nb, wb, M, N, K, h, bb),
        gelu(gpu, { x: h, y: refG, n: M * N }),
      ]);
      const got = await gpu.readF32(out), gotG = await gpu.readF32(outG);
      const what = `M=${M}${uniform ? " uniform" : ""}`;
      assertClose(got, normLinearRef(x, norm, w, M, N, K), { ...TOL, label: `none ${what}` });
      assertClose(gotG, normLinearGeluRef(x, norm, w, bias, M, N, K), {
        ...TOL,
        label: `biasGelu ${what}`,
      });
      assertBits(gpu, got, await gpu.readF32(ref), `none ${what} vs unfused`);
      assertBits(gpu, gotG, await gpu.readF32(refG), `biasGelu ${what} vs unfused`);
      // row by row: a one-row dispatch gives the bits of the M-row one
      const last = M - 1, one = gpu.buffer("one", N * 4);
      const xRow = up(gpu, "x row", x.slice(last * K, (last + 1) * K));
      gpu.run("one row", [
        fusedLinear(gpu, { ...args, x: xRow, M: 1, epilogue: { kind: "none", out: one } }),
      ]);
      assertSameBits(await gpu.readF32(one), got.slice(last * N), `row ${last} of ${what} alone`);
    }
  }
});

gpuTest("fusedLinear accumulate: x += a·Wᵀ (+ bias), W in 3 uniform chunks", async (gpu) => {
  // K = 400: 40 rows of W per 64 KiB, so 4 columns per lane and chunks of 32 rows: 72 = 32+32+8
  const M = 3, N = 72, K = 400;
  const a = randomF32(M * K, 50), w = randomF32(N * K, 51, -0.1, 0.1), bias = randomF32(N, 52);
  const x0 = randomF32(M * N, 53);
  const ab = up(gpu, "a", a), wb = up(gpu, "w", w), bb = up(gpu, "bias", bias);
  for (const uniform of [false, true]) {
    for (const withBias of [false, true]) {
      const x = up(gpu, "x", x0), ref = up(gpu, "ref", x0);
      const b = withBias ? bb : undefined;
      gpu.run("accumulate", [
        checked(
          fusedLinear(gpu, {
            x: ab,
            w: wb,
            M,
            N,
            K,
            uniform,
            epilogue: { kind: "accumulate", bias: b, out: x },
          }),
          uniform,
        ),
        linear(gpu, {
          a: ab,
          b: wb,
          bias: b,
          c: ref,
          M,
          N,
          K,
          accumulate: true,
          variant: "registerTile",
        }),
      ]);
      const got = await gpu.readF32(x);
      const prod = matmulNTRef(a, w, M, N, K, withBias ? bias : undefined);
      const label = `bias ${withBias}${uniform ? " uniform" : ""}`;
      assertClose(got, prod.map((v, i) => v + x0[i]), { ...TOL, label });
      assertBits(gpu, got, await gpu.readF32(ref), `${label} vs unfused`);
    }
  }
});

gpuTest(
  "fusedLinear norm rotaryKv: float64 reference, unfused bits, rows past the cache",
  async (gpu) => {
    // N = 3·4·16 = 192 rows of W (K = 128): two uniform chunks of 128 rows
    const H = 4, D = 16, K = 128, N = 3 * H * D, maxLen = 8;
    const invFreq = rotaryInvFreq(D), tables = rotaryTable(maxLen, invFreq);
    const cos = gpu.upload("cos", tables.cos), sin = gpu.upload("sin", tables.sin);
    const norm = randomF32(K, 21, 0.5, 1.5), w = randomF32(N * K, 22, -0.2, 0.2);
    const nb = up(gpu, "norm", norm), wb = up(gpu, "w", w);
    for (const uniform of [false, true]) {
      // row 1's third token sits at position 8 = maxLen: q unrotated, k and v not written
      for (const [B, n, starts] of [[2, 3, [2, 6]], [2, 1, [0, 7]], [1, 6, [1]]] as const) {
        const M = B * n;
        const x = randomF32(M * K, 30 + M, -2, 2);
        const kv0 = randomF32(2 * B * H * maxLen * D, 40 + M);
        const xb = up(gpu, "x", x), start = gpu.upload("start", new Uint32Array(starts));
        const qkv = gpu.buffer("qkv", M * N * 4), kv = gpu.upload("kv", kv0);
        const qkvU = gpu.buffer("qkv unfused", M * N * 4), kvU = gpu.upload("kv unfused", kv0);
        const sizes = { B, n, H, D, maxLen };
        gpu.run("qkv", [
          checked(
            fusedLinear(gpu, {
              x: xb,
              norm: nb,
              w: wb,
              M,
              N,
              K,
              uniform,
              epilogue: { kind: "rotaryKv", qkv, kv, start, cos, sin, ...sizes },
            }),
            uniform,
          ),
          ...unfusedNormLinear(gpu, xb, nb, wb, M, N, K, qkvU),
          rotary(gpu, { qkv: qkvU, cos, sin, start, ...sizes }),
          kvWrite(gpu, { qkv: qkvU, kv: kvU, start, ...sizes }),
        ]);
        const ref = normQkvKvRef(x, norm, w, { ...sizes, K, start: starts, invFreq, kv: kv0 });
        const gotQkv = await gpu.readF32(qkv), gotKv = await gpu.readF32(kv);
        const uQkv = await gpu.readF32(qkvU);
        // q only: the fused kernel sends k and v to the cache alone
        const qOf = (a: ArrayLike<number>) =>
          Array.from({ length: M }, (_, t) => Array.from(a).slice(t * N, t * N + H * D)).flat();
        const what = `B=${B} n=${n}${uniform ? " uniform" : ""}`;
        assertClose(qOf(gotQkv), qOf(ref.qkv), { ...TOL, label: `q ${what}` });
        assertClose(gotKv, ref.kv, { ...TOL, label: `kv ${what}` });
        assertBits(gpu, Float32Array.from(qOf(gotQkv)), Float32Array.from(qOf(uQkv)), `q ${what}`);
        assertBits(gpu, gotKv, await gpu.readF32(kvU), `kv ${what} vs unfused`);
      }
    }
  },
);

/** An rgba32float texture `(rows, K/4 texels)` holding `data (rows, K)`. */
function rowTexture(gpu: Gpu, data: Float32Array<ArrayBuffer>, rows: number, K: number) {
  const t = gpu.device.createTexture({
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

gpuTest(
  "fusedLinear embed: the embedding folded in, its rows stored, unfused bits",
  async (gpu) => {
    // K = 20 (5 texels), V = 7 table rows; tokens 7 and 9 lie past the table: zero rows
    const K = 20, V = 7, H = 2, D = 8, maxLen = 8;
    const table = randomF32(V * K, 60, -2, 2), tex = rowTexture(gpu, table, V, K);
    const tableB = gpu.upload("table", table);
    const norm = up(gpu, "norm", randomF32(K, 61, 0.5, 1.5));
    const tables = rotaryTable(maxLen, rotaryInvFreq(D));
    const cos = gpu.upload("cos", tables.cos), sin = gpu.upload("sin", tables.sin);
    for (const uniform of [false, true]) {
      for (const M of [1, 5, 19]) { // 19: two blocks of rows
        const toks = Uint32Array.from({ length: M }, (_, i) => [3, 7, 0, 6, 9][i % 5]);
        const tokens = gpu.upload("tokens", toks);
        const pad = (n: number) => Math.max(n, 4096);
        const x = up(gpu, "x", new Float32Array(pad(M * K)).fill(123));
        const xRef = up(gpu, "x ref", new Float32Array(pad(M * K)));
        const what = `M=${M}${uniform ? " uniform" : ""}`;
        // "none": N = 12, not a multiple of a workgroup's 64 columns
        {
          const N = 12, wData = randomF32(N * K, 62, -0.5, 0.5), w = up(gpu, "w", wData);
          const out = gpu.buffer("out", M * N * 4), ref = gpu.buffer("ref", M * N * 4);
          // with uniform bindings W from a texture too, as the forward plan runs it
          const wTex = uniform ? rowTexture(gpu, wData, N, K) : undefined;
          const args = { norm, w, wTex, M, N, K, uniform };
          const d = fusedLinear(gpu, {
            ...args,
            x,
            embed: { tokens, table: tex },
            epilogue: { kind: "none", out },
          });
          assert(d.label.endsWith(" embed"), d.label);
          gpu.run("embed none", [
            d,
            embedding(gpu, { tokens, table: tableB, out: xRef, T: M, C: K }),
            fusedLinear(gpu, { ...args, x: xRef, epilogue: { kind: "none", out: ref } }),
          ]);
          const xs = (await gpu.readF32(x)).slice(0, M * K);
          assertSameBits(xs, (await gpu.readF32(xRef)).slice(0, M * K), `x ${what} vs embedding`);
          assert(xs.slice(K, 2 * K).every((v) => v === 0), "token 7 past the table: a zero row");
          assertBits(
            gpu,
            await gpu.readF32(out),
            await gpu.readF32(ref),
            `none ${what} vs unfused`,
          );
        }
        // "rotaryKv": B·n = M rows (B = 1), positions from 2 (rows past the cache included)
        if (M === 5) {
          const N = 3 * H * D, w = up(gpu, "w qkv", randomF32(N * K, 63, -0.5, 0.5));
          const start = gpu.upload("start", new Uint32Array([2]));
          const sizes = { B: 1, n: M, H, D, maxLen };
          const kv0 = randomF32(2 * H * maxLen * D, 64);
          const mk = () => ({
            qkv: gpu.buffer("qkv", M * N * 4),
            kv: gpu.upload("kv", kv0),
          });
          const [a, b] = [mk(), mk()];
          const args = { norm, w, M, N, K, uniform };
          gpu.run("embed qkv", [
            fusedLinear(gpu, {
              ...args,
              x,
              embed: { tokens, table: tex },
              epilogue: { kind: "rotaryKv", ...a, start, cos, sin, ...sizes },
            }),
            fusedLinear(gpu, {
              ...args,
              x: xRef,
              epilogue: { kind: "rotaryKv", ...b, start, cos, sin, ...sizes },
            }),
          ]);
          assertBits(
            gpu,
            await gpu.readF32(a.qkv),
            await gpu.readF32(b.qkv),
            `qkv ${what} vs unfused`,
          );
          assertBits(
            gpu,
            await gpu.readF32(a.kv),
            await gpu.readF32(b.kv),
            `kv ${what} vs unfused`,
          );
        }
      }
    }
    const x = up(gpu, "x", new Float32Array(4096));
    const out = gpu.buffer("out", 64);
    throws(
      () =>
        fusedLinear(gpu, {
          x,
          norm,
          w: up(gpu, "w", new Float32Array(4 * 24)),
          M: 1,
          N: 4,
          K: 24,
          embed: { tokens: gpu.upload("t", new Uint32Array([0])), table: tex },
          epilogue: { kind: "none", out },
        }),
      /embedding texture is 5 texels wide, rows of 24 need 6/,
    );
  },
);

gpuTest(
  "fusedLinear accumulate with a slot copy: the rows into their slots, as slotCopyKernel",
  async (gpu) => {
    // B = 5 one-token rows; row 3 finished, row 4's start below pos − 1 (stale), row 2's past the
    // last slot, row 1 at pos 1 (slot 1); N not a multiple of a lane's 8 columns
    const B = 5, N = 12, K = 20, S = 4, L = 20;
    const pos = [7, 1, 3, L, 9], start = [8, 1, 2 + S, 4, 5];
    const a = randomF32(B * K, 60), w = randomF32(N * K, 61, -0.2, 0.2), bias = randomF32(N, 62);
    const x0 = randomF32(B * N, 63);
    const before = Float32Array.from({ length: B * S * N }, (_, i) => -1 - i);
    const ab = up(gpu, "a", a), wb = up(gpu, "w", w), bb = up(gpu, "bias", bias);
    const state = gpu.upload("state", Uint32Array.from([...pos, 0, 0]));
    const startBuf = gpu.upload("start", Uint32Array.from(start));
    for (const uniform of [false, true]) {
      const x = up(gpu, "x", x0), plain = up(gpu, "plain", x0);
      const hidden = gpu.upload("hidden", before);
      const args = { x: ab, w: wb, M: B, N, K, uniform };
      const d = fusedLinear(gpu, {
        ...args,
        epilogue: {
          kind: "accumulate",
          bias: bb,
          out: x,
          slotCopy: { state, start: startBuf, hidden, slots: S, L },
        },
      });
      assert(d.label.includes("slotCopy"), d.label);
      gpu.run("slot copy", [
        d,
        fusedLinear(gpu, { ...args, epilogue: { kind: "accumulate", bias: bb, out: plain } }),
      ]);
      const got = await gpu.readF32(x);
      assertSameBits(got, await gpu.readF32(plain), `out${uniform ? " uniform" : ""} vs no copy`);
      const want = Float32Array.from(before);
      for (let b = 0; b < B; b++) {
        const slot = start[b] + 1 - pos[b];
        if (pos[b] >= L || pos[b] === 0 || slot < 0 || slot >= S) continue;
        want.set(got.subarray(b * N, (b + 1) * N), (b * S + slot) * N);
      }
      assertSameBits(await gpu.readF32(hidden), want, `hidden${uniform ? " uniform" : ""}`);
    }
    // a hidden buffer too small for B rows × S slots is refused, naming it
    throws(
      () =>
        fusedLinear(gpu, {
          x: ab,
          w: wb,
          M: B,
          N,
          K,
          epilogue: {
            kind: "accumulate",
            out: gpu.buffer("o", B * N * 4),
            slotCopy: {
              state,
              start: startBuf,
              hidden: gpu.buffer("tiny hidden", 16),
              slots: S,
              L,
            },
          },
        }),
      /slot copy: "tiny hidden" has 16 bytes/,
    );
  },
);

gpuTest("fusedLinear refuses sizes it does not serve, naming them", (gpu) => {
  assert(!fusedLinearSupported(6, 12) && !fusedLinearSupported(8, 12, 6));
  assert(fusedLinearSupported(8, 12) && fusedLinearSupported(8, 48, 16));
  const b = gpu.buffer("b", 64);
  throws(
    () =>
      fusedLinear(gpu, {
        x: b,
        norm: b,
        w: b,
        M: 1,
        N: 12,
        K: 6,
        epilogue: { kind: "none", out: b },
      }),
    /K and N multiples of 4.*K 6/,
  );
});

/** W `(N, K)` as the rgba32float texture the fused GEMVs read (ModelState.weightTexture's). */
function weightTexture(gpu: Gpu, w: Float32Array<ArrayBuffer>, N: number, K: number): GPUTexture {
  const t = gpu.device.createTexture({
    size: [K / 4, N],
    format: "rgba32float",
    usage: 0x04 | 0x02,
  });
  gpu.device.queue.writeTexture({ texture: t }, w, { bytesPerRow: K * 4, rowsPerImage: N }, [
    K / 4,
    N,
  ]);
  return t;
}

gpuTest(
  "fusedLinear with W from a texture: the storage path's bits, every epilogue",
  async (gpu) => {
    // K = 64 (texture rows), N = 20 (not a multiple of a lane's 8 columns); M 5: x from storage
    const K = 64, N = 20;
    const norm = randomF32(K, 61, 0.5, 1.5), w = randomF32(N * K, 62, -0.5, 0.5);
    const bias = randomF32(N, 63);
    const nb = up(gpu, "norm", norm), wb = up(gpu, "w", w), bb = up(gpu, "bias", bias);
    const wTex = weightTexture(gpu, w, N, K);
    for (const M of [1, 5]) {
      const x = randomF32(M * K, 70 + M, -2, 2), x0 = randomF32(M * N, 80 + M);
      const xb = up(gpu, "x", x);
      const outs = [0, 1].map(() => [0, 1, 2].map(() => gpu.buffer("out", M * N * 4)));
      outs.forEach((o) => gpu.write(o[2], x0));
      gpu.run(
        "fused",
        [0, 1].flatMap((t) => {
          const args = { x: xb, w: wb, wTex: t ? wTex : undefined, M, N, K, uniform: M === 1 };
          const ds = [
            fusedLinear(gpu, { ...args, norm: nb, epilogue: { kind: "none", out: outs[t][0] } }),
            fusedLinear(gpu, {
              ...args,
              norm: nb,
              epilogue: { kind: "biasGelu", bias: bb, out: outs[t][1] },
            }),
            fusedLinear(gpu, {
              ...args,
              epilogue: { kind: "accumulate", bias: bb, out: outs[t][2] },
            }),
          ];
          ds.forEach((d) => assertEquals(d.label.endsWith(" wTex"), t === 1, d.label));
          return ds;
        }),
      );
      const got = await Promise.all(outs[1].map((b) => gpu.readF32(b)));
      assertClose(got[0], normLinearRef(x, norm, w, M, N, K), { ...TOL, label: `none M=${M}` });
      assertClose(got[1], normLinearGeluRef(x, norm, w, bias, M, N, K), {
        ...TOL,
        label: `biasGelu M=${M}`,
      });
      const prod = matmulNTRef(x, w, M, N, K, bias);
      assertClose(got[2], prod.map((v, i) => v + x0[i]), { ...TOL, label: `accumulate M=${M}` });
      for (let e = 0; e < 3; e++) {
        assertSameBits(
          got[e],
          await gpu.readF32(outs[0][e]),
          `epilogue ${e} M=${M}: texture vs storage`,
        );
      }
    }
    throws(
      () =>
        fusedLinear(gpu, {
          x: wb,
          w: wb,
          wTex,
          M: 1,
          N: 16,
          K,
          epilogue: { kind: "none", out: bb },
        }),
      /weight texture is 16 × 20 texels, W \(16, 64\) needs 16 × 16/,
    );
    wTex.destroy();
  },
);

gpuTest(
  "fusedLinear rotaryKv with W and the KV cache in textures: the cache's values",
  async (gpu) => {
    const H = 2, D = 16, K = 64, N = 3 * H * D, maxLen = 7, B = 2, n = 3, M = B * n;
    const starts = [1, 5]; // row 1's third token sits at position 7 = maxLen: not written
    const invFreq = rotaryInvFreq(D), tables = rotaryTable(maxLen, invFreq);
    const cos = gpu.upload("cos", tables.cos), sin = gpu.upload("sin", tables.sin);
    const norm = randomF32(K, 91, 0.5, 1.5), w = randomF32(N * K, 92, -0.2, 0.2);
    const x = randomF32(M * K, 93, -2, 2), kv0 = randomF32(2 * B * H * maxLen * D, 94);
    const nb = up(gpu, "norm", norm), wb = up(gpu, "w", w), xb = up(gpu, "x", x);
    const wTex = weightTexture(gpu, w, N, K);
    const kvTex = kvTexture(gpu, "kv texture", B, H, D, maxLen);
    writeKvTexture(gpu, kvTex, kv0);
    const start = gpu.upload("start", new Uint32Array(starts));
    const qkv = gpu.buffer("qkv", M * N * 4), kv = gpu.upload("kv", kv0);
    const sizes = { B, n, H, D, maxLen };
    gpu.run("qkv", [fusedLinear(gpu, {
      x: xb,
      norm: nb,
      w: wb,
      wTex,
      M,
      N,
      K,
      epilogue: { kind: "rotaryKv", qkv, kv, kvTex, start, cos, sin, ...sizes },
    })]);
    const ref = normQkvKvRef(x, norm, w, { ...sizes, K, start: starts, invFreq, kv: kv0 });
    const gotKv = await gpu.readF32(kv);
    assertClose(gotKv, ref.kv, { ...TOL, label: "kv" });
    assertEquals(await readKvTexture(gpu, kvTex), gotKv);
    wTex.destroy();
    kvTex.destroy();
  },
);
