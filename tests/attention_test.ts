import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import {
  attention,
  attentionBackward,
  type AttentionVariant,
  kvWrite,
} from "../kernels/attention.ts";
import type { Gpu } from "../kernels/gpu.ts";
import { rotary, rotaryInvFreq, rotaryTable } from "../kernels/rotary.ts";
import { assertClose, gpuTest, randomNormal } from "./helpers.ts";
import { attentionBackwardRef, attentionRef, splitQkv } from "./reference/attention.ts";

interface Sizes {
  B: number;
  n: number;
  H: number;
  D: number;
  maxLen: number;
}

/** Buffers of one forward of kvWrite + attention over an existing cache. */
function forward(
  gpu: Gpu,
  kv: GPUBuffer,
  qkvHost: Float32Array<ArrayBuffer>,
  start: GPUBuffer,
  s: Sizes,
  variant?: AttentionVariant,
  per?: number,
) {
  const T = s.B * s.n;
  const qkv = gpu.upload("qkv (T, 3, H, D)", qkvHost);
  const out = gpu.buffer("out (T, H, D)", T * s.H * s.D * 4);
  const lse = gpu.buffer("lse (B, H, n)", s.B * s.H * s.n * 4);
  const dispatches = [
    kvWrite(gpu, { qkv, kv, start, ...s }),
    attention(gpu, { qkv, kv, start, out, lse, variant, per, ...s }),
  ];
  return { qkv, out, lse, dispatches };
}

gpuTest(
  "kvWrite() copies k and v to each row's positions and skips positions ≥ maxLen",
  async (gpu) => {
    // D = 6 takes the scalar copy, D = 8 the vec4 one
    for (const D of [6, 8]) await kvWriteCase(gpu, D);
  },
);

/** kvWrite of 3 rows at starts 0, 3, 7 into a cache preset to −7, checked element by element. */
async function kvWriteCase(gpu: Gpu, D: number) {
  const [B, n, H, maxLen] = [3, 4, 3, 9];
  const start = [0, 3, 7]; // row 2 writes positions 7, 8 and skips 9, 10
  const qkvHost = randomNormal(B * n * 3 * H * D, 1); // (T, 3, H, D)
  const kv = gpu.upload(
    "kv (2, B, H, maxLen, D)",
    new Float32Array(2 * B * H * maxLen * D).fill(-7),
  );
  const qkv = gpu.upload("qkv (T, 3, H, D)", qkvHost);
  const startBuf = gpu.upload("start (B)", new Uint32Array(start));
  gpu.run("kvWrite", [kvWrite(gpu, { qkv, kv, start: startBuf, B, n, H, D, maxLen })]);
  const expected = new Float32Array(2 * B * H * maxLen * D).fill(-7); // (2, B, H, maxLen, D)
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < n; i++) {
      const pos = start[b] + i;
      if (pos >= maxLen) continue;
      for (let s = 0; s < 2; s++) {
        for (let h = 0; h < H; h++) {
          for (let d = 0; d < D; d++) {
            expected[(((s * B + b) * H + h) * maxLen + pos) * D + d] =
              qkvHost[(((b * n + i) * 3 + 1 + s) * H + h) * D + d];
          }
        }
      }
    }
  }
  assertEquals(await gpu.readF32(kv), expected, `D=${D}`);
}

