/**
 * The benchmark suite shared by `bench.ts` (Deno.bench) and `bench/report.ts` (JSON, markdown and
 * SVG report): each case measures GPU time from timestamp queries and wall time, plus derived
 * rates (FLOP/s, GB/s, tokens/s, readbacks per token).
 *
 * Sizes follow the adapter: tiny on a software adapter, the reference config (dim 512, depth 10
 * target / depth 2 draft) on a real GPU.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { gemvNT, matmulNN, matmulNT, matmulTN } from "../kernels/matmul.ts";
import { attention, kvWrite } from "../kernels/attention.ts";
import { Decoder } from "../model/decoder.ts";
import type { DecoderConfig } from "../model/config.ts";
import { Trainer } from "../model/trainer.ts";
import { baseDecoding, speculativeDecoding } from "../model/decoding.ts";
import { wallMsPerRun } from "./wall_time.ts";

/** One measurement of a case. */
export interface Sample {
  /** GPU milliseconds (timestamp queries; wall time when the device has none). */
  gpuMs: number;
  /** Wall milliseconds, host included. */
  wallMs: number;
  /** Extra numbers of this run (tokens, acceptance, readbacks…). */
  metrics?: Record<string, number>;
}

/** A benchmark case: `setup` allocates once and returns the function to time. */
export interface BenchCase {
  /** Deno.bench group. */
  group: string;
  /** Case name. */
  name: string;
  /** The group's baseline. */
  baseline?: boolean;
  /** Allocates and returns the timed function. */
  setup: () => Promise<() => Promise<Sample>>;
  /** Turns the median sample into reported rates. */
  rates?: (s: Sample) => Record<string, number>;
}

/** Model sizes for the suite on this adapter. */
export interface SuiteSizes {
  /** Target model config. */
  target: DecoderConfig;
  /** Draft model config. */
  draft: DecoderConfig;
  /** Training rows per micro-batch. */
  trainBatch: number;
  /** Training sequence length. */
  trainSeq: number;
  /** Prompt length for decoding. */
  prompt: number;
  /** Total decoded length (prompt included). */
  seqLen: number;
  /** GEMM sizes (square). */
  gemm: number[];
  /** Model width for GEMV shapes. */
  dim: number;
}

/**
 * Sizes for an adapter: the reference config on a GPU, a tiny one on a software adapter.
 *
 * @param gpu the runtime
 * @param quick the short suite
 * @param reference force the reference config
 * @returns the sizes
 */
export function suiteSizes(gpu: Gpu, quick = false, reference = !gpu.isSoftware): SuiteSizes {
  if (reference) {
    return {
      target: { numTokens: 256, dim: 512, depth: 10 },
      draft: { numTokens: 256, dim: 512, depth: 2 },
      trainBatch: 4,
      trainSeq: 512,
      prompt: 128,
      seqLen: quick ? 256 : 512,
      gemm: [512, 1024, 2048],
      dim: 512,
    };
  }
  return {
    target: { numTokens: 256, dim: 128, depth: 4, heads: 4, dimHead: 32 },
    draft: { numTokens: 256, dim: 128, depth: 1, heads: 4, dimHead: 32 },
    trainBatch: 2,
    trainSeq: quick ? 32 : 64,
    prompt: 8,
    seqLen: quick ? 24 : 72,
    gemm: quick ? [256, 512] : [512, 1024],
    dim: 512,
  };
}

/** Encodes `dispatches` `reps` times in one timed pass; returns GPU and wall ms per rep. */
async function timePass(
  gpu: Gpu,
  dispatches: Dispatch[],
  reps: number,
  timer: GpuTimer,
): Promise<Sample> {
  const all: Dispatch[] = [];
  for (let r = 0; r < reps; r++) all.push(...dispatches);
  const t0 = performance.now();
  gpu.run("bench", all, timer);
  const gpuMs = await timer.read();
  return { gpuMs: gpuMs / reps, wallMs: (performance.now() - t0) / reps };
}

/**
 * The sample with the (lower) median GPU time: a real run, so its metrics belong to its time.
 *
 * @param samples the timed runs of a case
 * @returns the representative sample
 */
export function representative(samples: Sample[]): Sample {
  const sorted = [...samples].sort((a, b) => a.gpuMs - b.gpuMs);
  return sorted[(sorted.length - 1) >> 1];
}

