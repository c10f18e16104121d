/**
 * What the decoders return ({@link DecodingResult}, {@link SpeculativeResult}) and their costs per
 * generated token ({@link decodingCosts}), so base and speculative decoding compare on the same
 * footing.
 *
 * @module
 */

/** What {@link baseDecoding} returns. */
export interface DecodingResult {
  /** The generated tokens of each row (seqLen − prompt length each; the prompt excluded). */
  tokens: number[][];
  /** Steps until every row finished (the most any row needed). */
  steps: number;
  /** Steps encoded and run on the GPU (≥ steps: the last chunk may idle on finished rows). */
  stepsEncoded: number;
  /** Forward passes of the (target) model over the batch, prefill included. */
  targetForwards: number;
  /** GPU→host readbacks during the call (one per chunk). */
  readbacks: number;
  /** Readbacks per generated token (over all rows). */
  readbacksPerToken: number;
  /** Command buffers submitted (one per chunk). */
  submits: number;
  /** Compute dispatches encoded (prefill included). */
  dispatches: number;
  /** Generated tokens over all rows: batch × (seqLen − prompt length). */
  generated: number;
  /** GPU time in milliseconds of all submissions, when a timer was given. */
  gpuMs?: number;
  /** Wall time of the call in milliseconds. */
  wallMs: number;
}

/** What {@link speculativeDecoding} returns. */
export interface SpeculativeResult extends DecodingResult {
  /**
   * Forward passes of the draft model over the batch, prefill included (encoded: with
   * `draftThreshold` some do no work on the GPU; see `draftedMean`).
   */
  draftForwards: number;
  /**
   * Mean accepted draft tokens that were emitted, per step (over active row-steps): a draft token
   * accepted past seqLen is cut off, so it is not counted (at most the tokens the row still had
   * room for). This is what speeds decoding up; use it for the acceptance rate α.
   */
  acceptedMean: number;
  /**
   * The reference's `num_accepted`: mean accepted draft tokens per step, including those past
   * seqLen that were never emitted (≥ acceptedMean; equal when no step ran into seqLen).
   */
  acceptedMeanRaw: number;
  /**
   * For each draft position i, the fraction of active row-steps whose x_{i+1} was accepted and
   * emitted (they sum to acceptedMean).
   */
  acceptedPerPosition: number[];
  /** Steps each row was active. */
  rowSteps: number[];
  /** Draft tokens per step (the most, with `draftThreshold`). */
  gamma: number;
  /**
   * Mean draft tokens per active row-step: gamma with a fixed draft length, less with
   * `draftThreshold` (the draft's cost per step is about c · draftedMean, c the cost of one draft
   * forward relative to the target's; forwards are skipped only once every row of the batch has
   * stopped, and `draftForwards` counts those encoded).
   */
  draftedMean: number;
}
/** Per-generated-token costs of a decoding result, for benchmarks and reports. */
export interface DecodingCosts {
  /** Generated tokens over all rows. */
  tokens: number;
  /** Readbacks per generated token. */
  readbacksPerToken: number;
  /** Compute dispatches per generated token. */
  dispatchesPerToken: number;
  /** Target forward passes per generated token per row (batch forwards / tokens per row). */
  targetForwardsPerToken: number;
  /** Draft forward passes per generated token per row (0 for base decoding). */
  draftForwardsPerToken: number;
  /** GPU milliseconds per generated token (when timed). */
  gpuMsPerToken?: number;
  /** Wall milliseconds per generated token. */
  wallMsPerToken: number;
}

/**
 * Per-token costs of a {@link baseDecoding} or {@link speculativeDecoding} result, so the two
 * compare on the same footing.
 *
 * @param r a decoding result
 * @returns costs per generated token
 * @example
 * ```ts
 * import { baseDecoding, Decoder, decodingCosts, requestGpu } from "@x/specdec";
 * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 64, depth: 2 });
 * console.log(decodingCosts(await baseDecoding(model, [[1, 2]], 32)));
 * ```
 */
export function decodingCosts(r: DecodingResult | SpeculativeResult): DecodingCosts {
  const perRow = r.generated / r.tokens.length;
  return {
    tokens: r.generated,
    readbacksPerToken: r.readbacksPerToken,
    dispatchesPerToken: r.dispatches / r.generated,
    targetForwardsPerToken: r.targetForwards / perRow,
    draftForwardsPerToken: ("draftForwards" in r ? r.draftForwards : 0) / perRow,
    gpuMsPerToken: r.gpuMs === undefined ? undefined : r.gpuMs / r.generated,
    wallMsPerToken: r.wallMs / r.generated,
  };
}
