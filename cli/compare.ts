/**
 * The decoding comparison of a run: from one validation prime, base decoding with the target and
 * speculative decoding with the target and the draft, both timed on the GPU (wall time too);
 * prints both texts and the speedup, and records them.
 *
 * @module
 */
import { GpuTimer } from "../kernels/timer.ts";
import { baseDecoding, speculativeDecoding, type SpeculativeResult } from "../model/decoding.ts";
import { log, record, type Run } from "./run.ts";
import { recordLosses } from "./train_step.ts";

/** Byte to printable character, as the reference: codes below 32 become a space. */
export const decodeTokens = (t: number[]): string =>
  t.map((c) => String.fromCharCode(Math.max(32, c))).join("");

/**
 * Compares base and speculative decoding after step `step`, with the same seed for both.
 *
 * @param run the run
 * @param step the step just run
 */
export async function compareDecodings(run: Run, step: number): Promise<void> {
  await recordLosses(run); // metrics stay in step order
  const c = run.config;
  const prime = run.samplers.gen.sample(1);
  const seed = c.seed * 1000003 + step;
  const timer = new GpuTimer(run.gpu);
  const base = await baseDecoding(run.target, prime, c.generateLen, { seed, timer });
  const draftThreshold = c.draftThreshold ?? 0;
  const spec = await speculativeDecoding(run.target, run.draft, prime, c.generateLen, {
    gamma: c.gamma,
    seed,
    timer,
    draftThreshold,
  });
  // with an exit head, the target is also its own draft (self-speculative decoding)
  const self = c.earlyExit > 0
    ? await speculativeDecoding(run.target, run.target, prime, c.generateLen, {
      gamma: c.gamma,
      seed,
      timer,
      draftThreshold,
    })
    : undefined;
  timer.destroy();
  // GPU time where the adapter has timestamps, wall time otherwise
  const [baseMs, specMs] = [base.gpuMs ?? base.wallMs, spec.gpuMs ?? spec.wallMs];
  const [baseWall, specWall] = [base.wallMs, spec.wallMs];
  const unit = timer.gpuTimed ? "GPU" : "wall";
  log(
    run,
    [
      "",
      `prime (${c.primeLen} bytes):`,
      decodeTokens(prime[0]),
      "*".repeat(100),
      "base decoding:",
      decodeTokens(base.tokens[0]),
      "",
      "spec decoding:",
      decodeTokens(spec.tokens[0]),
      "",
      `base decoding in: ${baseMs.toFixed(1)} ms ${unit} (${baseWall.toFixed(0)} ms wall)`,
      `spec decoding in: ${specMs.toFixed(1)} ms ${unit} (${specWall.toFixed(0)} ms wall)`,
      `speedup: ${(baseMs / specMs).toFixed(2)}x ${unit} time, ${
        (baseWall / specWall).toFixed(2)
      }x wall`,
      `average num accepted: ${spec.acceptedMean.toFixed(2)} / ${c.gamma}` +
      (draftThreshold > 0 ? ` (drafted ${spec.draftedMean.toFixed(2)})` : ""),
      ...(self ? selfLines(self, baseMs, baseWall, unit, c.gamma, c.earlyExit) : []),
      "",
    ].join("\n"),
  );
  await record(run, {
    type: "generate",
    step,
    baseMs,
    specMs,
    baseWallMs: baseWall,
    specWallMs: specWall,
    speedup: baseMs / specMs,
    acceptedMean: spec.acceptedMean,
    gamma: c.gamma,
    ...(draftThreshold > 0 ? { draftThreshold, draftedMean: spec.draftedMean } : {}),
    ...(self
      ? {
        selfMs: self.gpuMs ?? self.wallMs,
        selfWallMs: self.wallMs,
        selfSpeedup: baseMs / (self.gpuMs ?? self.wallMs),
        selfAcceptedMean: self.acceptedMean,
      }
      : {}),
  });
}

/** The log lines of self-speculative decoding (the target drafting with its exit head). */
function selfLines(
  self: SpeculativeResult,
  baseMs: number,
  baseWall: number,
  unit: string,
  gamma: number,
  k: number,
): string[] {
  const ms = self.gpuMs ?? self.wallMs;
  return [
    "",
    `self-speculative decoding (exit head after layer ${k} as the draft):`,
    decodeTokens(self.tokens[0]),
    "",
    `self-spec decoding in: ${ms.toFixed(1)} ms ${unit} (${self.wallMs.toFixed(0)} ms wall)`,
    `self-spec speedup: ${(baseMs / ms).toFixed(2)}x ${unit} time, ${
      (baseWall / self.wallMs).toFixed(2)
    }x wall; average num accepted: ${self.acceptedMean.toFixed(2)} / ${gamma}`,
  ];
}
