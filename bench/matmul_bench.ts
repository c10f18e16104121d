/**
 * Matrix-multiply benchmarks: the GEMM layouts (NT, NN, TN) at 512³ and 1024³ with their
 * named variants, the GEMV for the decode shapes of the default model (M = 1), and the weight
 * gradients of the tiny preset at 4 × 513 tokens (plain `matmulTN` against `weightGradient`).
 *
 * `XDG_RUNTIME_DIR=/tmp deno bench -A bench/matmul_bench.ts` runs the `Deno.bench` groups
 * "gemm", "gemv" and "wgrad" (wall time per pass, readback included) and, at the end, prints a table of
 * GPU time per dispatch from timestamp queries with GFLOPS or GB/s. Other scripts can call
 * {@link matmulReport} for the same table as data.
 *
 * @module
 */
import { type Dispatch, type Gpu, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import {
  type GemmVariant,
  gemvNT,
  type GemvVariant,
  type MatmulArgs,
  matmulNN,
  matmulNT,
  matmulTN,
  weightGradient,
} from "../kernels/matmul.ts";

/** One row of the report: GPU milliseconds per dispatch and the rate it gives. */
export interface MatmulReportRow {
  /** Case name, e.g. `"NT 1024³ registerTile"`. */
  name: string;
  /** Median GPU time per dispatch, milliseconds. */
  ms: number;
  /** 2·M·N·K / time, for GEMMs. */
  gflops?: number;
  /** Bytes read and written (weights, input, output) / time, for GEMVs. */
  gbps?: number;
}

type Kind = "NT" | "NN" | "TN" | "gemv" | "wgrad";

interface Case {
  group: "gemm" | "gemv" | "wgrad";
  name: string;
  kind: Kind;
  M: number;
  N: number;
  K: number;
  variant?: GemmVariant | GemvVariant;
  baseline?: boolean;
}

const KERNELS: Record<Kind, (gpu: Gpu, args: MatmulArgs) => Dispatch[]> = {
  NT: (gpu, args) => [matmulNT(gpu, args)],
  NN: (gpu, args) => [matmulNN(gpu, args)],
  TN: (gpu, args) => [matmulTN(gpu, args)],
  gemv: (gpu, args) => [gemvNT(gpu, args)],
  wgrad: weightGradient, // split-K when the shape calls for it: partials, then the reduction
};

/** The benchmark cases, in order. */
function cases(): Case[] {
  const out: Case[] = [];
  const gemm = (kind: Kind, S: number, variant: GemmVariant, baseline = false) =>
    out.push({
      group: "gemm",
      name: `${kind} ${S}³ ${variant}`,
      kind,
      M: S,
      N: S,
      K: S,
      variant,
      baseline,
    });
  gemm("NT", 512, "naive", true);
  for (const kind of ["NT", "NN", "TN"] as const) gemm(kind, 512, "workgroupTile");
  for (const kind of ["NT", "NN", "TN"] as const) gemm(kind, 512, "registerTile");
  gemm("NT", 1024, "workgroupTile");
  for (const kind of ["NT", "NN", "TN"] as const) gemm(kind, 1024, "registerTile");
  // Decode shapes of the default model (dim 512): qkv, ff in, ff out, logits.
  const shapes: [number, number][] = [[1536, 512], [2048, 512], [512, 2048], [256, 512]];
  out.push({
    group: "gemv",
    name: "M=1 N=1536 K=512 via matmulNT (GEMM path)",
    kind: "NT",
    M: 1,
    N: 1536,
    K: 512,
    baseline: true,
  });
  for (const variant of ["registerTile", "splitK"] as const) {
    for (const [N, K] of shapes) {
      out.push({
        group: "gemv",
        name: `M=1 N=${N} K=${K} ${variant}`,
        kind: "gemv",
        M: 1,
        N,
        K,
        variant,
      });
    }
  }
  // Weight gradients of the tiny preset at 4 × 513 tokens: the plain TN GEMM, then
  // weightGradient() (split-K).
  for (const [M, N] of [[256, 64], [64, 64]]) {
    const K = 2052;
    const shape = `${M}×${N}×${K}`;
    out.push({ group: "wgrad", name: `TN ${shape} matmulTN`, kind: "TN", M, N, K, baseline: true });
    out.push({ group: "wgrad", name: `TN ${shape} weightGradient`, kind: "wgrad", M, N, K });
  }
  return out;
}

/** Seeded uniform values in [-1, 1) (LCG; the values don't matter, only that they're finite). */
function values(n: number, seed: number): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** A case made ready to time: its dispatch and how many dispatches one timed pass encodes. */
interface Prepared {
  d: Dispatch[];
  reps: number;
}

/** Buffers per device and shape: a (M·K), b (N·K), c (M·N), reused across cases. */
const buffers = new WeakMap<GPUDevice, Map<string, GPUBuffer[]>>();

/**
 * Builds the dispatch, runs it once (compiling the pipeline), and picks the dispatches per
 * pass: up to 10, about 250 ms of GPU time per pass.
 */
async function prepare(gpu: Gpu, timer: GpuTimer, c: Case): Promise<Prepared> {
  let map = buffers.get(gpu.device);
  if (!map) buffers.set(gpu.device, map = new Map());
  const key = `${c.M}x${c.N}x${c.K}`;
  let bufs = map.get(key);
  if (!bufs) {
    bufs = [
      gpu.upload(`a ${key}`, values(c.M * c.K, 1)), // (M, K) or (K, M)
      gpu.upload(`b ${key}`, values(c.N * c.K, 2)), // (N, K) or (K, N)
      gpu.buffer(`c ${key}`, c.M * c.N * 4), // (M, N)
    ];
    map.set(key, bufs);
  }
  const [a, b, out] = bufs;
  const d = KERNELS[c.kind](gpu, { a, b, c: out, M: c.M, N: c.N, K: c.K, variant: c.variant });
  gpu.run(`${c.name} warm-up`, d);
  await gpu.device.queue.onSubmittedWorkDone();
  gpu.run(`${c.name} estimate`, d, timer);
  const est = await timer.read();
  return { d, reps: Math.max(1, Math.min(10, Math.round(250 / Math.max(est, 1e-3)))) };
}

/** One timed pass of `reps` dispatches; returns GPU milliseconds per dispatch. */
async function pass(gpu: Gpu, timer: GpuTimer, c: Case, p: Prepared): Promise<number> {
  gpu.run(c.name, new Array(p.reps).fill(p.d).flat(), timer);
  return (await timer.read()) / p.reps;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function row(c: Case, ms: number): MatmulReportRow {
  if (c.group !== "gemv") return { name: c.name, ms, gflops: (2 * c.M * c.N * c.K) / ms / 1e6 };
  const bytes = 4 * (c.N * c.K + c.M * c.K + c.M * c.N);
  return { name: c.name, ms, gbps: bytes / ms / 1e6 };
}

/**
 * Times every case on `gpu`: GPU time per dispatch (timestamp queries; wall time on devices
 * without them), the median of `passes` passes of up to 10 dispatches each.
 *
 * @param gpu the runtime
 * @param passes timed passes per case
 * @returns one row per case, with GFLOPS (GEMMs) or GB/s (GEMVs)
 * @example
 * ```ts
 * import { requestGpu } from "../kernels/gpu.ts";
 * import { formatReport, matmulReport } from "./matmul_bench.ts";
 * const gpu = await requestGpu();
 * console.log(formatReport(await matmulReport(gpu)));
 * ```
 */
export async function matmulReport(gpu: Gpu, passes = 3): Promise<MatmulReportRow[]> {
  const timer = new GpuTimer(gpu);
  const rows: MatmulReportRow[] = [];
  for (const c of cases()) {
    const p = await prepare(gpu, timer, c);
    const ms: number[] = [];
    for (let i = 0; i < passes; i++) ms.push(await pass(gpu, timer, c, p));
    rows.push(row(c, median(ms)));
  }
  timer.destroy();
  return rows;
}

/**
 * Formats report rows as a fixed-width table.
 *
 * @param rows rows from {@link matmulReport}
 * @returns the table, one line per row
 */
export function formatReport(rows: readonly MatmulReportRow[]): string {
  const w = Math.max(...rows.map((r) => r.name.length), 4);
  const lines = [`${"case".padEnd(w)}  ${"GPU ms".padStart(9)}  rate`];
  for (const r of rows) {
    const rate = r.gflops !== undefined
      ? `${r.gflops.toFixed(2)} GFLOPS`
      : `${(r.gbps ?? 0).toFixed(2)} GB/s`;
    lines.push(`${r.name.padEnd(w)}  ${r.ms.toFixed(3).padStart(9)}  ${rate}`);
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Deno.bench cases (no-ops under `deno run`): wall time per pass, GPU time recorded per case.

let gpuPromise: Promise<Gpu | null> | undefined;
let benchTimer: GpuTimer | undefined;
const prepared = new Map<string, Prepared>();
const gpuTimes = new Map<string, { c: Case; ms: number[] }>();

function benchGpu(): Promise<Gpu | null> {
  gpuPromise ??= requestGpu().catch((e) => {
    console.warn(`matmul bench: no WebGPU adapter (${(e as Error).message})`);
    return null;
  });
  return gpuPromise;
}

for (const c of cases()) {
  const big = c.group === "gemm" && c.M >= 1024;
  Deno.bench({
    name: c.name,
    group: c.group,
    baseline: c.baseline,
    // Fixed iteration counts: a 1024³ pass takes about a second on a software adapter.
    n: big || c.variant === "naive" ? 3 : 10,
    warmup: 1,
    async fn(b) {
      const gpu = await benchGpu();
      if (!gpu) return;
      benchTimer ??= new GpuTimer(gpu);
      let p = prepared.get(c.name);
      if (!p) prepared.set(c.name, p = await prepare(gpu, benchTimer, c));
      b.start();
      const ms = await pass(gpu, benchTimer, c, p);
      b.end();
      const rec = gpuTimes.get(c.name) ?? { c, ms: [] };
      rec.ms.push(ms);
      gpuTimes.set(c.name, rec);
    },
  });
}

globalThis.addEventListener("unload", () => {
  if (gpuTimes.size === 0) return;
  const rows = [...gpuTimes.values()].map(({ c, ms }) => row(c, median(ms)));
  const how = benchTimer?.gpuTimed ? "timestamp queries" : "wall clock (no timestamp-query)";
  console.log(`\nmatmul GPU time per dispatch (median over passes, ${how}):`);
  console.log(formatReport(rows));
});
