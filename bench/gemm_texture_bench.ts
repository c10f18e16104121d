/**
 * Storage vs texture operands for the NT GEMM (issue 14): kernels/matmul.ts's `matmulNT`
 * `"registerTile"` (operands in storage buffers) against kernels/gemm_texture.ts's
 * `matmulNTTexture` (operands in rgba32float textures; same tile, same bits), at the training
 * shapes (M = 4 × 513 tokens) and 1024³, plus the cost of filling the textures with
 * `copyBufferToTexture`, so copy + GEMM is compared with the storage GEMM honestly.
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/gemm_texture_bench.ts [rounds]`
 *
 * GEMM times are GPU timestamps per dispatch (a pass of several dispatches), the median of
 * `rounds` passes per kernel, the two kernels alternated pass by pass so a busy machine slows
 * both alike. Copy times are wall clock (copies are outside compute passes, which is all the
 * timer times): one submit of 5 copies, waited for, minus an empty submit's round trip; median
 * over the rounds. The last two columns are wall ms of one submit each: the storage GEMM, and
 * both copies plus the texture GEMM in one command buffer (each includes ~10 ms of submit and
 * wait overhead).
 *
 * Measured 2026-12-01, llvmpipe (LLVM 15.0.6, 256 bits), 2 cores AMD EPYC shared with other
 * helpers, load average 1.30 before and 1.47 after, 7 rounds ("b only": `a` from storage, `b`
 * from its texture, as a weight texture with activations left in storage):
 *
 * | M×N×K          | storage ms | GFLOP/s | texture ms | GFLOP/s | speedup | b only ms | speedup | copy a ms | copy b ms | wall storage | wall copies + texture |
 * | -------------- | ---------: | ------: | ---------: | ------: | ------: | --------: | ------: | --------: | --------: | -----------: | --------------------: |
 * | 2052×128×128   |      26.86 |    2.50 |       5.38 |   12.49 |   4.99× |     19.23 |   1.40× |     0.121 |     0.015 |        38.27 |                 20.40 |
 * | 2052×128×512   |      98.99 |    2.72 |      17.80 |   15.11 |   5.56× |     69.82 |   1.42× |     0.480 |     0.031 |       109.64 |                 29.41 |
 * | 2052×512×128   |      98.29 |    2.74 |      21.68 |   12.40 |   4.53× |     75.49 |   1.30× |     0.097 |     0.042 |       112.40 |                 33.97 |
 * | 2052×512×512   |     381.39 |    2.82 |      63.78 |   16.87 |   5.98× |    273.95 |   1.39× |     0.409 |     0.093 |       393.68 |                 78.83 |
 * | 1024×1024×1024 |     756.13 |    2.84 |     130.32 |   16.48 |   5.80× |    538.11 |   1.41× |     0.373 |     0.295 |       767.40 |                145.56 |
 *
 * All three kernels give the same bits (checked here on every shape before timing). Copies of a
 * few MiB take tenths of a millisecond (~10 GB/s), so copy + texture GEMM stays 4.5–6× faster;
 * a weight texture alone (activations in storage) gives only 1.3–1.4×.
 *
 * @module
 */