/**
 * Leviathan et al.'s expected walltime improvement: (1 − α^(γ+1)) / ((1 − α)(γc + 1)).
 *
 * @param alpha acceptance rate per draft token
 * @param gamma draft tokens per step
 * @param c cost of a draft forward relative to a target forward
 * @returns predicted speedup over base decoding
 */
export function leviathanSpeedup(alpha: number, gamma: number, c: number): number {
  const tokens = alpha >= 1 ? gamma + 1 : (1 - alpha ** (gamma + 1)) / (1 - alpha);
  return tokens / (gamma * c + 1);
}

/**
 * The per-token acceptance α whose expected accepted count Σ_{i=1..γ} α^i equals `mean`.
 *
 * @param mean mean accepted draft tokens per step
 * @param gamma draft tokens per step
 * @returns α in [0, 1]
 */
export function alphaFromAccepted(mean: number, gamma: number): number {
  let lo = 0, hi = 1;
  for (let i = 0; i < 60; i++) {
    const a = (lo + hi) / 2;
    let s = 0;
    for (let k = 1; k <= gamma; k++) s += a ** k;
    if (s < mean) lo = a;
    else hi = a;
  }
  return (lo + hi) / 2;
}

/**
 * The suite's cases for this adapter.
 *
 * @param gpu the runtime
 * @param quick the short suite (CI smoke test)
 * @param modelsDir a folder with `target.safetensors` and `draft.safetensors` (a train.ts run) to
 *   decode with trained models; random ones otherwise (low acceptance)
 * @param reference use the reference config (dim 512, depth 10 / 2, batch 4 × 512) even on a
 *   software adapter (slow there: seconds per training step)
 * @param decode sizes instead of the adapter's defaults (e.g. the decodes' `prompt` and `seqLen`
 *   128 → 512, or `trainBatch` 4 × `trainSeq` 512 and the `target`/`draft` shapes of a preset, to
 *   compare with bench/torch_baseline.py on a software adapter), and the speculative decodes'
 *   `draftThreshold` (adaptive draft length; default 0, a fixed gamma)
 * @returns the cases
 */