for (const variant of ["tiled", "split"] as const) {
  gpuTest(
    `attention() ${variant} matches the reference with per-row starts and a cache`,
    async (gpu) => {
      const cases: (Sizes & { start: number[]; per?: number })[] = [
        { B: 3, n: 5, H: 3, D: 10, maxLen: 40, start: [0, 17, 34] },
        { B: 2, n: 70, H: 1, D: 8, maxLen: 90, start: [0, 19] }, // two query tiles
        // the model's head size; per 4 (tiled): lavapipe takes ~1 min to compile 8 queries of 64
        // per invocation without a shader cache (a fresh CI machine), 4 compile in seconds
        { B: 1, n: 3, H: 2, D: 64, maxLen: 45, start: [41], per: 4 },
      ];
      for (const c of cases) {
        const { B, n, H, D, maxLen, start, per } = c;
        const T = B * n;
        const seed = 100 * D + n;
        const qkvHost = randomNormal(T * 3 * H * D, seed);
        const cacheHost = randomNormal(2 * B * H * maxLen * D, seed + 1); // (2, B, H, maxLen, D)
        const kv = gpu.upload("kv (2, B, H, maxLen, D)", cacheHost);
        const startBuf = gpu.upload("start (B)", new Uint32Array(start));
        const f = forward(gpu, kv, qkvHost, startBuf, { B, n, H, D, maxLen }, variant, per);
        gpu.run("attention", f.dispatches);
        const { q, k, v } = splitQkv(qkvHost, { T, H, D });
        const half = B * H * maxLen * D;
        const ref = attentionRef({
          q,
          k,
          v,
          B,
          n,
          H,
          D,
          start,
          maxLen,
          cacheK: cacheHost.subarray(0, half),
          cacheV: cacheHost.subarray(half),
        });
        const label = `${variant} B=${B} n=${n} H=${H} D=${D}`;
        assertClose(await gpu.readF32(f.out), ref.out, { atol: 2e-6, rtol: 1e-5, label });
        assertClose(await gpu.readF32(f.lse), ref.lse, {
          atol: 2e-6,
          rtol: 1e-6,
          label: label + " lse",
        });
      }
    },
  );
}

gpuTest(
  "attention() tiled: per 1 and per 8 match the reference and give the same bits",
  async (gpu) => {
    // per = queries per invocation (8: software adapters, 1: hardware, the shared-memory kernel).
    // n not a multiple of 8 nor of 64, so the last group of 8 and the last workgroup are partial.
    const cases: (Sizes & { start: number[] })[] = [
      { B: 3, n: 5, H: 1, D: 8, maxLen: 5, start: [0, 0, 0] }, // training: start 0
      { B: 2, n: 13, H: 2, D: 32, maxLen: 13, start: [0, 0] },
      { B: 1, n: 67, H: 3, D: 32, maxLen: 67, start: [0] }, // two workgroups of queries
      { B: 3, n: 67, H: 2, D: 8, maxLen: 80, start: [0, 9, 13] }, // a cache
      { B: 2, n: 13, H: 1, D: 10, maxLen: 30, start: [3, 11] }, // scalar loads (D % 4 ≠ 0)
      // row 1's positions 20..32 run past maxLen: its last queries see keys ≤ 19 only (the
      // reference has no such clamp: only per 1 and per 8 are compared, bit for bit)
      { B: 2, n: 13, H: 2, D: 8, maxLen: 20, start: [2, 7] },
    ];
    for (const c of cases) {
      const { B, n, H, D, maxLen, start } = c;
      const T = B * n;
      const qkvHost = randomNormal(T * 3 * H * D, 200 + n + D);
      const cacheHost = randomNormal(2 * B * H * maxLen * D, 300 + n + D); // (2, B, H, maxLen, D)
      const { q, k, v } = splitQkv(qkvHost, { T, H, D });
      const half = B * H * maxLen * D;
      const ref = attentionRef({
        q,
        k,
        v,
        B,
        n,
        H,
        D,
        start,
        maxLen,
        cacheK: cacheHost.subarray(0, half),
        cacheV: cacheHost.subarray(half),
      });
      const clamped = start.some((st) => st + n > maxLen);
      const got: Float32Array[][] = [];
      for (const per of [1, 8, 2]) {
        const kv = gpu.upload("kv (2, B, H, maxLen, D)", cacheHost);
        const startBuf = gpu.upload("start (B)", new Uint32Array(start));
        const f = forward(gpu, kv, qkvHost, startBuf, { B, n, H, D, maxLen }, "tiled", per);
        gpu.run("attention", f.dispatches);
        const out = await gpu.readF32(f.out), lse = await gpu.readF32(f.lse);
        const label = `per=${per} B=${B} n=${n} H=${H} D=${D} start=${start}`;
        if (!clamped) {
          assertClose(out, ref.out, { atol: 2e-6, rtol: 1e-5, label });
          assertClose(lse, ref.lse, { atol: 2e-6, rtol: 1e-6, label: label + " lse" });
        }
        got.push([out, lse]);
      }
      // the same summation order per query: the same bits whatever per is
      for (const [i, per] of [[1, 8], [2, 2]]) {
        assertEquals(got[i][0], got[0][0], `out per=${per} vs per=1, n=${n} D=${D}`);
        assertEquals(got[i][1], got[0][1], `lse per=${per} vs per=1, n=${n} D=${D}`);
      }
    }
    const b = gpu.buffer("any (4)", 16);
    const bufs = { qkv: b, kv: b, start: b, out: b, lse: b, B: 1, n: 1, H: 1, D: 4, maxLen: 1 };
    assertThrows(() => attention(gpu, { ...bufs, per: 6 }), /per = 6 must be a power of two/);
  },
);