import { type Dispatch, type Gpu, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { matmulNT } from "../kernels/matmul.ts";
import { matmulNTTexture, textureFromBuffer } from "../kernels/gemm_texture.ts";

/** Seeded values in [-1, 1). */
function values(n: number, seed: number): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** GPU ms per dispatch of one pass of `reps` dispatches. */
async function pass(gpu: Gpu, timer: GpuTimer, d: Dispatch, reps: number): Promise<number> {
  gpu.run(d.label, new Array(reps).fill(d), timer);
  return (await timer.read()) / reps;
}

/** Wall ms of one submit of `copies` copies of `buf (rows, K)` into `tex`, waited for. */
async function copyMs(gpu: Gpu, buf: GPUBuffer, tex: GPUTexture, copies: number): Promise<number> {
  const t0 = performance.now();
  const enc = gpu.device.createCommandEncoder({ label: "copy to texture" });
  for (let i = 0; i < copies; i++) {
    enc.copyBufferToTexture(
      { buffer: buf, bytesPerRow: tex.width * 16, rowsPerImage: tex.height },
      { texture: tex },
      [tex.width, tex.height],
    );
  }
  gpu.device.queue.submit([enc.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/** Wall ms of an empty submit, waited for: the round trip the copy times include. */
async function emptyMs(gpu: Gpu): Promise<number> {
  const t0 = performance.now();
  gpu.device.queue.submit([gpu.device.createCommandEncoder().finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/**
 * Wall ms of one submit (waited for) of `d`, preceded in the same command buffer by the copies
 * of `copies` (buffer, texture) into their textures: the honest end-to-end comparison.
 */
async function wallMs(gpu: Gpu, d: Dispatch, copies: [GPUBuffer, GPUTexture][]): Promise<number> {
  const t0 = performance.now();
  const enc = gpu.device.createCommandEncoder({ label: d.label });
  for (const [buf, tex] of copies) {
    enc.copyBufferToTexture(
      { buffer: buf, bytesPerRow: tex.width * 16, rowsPerImage: tex.height },
      { texture: tex },
      [tex.width, tex.height],
    );
  }
  const pass = enc.beginComputePass();
  gpu.encode(pass, [d]);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/** One shape's result. */
interface Row {
  shape: string;
  storageMs: number;
  textureMs: number;
  /** a from storage, b from its texture (activations and a weight texture). */
  mixedMs: number;
  copyAMs: number;
  copyBMs: number;
  /** Wall ms of one submit: the storage GEMM. */
  wallStorageMs: number;
  /** Wall ms of one submit: a and b copied into their textures, then the texture GEMM. */
  wallCopyTextureMs: number;
  gflop: number;
}

async function shape(gpu: Gpu, timer: GpuTimer, M: number, N: number, K: number, rounds: number) {
  const A = gpu.upload(`a (${M}, ${K})`, values(M * K, 1));
  const B = gpu.upload(`b (${N}, ${K})`, values(N * K, 2));
  const C1 = gpu.buffer("c storage", M * N * 4), C2 = gpu.buffer("c texture", M * N * 4);
  const C3 = gpu.buffer("c mixed", M * N * 4);
  const enc = gpu.device.createCommandEncoder();
  const aT = textureFromBuffer(gpu, enc, A, M, K), bT = textureFromBuffer(gpu, enc, B, N, K);
  gpu.device.queue.submit([enc.finish()]);
  const base = { M, N, K };
  const ds = matmulNT(gpu, { a: A, b: B, c: C1, ...base, variant: "registerTile" });
  const dt = matmulNTTexture(gpu, { a: aT, b: bT, c: C2, ...base });
  const dm = matmulNTTexture(gpu, { a: A, b: bT, c: C3, ...base });
  // compile and estimate: about 150 ms of GPU time per pass, 1 to 10 dispatches
  const reps: number[] = [];
  for (const d of [ds, dt, dm]) {
    await pass(gpu, timer, d, 1);
    reps.push(Math.max(1, Math.min(10, Math.round(150 / (await pass(gpu, timer, d, 1))))));
  }
  const [s1, s2, s3] = [await gpu.readF32(C1), await gpu.readF32(C2), await gpu.readF32(C3)];
  if (s1.some((v, i) => !Object.is(v, s2[i]) || !Object.is(v, s3[i]))) {
    throw new Error(`${M}×${N}×${K}: results differ`);
  }
  const st: number[] = [], tt: number[] = [], ca: number[] = [], cb: number[] = [];
  const ws: number[] = [], wt: number[] = [], mt: number[] = [];
  for (let r = 0; r < rounds; r++) {
    st.push(await pass(gpu, timer, ds, reps[0]));
    tt.push(await pass(gpu, timer, dt, reps[1]));
    mt.push(await pass(gpu, timer, dm, reps[2]));
    const e = await emptyMs(gpu);
    ca.push((await copyMs(gpu, A, aT, 5) - e) / 5);
    cb.push((await copyMs(gpu, B, bT, 5) - e) / 5);
    ws.push(await wallMs(gpu, ds, []));
    wt.push(await wallMs(gpu, dt, [[A, aT], [B, bT]]));
  }
  for (const b of [A, B, C1, C2, C3]) b.destroy();
  aT.destroy();
  bT.destroy();
  return {
    shape: `${M}×${N}×${K}`,
    storageMs: median(st),
    textureMs: median(tt),
    mixedMs: median(mt),
    copyAMs: median(ca),
    copyBMs: median(cb),
    wallStorageMs: median(ws),
    wallCopyTextureMs: median(wt),
    gflop: (2 * M * N * K) / 1e9,
  } satisfies Row;
}

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? 7);
  const gpu = await requestGpu();
  const timer = new GpuTimer(gpu);
  const load = () => Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  console.log(`${gpu.adapterName}; ${rounds} alternated rounds; load average before: ${load()}`);
  const shapes: [number, number, number][] = [
    [2052, 128, 128],
    [2052, 128, 512],
    [2052, 512, 128],
    [2052, 512, 512],
    [1024, 1024, 1024],
  ];
  const f = (x: number, w = 8, p = 2) => x.toFixed(p).padStart(w);
  console.log(
    "M×N×K            storage ms  GFLOP/s  texture ms  GFLOP/s  speedup  b-only ms  speedup  copy a ms  copy b ms" +
      "  (copy a + tex) / storage  wall: storage  copy a,b + tex",
  );
  for (const [M, N, K] of shapes) {
    const r = await shape(gpu, timer, M, N, K, rounds);
    const cols = [
      f(r.storageMs, 10),
      f(r.gflop / r.storageMs * 1e3),
      f(r.textureMs, 11),
      f(r.gflop / r.textureMs * 1e3),
      `${f(r.storageMs / r.textureMs)}×`,
      f(r.mixedMs, 10),
      `${f(r.storageMs / r.mixedMs)}×`,
      f(r.copyAMs, 10, 3),
      f(r.copyBMs, 10, 3),
      f((r.copyAMs + r.textureMs) / r.storageMs, 26),
      f(r.wallStorageMs, 14),
      f(r.wallCopyTextureMs, 15),
    ];
    console.log(`${r.shape.padEnd(16)} ${cols.join(" ")}`);
  }
  console.log(`load average after: ${load()}`);
  timer.destroy();
}