export function benchCases(
  gpu: Gpu,
  quick = false,
  modelsDir?: string,
  reference = !gpu.isSoftware,
  decode: Partial<SuiteSizes> & { draftThreshold?: number } = {},
): BenchCase[] {
  const { draftThreshold = 0, ...sizes } = decode;
  const S = { ...suiteSizes(gpu, quick, reference), ...sizes };
  const cases: BenchCase[] = [];
  const timer = new GpuTimer(gpu);
  const rand = (n: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
  const reps = gpu.isSoftware ? 3 : 20;

  // --- kernels: GEMM variants at square sizes, GEMV at the default model's decode shapes
  for (const n of S.gemm) {
    for (const [name, fn] of [["NT", matmulNT], ["NN", matmulNN], ["TN", matmulTN]] as const) {
      cases.push({
        group: `gemm ${n}³`,
        name: `matmul${name} ${n}³`,
        baseline: name === "NT",
        setup: () => {
          const a = gpu.upload("bench a", rand(n * n)), b = gpu.upload("bench b", rand(n * n));
          const c = gpu.buffer("bench c", n * n * 4);
          const d = fn(gpu, { a, b, c, M: n, N: n, K: n });
          return Promise.resolve(() => timePass(gpu, [d], reps, timer));
        },
        rates: (s) => ({ gflops: (2 * n ** 3) / (s.gpuMs * 1e6) }),
      });
    }
  }
  // the decode-relevant rectangle of the target: (2048 × 512) · (512 × 1536)
  {
    const [M, K, N] = [2048, 512, 1536];
    cases.push({
      group: "gemm 2048×512×1536",
      name: "matmulNT 2048×512×1536",
      baseline: true,
      setup: () => {
        const a = gpu.upload("bench a", rand(M * K)), b = gpu.upload("bench b", rand(N * K));
        const c = gpu.buffer("bench c", M * N * 4);
        const d = matmulNT(gpu, { a, b, c, M, N, K });
        return Promise.resolve(() => timePass(gpu, [d], reps, timer));
      },
      rates: (s) => ({ gflops: (2 * M * N * K) / (s.gpuMs * 1e6) }),
    });
  }
  const C = S.dim;
  for (const [N, K] of [[3 * C, C], [4 * C, C], [C, 4 * C], [256, C]]) {
    cases.push({
      group: "gemv (decode, M=1)",
      name: `gemv 1×${K} · ${K}×${N}`,
      baseline: N === 3 * C,
      setup: () => {
        const a = gpu.upload("bench x", rand(K)), b = gpu.upload("bench W", rand(N * K));
        const c = gpu.buffer("bench y", N * 4);
        const d = gemvNT(gpu, { a, b, c, M: 1, N, K });
        return Promise.resolve(() => timePass(gpu, [d], reps * 10, timer));
      },
      rates: (s) => ({ gbps: ((N * K + K + N) * 4) / (s.gpuMs * 1e6) }),
    });
  }

  // --- attention: prefill (training shape) and cached decode
  const H = S.target.heads ?? 8, D = S.target.dimHead ?? 64;
  for (
    const [label, B, n, startAt] of [["prefill", 1, S.trainSeq, 0], [
      "decode",
      8,
      1,
      S.seqLen - 1,
    ]] as const
  ) {
    cases.push({
      group: "attention",
      name: `attention ${label} B${B} n${n} start ${startAt}`,
      baseline: label === "prefill",
      setup: () => {
        const maxLen = Math.max(S.trainSeq, S.seqLen) + 1, T = B * n;
        const qkv = gpu.upload("bench qkv", rand(T * 3 * H * D));
        const kv = gpu.upload("bench kv", rand(2 * B * H * maxLen * D));
        const start = gpu.upload("bench start", new Uint32Array(B).fill(startAt));
        const out = gpu.buffer("bench out", T * H * D * 4),
          lse = gpu.buffer("bench lse", B * H * n * 4);
        const d = [
          kvWrite(gpu, { qkv, kv, start, B, n, H, D, maxLen }),
          attention(gpu, { qkv, kv, start, out, lse, B, n, H, D, maxLen }),
        ];
        return Promise.resolve(() => timePass(gpu, d, reps, timer));
      },
      rates: (s) => {
        const keys = startAt + (n + 1) / 2;
        return { gflops: (4 * B * H * n * keys * D) / (s.gpuMs * 1e6) };
      },
    });
  }

  // --- one training step per model (forward, backward, clip, Adam), phases timed apart
  for (const [role, cfg] of [["target", S.target], ["draft", S.draft]] as const) {
    cases.push({
      group: "training step",
      name: `train step ${role} depth ${cfg.depth} B${S.trainBatch}×${S.trainSeq}`,
      baseline: role === "target",
      setup: () => {
        const model = Decoder.create(gpu, { ...cfg, maxSeqLen: S.trainSeq + 1 }, { seed: 1 });
        const trainer = new Trainer(model, {
          batch: S.trainBatch,
          seqLen: S.trainSeq + 1,
          lr: 1e-4,
          clipNorm: 0.5,
        });
        const rows = Array.from(
          { length: S.trainBatch },
          (_, b) => Array.from({ length: S.trainSeq + 1 }, (_, i) => (b * 31 + i * 7) % 256),
        );
        const lp = model.trainingPlan(S.trainBatch, S.trainSeq + 1);
        return Promise.resolve(async () => {
          // the real step: one submission, its passes timestamped
          const t0 = performance.now();
          await trainer.result(trainer.step([rows], timer));
          const wallMs = performance.now() - t0;
          const gpuMs = await timer.read();
          // phase breakdown: the same dispatches again, each phase in a pass of its own
          const fwd = await timePass(gpu, lp.dispatches, 1, timer);
          const bwd = await timePass(gpu, lp.backward!, 1, timer);
          trainer.optimizer.prepareStep();
          const opt = await timePass(gpu, trainer.optimizer.stepDispatches(), 1, timer);
          return {
            gpuMs,
            wallMs,
            metrics: { forwardMs: fwd.gpuMs, backwardMs: bwd.gpuMs, optimizerMs: opt.gpuMs },
          };
        });
      },
      rates: (s) => ({
        tokensPerSec: (S.trainBatch * S.trainSeq) / (s.gpuMs / 1000),
        wallTokensPerSec: (S.trainBatch * S.trainSeq) / (s.wallMs / 1000),
      }),
    });
  }

  // --- decoding: base vs speculative (gamma 1..8), batch 1 and 8
  let models: { target: Decoder; draft: Decoder; c: Record<number, number> } | undefined;
  const getModels = async () => {
    if (models) return models;
    const maxSeqLen = S.seqLen + 16;
    const load = async (name: string) =>
      await Decoder.fromSafetensors(gpu, await Deno.readFile(`${modelsDir}/${name}.safetensors`), {
        maxSeqLen,
        label: name,
        source: `${modelsDir}/${name}.safetensors`,
      });
    const target = modelsDir
      ? await load("target")
      : Decoder.create(gpu, { ...S.target, maxSeqLen }, { seed: 1, label: "target" });
    const draft = modelsDir
      ? await load("draft")
      : Decoder.create(gpu, { ...S.draft, maxSeqLen }, { seed: 2, label: "draft" });
    // cost ratio c: one draft decode forward over one target decode forward (n = 1)
    const c: Record<number, number> = {};
    for (const B of [1, 8]) {
      // alternate the two models and keep each one's fastest of 5 rounds: on a shared machine
      // one timing of each swings the ratio by ±30%
      const plans = [draft, target].map((m) => {
        const cache = m.createCache(B, S.seqLen + 16);
        const plan = m.forwardPlan(cache, 1);
        gpu.write(plan.start, new Uint32Array(B).fill(S.seqLen >> 1));
        return { cache, plan };
      });
      // by wall time, not timestamps: bench/wall_time.ts says why
      const best = await wallMsPerRun(gpu, plans.map((p) => p.plan.dispatches));
      for (const { cache } of plans) cache.destroy();
      c[B] = best[0] / best[1];
    }
    return models = { target, draft, c };
  };
  const prompt = (B: number) =>
    Array.from(
      { length: B },
      (_, b) => Array.from({ length: S.prompt }, (_, i) => (b * 13 + i * 5) % 256),
    );
  for (const B of [1, 8]) {
    const gammas = quick ? [1, 4] : [1, 2, 3, 4, 5, 6, 7, 8];
    const group = `decoding B${B}`;
    cases.push({
      group,
      name: `base decoding B${B}`,
      baseline: true,
      setup: async () => {
        const { target } = await getModels();
        return async () => {
          const r = await baseDecoding(target, prompt(B), S.seqLen, { seed: 7, timer });
          return {
            gpuMs: r.gpuMs ?? r.wallMs,
            wallMs: r.wallMs,
            metrics: {
              generated: r.generated,
              readbacksPerToken: r.readbacksPerToken,
              // per token of a row (a step serves every row), prefill and sampling included
              dispatchesPerToken: r.dispatches / (r.generated / B),
            },
          };
        };
      },
      rates: (s) => ({
        tokensPerSec: s.metrics!.generated / (s.gpuMs / 1000),
        wallTokensPerSec: s.metrics!.generated / (s.wallMs / 1000),
      }),
    });
    for (const gamma of gammas) {
      cases.push({
        group,
        name: `speculative decoding B${B} gamma ${gamma}` +
          (draftThreshold > 0 ? ` threshold ${draftThreshold}` : ""),
        setup: async () => {
          const { target, draft, c } = await getModels();
          return async () => {
            const r = await speculativeDecoding(target, draft, prompt(B), S.seqLen, {
              gamma,
              seed: 7,
              timer,
              draftThreshold,
            });
            // α from the accepted drafts that were emitted (acceptedMeanRaw also counts drafts
            // accepted past seqLen, which inflates α near the end of each row)
            const alpha = alphaFromAccepted(r.acceptedMean, gamma);
            return {
              gpuMs: r.gpuMs ?? r.wallMs,
              wallMs: r.wallMs,
              metrics: {
                generated: r.generated,
                readbacksPerToken: r.readbacksPerToken,
                dispatchesPerToken: r.dispatches / (r.generated / B),
                acceptedMean: r.acceptedMean,
                acceptedMeanRaw: r.acceptedMeanRaw,
                draftedMean: r.draftedMean, // < gamma with a draft threshold
                alpha,
                c: c[B],
                predictedSpeedup: leviathanSpeedup(alpha, gamma, c[B]),
              },
            };
          };
        },
        rates: (s) => ({
          tokensPerSec: s.metrics!.generated / (s.gpuMs / 1000),
          wallTokensPerSec: s.metrics!.generated / (s.wallMs / 1000),
        }),
      });
    }
  }
  return cases;
}