gpuTest("attention() cached decode and rollback equal one full pass", async (gpu) => {
  const [B, H, D, N, maxLen] = [3, 3, 8, 20, 24];
  const table = rotaryTable(maxLen, rotaryInvFreq(D));
  const cos = gpu.upload("cos (maxLen, D/2)", table.cos);
  const sin = gpu.upload("sin (maxLen, D/2)", table.sin);
  const tokenSize = 3 * H * D;

  /** rotary + kvWrite + attention over `rows` tokens (B, n, 3, H, D) at per-row starts. */
  async function step(
    kv: GPUBuffer,
    rows: Float32Array<ArrayBuffer>,
    n: number,
    start: number[],
    variant?: AttentionVariant,
  ) {
    const s = { B, n, H, D, maxLen };
    const startBuf = gpu.upload("start (B)", new Uint32Array(start));
    const f = forward(gpu, kv, rows, startBuf, s, variant);
    gpu.run("step", [
      rotary(gpu, { qkv: f.qkv, cos, sin, start: startBuf, ...s }),
      ...f.dispatches,
    ]);
    return await gpu.readF32(f.out); // (B, n, H, D)
  }
  const newCache = () => gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * maxLen * D * 4);
  /** Tokens [from[b], from[b] + n) of every row of `seq` (B, N, 3, H, D). */
  const slice = (seq: Float32Array, from: number[], n: number) => {
    const out = new Float32Array(B * n * tokenSize);
    for (let b = 0; b < B; b++) {
      const at = (b * N + from[b]) * tokenSize;
      out.set(seq.subarray(at, at + n * tokenSize), b * n * tokenSize);
    }
    return out;
  };
  /** Checks outputs (B, n, H, D) against the full pass's at positions from[b] + i. */
  const check = (
    got: Float32Array,
    full: Float32Array,
    from: number[],
    n: number,
    label: string,
  ) => {
    const hd = H * D;
    for (let b = 0; b < B; b++) {
      const at = (b * N + from[b]) * hd;
      assertClose(got.subarray(b * n * hd, (b + 1) * n * hd), full.subarray(at, at + n * hd), {
        atol: 1e-5,
        rtol: 0,
        label: `${label} row ${b}`,
      });
    }
  };

  const seq = randomNormal(B * N * tokenSize, 7); // (B, N, 3, H, D) raw, before rotary
  // the full pass takes the training kernel, the steps the decode one
  const full = await step(newCache(), seq, N, [0, 0, 0], "tiled"); // (B, N, H, D)

  // prefill 7, then feed the rest one or several tokens at a time
  const kv = newCache();
  let pos = 0;
  for (const n of [7, 1, 3, 1, 4, 1, 3]) {
    const from = [pos, pos, pos];
    const variant = n === 4 ? "tiled" : undefined; // one chunk through the tiled kernel too
    check(await step(kv, slice(seq, from, n), n, from, variant), full, from, n, `chunk at ${pos}`);
    pos += n;
  }

  // rollback: each row rewinds to its own position and continues with other tokens
  const back = [5, 12, 9];
  const seq2 = seq.slice();
  const fresh = randomNormal(seq.length, 8);
  for (let b = 0; b < B; b++) {
    const at = (b * N + back[b]) * tokenSize;
    seq2.set(fresh.subarray(at, (b + 1) * N * tokenSize), at);
  }
  const full2 = await step(newCache(), seq2, N, [0, 0, 0], "tiled");
  check(await step(kv, slice(seq2, back, 3), 3, back), full2, back, 3, "after rollback");
  const next = back.map((p) => p + 3);
  check(await step(kv, slice(seq2, next, 1), 1, next), full2, next, 1, "decode after rollback");
});

gpuTest(
  "attention() split gives a query the same bits whatever n is (one at a time or all at once)",
  async (gpu) => {
    // Greedy speculative decoding equals base decoding only if the verification forward
    // (n = γ + 1) reproduces each one-token decode step bit for bit.
    for (const D of [32, 10]) { // the models' head size (vec4 bindings), and scalar loads
      const [B, H, maxLen, prefill, N] = [2, 2, 40, 9, 12];
      const starts = [prefill, prefill + 5]; // each row at its own position
      const tokenSize = 3 * H * D;
      const seq = randomNormal(B * N * tokenSize, 50 + D); // (B, N, 3, H, D): N new tokens a row
      const cacheHost = randomNormal(2 * B * H * maxLen * D, 60 + D); // earlier positions
      /** Feeds the N tokens in chunks of the given sizes; returns out (B, N, H, D), lse, cache. */
      const feed = async (chunks: number[]) => {
        const kv = gpu.upload("kv (2, B, H, maxLen, D)", cacheHost);
        const out = new Float32Array(B * N * H * D);
        const lse = new Float32Array(B * H * N); // (B, H, N)
        const reads: Promise<void>[] = []; // in flight together: one round trip, not one a chunk
        let at = 0;
        for (const n of chunks) {
          const rows = new Float32Array(B * n * tokenSize); // (B, n, 3, H, D)
          for (let b = 0; b < B; b++) {
            const from = (b * N + at) * tokenSize;
            rows.set(seq.subarray(from, from + n * tokenSize), b * n * tokenSize);
          }
          const start = gpu.upload("start (B)", new Uint32Array(starts.map((s) => s + at)));
          const f = forward(gpu, kv, rows, start, { B, n, H, D, maxLen }, "split");
          gpu.run("chunk", f.dispatches);
          const i = at, hd = H * D;
          reads.push(
            Promise.all([gpu.readF32(f.out), gpu.readF32(f.lse)]).then(([o, l]) => {
              for (let b = 0; b < B; b++) {
                out.set(o.subarray(b * n * hd, (b + 1) * n * hd), (b * N + i) * hd);
                for (let h = 0; h < H; h++) {
                  lse.set(l.subarray((b * H + h) * n, (b * H + h + 1) * n), (b * H + h) * N + i);
                }
              }
              for (const buf of [start, f.qkv, f.out, f.lse]) buf.destroy();
            }),
          );
          at += n;
        }
        const cache = await gpu.readF32(kv);
        await Promise.all(reads);
        kv.destroy();
        return { out, lse, cache };
      };
      const one = await feed(Array(N).fill(1));
      // all at once (two chunks of 8 queries per workgroup), γ + 1 = 6 twice, and uneven
      for (const chunks of [[N], [6, 6], [3, 1, 8]]) {
        const got = await feed(chunks);
        const label = `D=${D} chunks ${chunks}`;
        assertEquals(got.out, one.out, `${label}: out`);
        assertEquals(got.lse, one.lse, `${label}: lse`);
        assertEquals(got.cache, one.cache, `${label}: cache`);
      }
      // and it is attention, not a constant: the reference agrees (to rounding)
      const { q, k, v } = splitQkv(seq, { T: B * N, H, D });
      const half = B * H * maxLen * D;
      const ref = attentionRef({
        q,
        k,
        v,
        B,
        n: N,
        H,
        D,
        start: starts,
        maxLen,
        cacheK: cacheHost.subarray(0, half),
        cacheV: cacheHost.subarray(half),
      });
      assertClose(one.out, ref.out, { atol: 2e-6, rtol: 1e-5, label: `D=${D} out` });
    }
  },
);

/** q, k, v of a training forward through the GPU, then the backward; checks against the reference. */
async function backwardCase(
  gpu: Gpu,
  { B, n, H, D, per }: { B: number; n: number; H: number; D: number; per?: number },
) {
  const T = B * n;
  const s = { B, n, H, D, maxLen: n };
  const qkvHost = randomNormal(T * 3 * H * D, 31 + n + D);
  const dOutHost = randomNormal(T * H * D, 32 + n + D);
  const kv = gpu.buffer("kv (2, B, H, maxLen, D)", 2 * B * H * n * D * 4);
  const start = gpu.upload("start (B)", new Uint32Array(B));
  const f = forward(gpu, kv, qkvHost, start, s);
  const dOut = gpu.upload("dOut (T, H, D)", dOutHost);
  // garbage first: the backward must overwrite every element
  const dqkv = gpu.upload("dqkv (T, 3, H, D)", new Float32Array(T * 3 * H * D).fill(1e30));
  const bwd = attentionBackward(gpu, {
    qkv: f.qkv,
    out: f.out,
    dOut,
    lse: f.lse,
    dqkv,
    ...s,
    per,
  });
  gpu.run("forward backward", [...f.dispatches, ...bwd]);
  const got = await gpu.readF32(dqkv);
  const { q, k, v } = splitQkv(qkvHost, { T, H, D });
  const ref = attentionBackwardRef({ q, k, v, dOut: dOutHost, B, n, H, D });
  const { q: dq, k: dk, v: dv } = splitQkv(got, { T, H, D });
  const label = `B=${B} n=${n} H=${H} D=${D} per=${per}`;
  assertClose(dq, ref.dq, { atol: 4e-6, rtol: 1e-5, label: `dq ${label}` });
  assertClose(dk, ref.dk, { atol: 4e-6, rtol: 1e-5, label: `dk ${label}` });
  assertClose(dv, ref.dv, { atol: 4e-6, rtol: 1e-5, label: `dv ${label}` });
  // deterministic: the same bits again
  gpu.run("backward again", bwd);
  assertEquals(await gpu.readF32(dqkv), got);
}

gpuTest("attentionBackward() matches the reference on odd sizes", async (gpu) => {
  // per: queries (keys) per invocation, the software (8) and hardware (1) defaults and one more
  for (const per of [8, 1, 4]) {
    await backwardCase(gpu, { B: 3, n: 5, H: 1, D: 10, per });
    await backwardCase(gpu, { B: 2, n: 70, H: 3, D: 8, per }); // two tiles of queries and keys
  }
  const b = gpu.buffer("any (4)", 16);
  const bufs = { qkv: b, out: b, dOut: b, lse: b, dqkv: b, B: 1, n: 1, H: 1, D: 4 };
  assertThrows(() => attentionBackward(gpu, { ...bufs, per: 3 }), /per = 3 must be a power of two/);
});

Deno.test("attentionBackwardRef() matches central finite differences", () => {
  const [B, n, H, D] = [2, 4, 2, 4];
  const size = B * n * H * D;
  const q = Float64Array.from(randomNormal(size, 41));
  const k = Float64Array.from(randomNormal(size, 42));
  const v = Float64Array.from(randomNormal(size, 43));
  const g = Float64Array.from(randomNormal(size, 44)); // dLoss/dOut
  const loss = (qq: Float64Array, kk: Float64Array, vv: Float64Array) => {
    const { out } = attentionRef({ q: qq, k: kk, v: vv, B, n, H, D });
    let s = 0;
    for (let e = 0; e < size; e++) s += out[e] * g[e];
    return s;
  };
  const ref = attentionBackwardRef({ q, k, v, dOut: g, B, n, H, D });
  const eps = 1e-6;
  for (const [name, x, grad] of [["q", q, ref.dq], ["k", k, ref.dk], ["v", v, ref.dv]] as const) {
    const numeric = new Float64Array(size);
    for (let e = 0; e < size; e++) {
      const keep = x[e];
      x[e] = keep + eps;
      const up = loss(q, k, v);
      x[e] = keep - eps;
      const down = loss(q, k, v);
      x[e] = keep;
      numeric[e] = (up - down) / (2 * eps);
    }
    assertClose(grad, numeric, { atol: 1e-8, rtol: 1e-6, label: `d${name}` });
  }
});
