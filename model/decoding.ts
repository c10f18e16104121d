/**
 * Decoding: {@link baseDecoding} (one target forward per token) and {@link speculativeDecoding}
 * (Leviathan, Kalman and Matias 2022, arXiv 2211.17192, Algorithm 1: γ draft forwards, one
 * target forward, accept/reject on the GPU), both with the same engineering so their costs
 * compare fairly.
 *
 * Everything a step needs lives in GPU buffers: one u32 state buffer holds each row's current
 * length `pos`, its tokens `seq (B, seqLen)` and counters `stats`; kernels read positions from
 * it, so the host encodes the same fixed list of dispatches for every step, a chunk of steps per
 * submission, and reads the state back once per chunk while the next chunk already runs
 * (decoding_engine.ts). Rows advance at their own rate; finished rows (pos = seqLen) do nothing;
 * rejected tokens leave both KV caches implicitly, since the next forward of a row starts at its
 * new `pos − 1`.
 *
 * Invariant at the start of a step: the target cache holds positions < pos − 1 (the last token
 * is pending), the draft cache positions < pos − 2, and the first forward of the step is already
 * fed: each step's last kernel (sampling, or acceptance) writes the next step's input tokens and
 * start positions, so a step has no feed dispatches (the prefill feeds the first step).
 *
 * Per step: base decoding runs the target's one-token forward and one sampling kernel;
 * speculative decoding runs γ draft forwards (the first over 2 tokens: after a step that
 * accepted everything, the draft has not seen x_γ yet) each followed by its sampling kernel,
 * the target's verification forward over γ + 1 tokens, and one acceptance kernel that computes
 * the target's probabilities only for the rows it reads.
 *
 * This module builds the two engines and holds the public calls; options and their validation
 * are in decoding_options.ts, results and costs in decoding_results.ts.
 *
 * @module
 */
import { seqFeedKernel, type StateLayout } from "../kernels/decode_state.ts";
import { baseStepKernel, draftStepKernel } from "../kernels/decode_step.ts";
import type { SamplingOptions } from "../kernels/sampling.ts";
import { type AcceptKernel, acceptKernel, speculativeStatsWidth } from "../kernels/speculative.ts";
import type { Decoder, ForwardPlan } from "./decoder.ts";
import {
  cleanupList,
  decode,
  type DecodingEngine,
  initialState,
  prefillDispatches,
  type StepPart,
} from "./decoding_engine.ts";
import {
  type DecodingOptions,
  type SpeculativeOptions,
  validateBase,
  validateSpeculative,
} from "./decoding_options.ts";
import type { DecodingResult, SpeculativeResult } from "./decoding_results.ts";
import { selfSpeculativeEngine } from "./self_speculative.ts";
import { draftGate, draftParts, speculativeBuffers } from "./speculative_parts.ts";

export type { DecodingEngine, StepPart } from "./decoding_engine.ts";
export type { DecodingOptions, SpeculativeOptions } from "./decoding_options.ts";
export {
  type DecodingCosts,
  decodingCosts,
  type DecodingResult,
  type SpeculativeResult,
} from "./decoding_results.ts";

/**
 * Builds the engine of {@link baseDecoding}: per step, one target forward of one token per row
 * and one kernel that samples (filtered, tempered) into the state and feeds the next step.
 *
 * @param model the model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options temperature, filterThres and seed (the rest is ignored here)
 * @returns the engine; call `destroy()` when done
 * @throws Error on bad input, as {@link baseDecoding}
 */
export function baseDecodingEngine(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: DecodingOptions = {},
): DecodingEngine {
  const { temperature, filterThres, seed, B, P } = validateBase(model, prompt, seqLen, options);
  const gpu = model.gpu, L = seqLen, V = model.config.numTokens;
  const layout: StateLayout = { batch: B, seqLen: L, statsWidth: 1 };
  const label = "base decoding";
  const cleanup = cleanupList();
  try {
    const state = initialState(gpu, layout, prompt, label);
    cleanup.add(() => state.destroy());
    const { cache, release, adopt } = model.caches.acquire(B, L);
    cleanup.add(release);
    const plan = model.forwardPlan(cache, 1);
    adopt(plan); // freed with the cache if the pool evicts it
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const parts: StepPart[] = [
      { name: "target forward n=1", dispatches: plan.dispatches },
      {
        // samples, and feeds the next step's forward (no feed dispatch per step)
        name: "sample",
        dispatches: [baseStepKernel(gpu, {
          ...sampling,
          logits: plan.logits,
          state,
          layout,
          n: 1,
          seed,
          feedTokens: plan.tokens,
          feedStart: plan.start,
        })],
      },
    ];
    // the first step's feed: the prompt's last token
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: plan.tokens,
      start: plan.start,
      n: 1,
      back: 1,
    });
    return {
      gpu,
      label,
      layout,
      promptLen: P,
      state,
      prefill: [...prefillDispatches(model, cache, state, layout, P, adopt), feed],
      step: parts.flatMap((p) => p.dispatches),
      parts,
      maxRate: 1,
      destroy: cleanup.run,
    };
  } catch (e) {
    cleanup.run();
    throw e;
  }
}

/**
 * Autoregressive sampling like the reference's `base_decoding`: one target forward (one token per
 * row) per step, top-k filter, temperature and categorical sampling on the GPU.
 *
 * @param model the model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included (> prompt length, ≤ the model's maxSeqLen)
 * @param options temperature (0 = greedy), filterThres, seed, chunking, streaming and timing
 * @returns the generated tokens and the cost counters
 * @throws Error on bad input (a prompt that is not `number[][]`, empty or ragged, tokens out of
 *   range, seqLen too small or too large, bad sampling options); and, at the readback after the
 *   step that met them, when the model's logits cannot be sampled (NaN; +Inf unless temperature
 *   is 0; all −Inf): the error names the row, its position and step. No token is ever drawn from
 *   such logits (the row is stopped on the GPU, like PyTorch's `multinomial` refusing them).
 * @example
 * ```ts
 * import { baseDecoding, Decoder, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 2 }, { seed: 0 });
 * const out = await baseDecoding(model, [[72, 101]], 16, { temperature: 0 });
 * console.log(out.tokens[0].length, out.readbacksPerToken); // 14 …
 * ```
 */
export async function baseDecoding(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: DecodingOptions = {},
): Promise<DecodingResult> {
  return await decode<DecodingResult>(
    "baseDecoding",
    model.gpu,
    seqLen,
    options,
    () => baseDecodingEngine(model, prompt, seqLen, options),
    () => ({}),
  );
}

/**
 * Builds the engine of {@link speculativeDecoding}: per step, γ draft forwards each followed by
 * its sampling kernel, the target's verification forward of γ + 1 tokens per row and the
 * acceptance kernel (which computes the target probabilities it needs from the logits). With an
 * adaptive draft length (draftThreshold > 0) a gate kernel after draft steps 1..γ − 1 makes the
 * next draft forward and sampling indirect dispatches of zero workgroups once every row stopped.
 *
 * @param target the large model whose law the output follows
 * @param draft the small model proposing tokens
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options gamma, temperature, filterThres, lenience and seed
 * @param accept the acceptance kernel's builder (tests pass a deliberately broken one)
 * @returns the engine; call `destroy()` when done
 * @throws Error on bad input, as {@link speculativeDecoding}
 */
export function speculativeDecodingEngine(
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions = {},
  accept: AcceptKernel = acceptKernel,
): DecodingEngine {
  // a model with an exit head as its own draft: the exit head on the shared KV cache
  // (self_speculative.ts); without one, the same model is an ordinary (always accepted) draft
  if (draft === target && target.config.earlyExitLayer > 0) {
    return selfSpeculativeEngine(target, prompt, seqLen, options, accept);
  }
  const { temperature, filterThres, seed, lenience, gamma, draftThreshold, B, P } =
    validateSpeculative(target, draft, prompt, seqLen, options);
  const gpu = target.gpu, L = seqLen, V = target.config.numTokens, G = gamma;
  const adaptive = draftThreshold > 0; // 0: today's fixed-gamma kernels, unchanged
  const layout: StateLayout = {
    batch: B,
    seqLen: L,
    statsWidth: speculativeStatsWidth(G, adaptive),
  };
  const label = "speculative decoding";
  // in-flight writes reach position L + γ − 1 for rows about to finish
  const maxLen = L + G + 1;
  const cleanup = cleanupList();
  try {
    const { state, q, drafts, drafted, adapt } = speculativeBuffers(
      gpu,
      label,
      layout,
      prompt,
      G,
      V,
      draftThreshold,
      cleanup,
    );
    const { cache: tc, release: releaseT, adopt: adoptT } = target.caches.acquire(B, maxLen);
    cleanup.add(releaseT);
    const { cache: dc, release: releaseD, adopt: adoptD } = draft.caches.acquire(B, maxLen);
    cleanup.add(releaseD);
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const d2 = draft.forwardPlan(dc, 2), d1 = draft.forwardPlan(dc, 1);
    const tp = target.forwardPlan(tc, G + 1);
    [d2, d1].forEach(adoptD); // freed with the caches if the pools evict them
    adoptT(tp);
    const common = { ...sampling, state, layout, q, draft: drafts, gamma: G, seed };
    // Draft step i samples x_i and feeds the next forward: the next draft step's, or (the last
    // one) the target's verification; acceptance feeds the next step's first draft forward, which
    // re-feeds seq[pos − 2] (idempotent) and feeds seq[pos − 1]. No feed dispatches per step.
    const draftStep = (i: number, plan: ForwardPlan) =>
      draftStepKernel(gpu, {
        ...common,
        logits: plan.logits,
        n: plan.n,
        i,
        ...adapt,
        ...(i < G
          ? { feedTokens: d1.tokens, feedStart: d1.start }
          : { targetTokens: tp.tokens, targetStart: tp.start }),
      });
    const parts: StepPart[] = [
      { name: "draft forward n=2", dispatches: d2.dispatches },
      { name: "draft sample", dispatches: [draftStep(1, d2)] },
    ];
    const gate = adaptive && G > 1 ? draftGate(gpu, state, layout, drafted!, d1, B) : undefined;
    if (gate) cleanup.add(() => gate.counts.destroy());
    parts.push(...draftParts(d1.dispatches, (i) => draftStep(i, d1), 2, G, gate));
    parts.push(
      { name: `target forward n=${G + 1}`, dispatches: tp.dispatches },
      {
        // p_i only for the rows acceptance reads, from the target's logits: no probs dispatch
        name: "accept",
        dispatches: [accept(gpu, {
          ...sampling,
          state,
          layout,
          logits: tp.logits,
          q,
          draft: drafts,
          gamma: G,
          lenience,
          seed,
          feedTokens: d2.tokens,
          feedStart: d2.start,
          drafted,
        })],
      },
    );
    // the first step's draft feed
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: d2.tokens,
      start: d2.start,
      n: 2,
      back: 2,
    });
    return {
      gpu,
      label,
      layout,
      promptLen: P,
      state,
      prefill: [
        ...prefillDispatches(target, tc, state, layout, P, adoptT),
        ...prefillDispatches(draft, dc, state, layout, P, adoptD),
        feed,
      ],
      step: parts.flatMap((x) => x.dispatches),
      parts,
      maxRate: G + 1,
      modelNames: { target: "the target model", draft: "the draft model" },
      destroy: cleanup.run,
    };
  } catch (e) {
    cleanup.run();
    throw e;
  }
}

/**
 * Speculative decoding (Leviathan et al. 2022, Algorithm 1) as in the reference's
 * `speculative_decoding`: each step the draft samples γ tokens x_1..x_γ from q (filtered,
 * tempered), the target scores all γ + 1 positions in one forward, and each row accepts x_i while
 * `r_i ≤ p(x_i) / (lenience · q(x_i))`; at the first rejection it samples from
 * `norm(max(0, p − q))`, and if all γ pass it samples a bonus token from p. With lenience 1 the
 * output has exactly the target's law; temperature 0 gives exactly the target's greedy output.
 * Rows advance at their own rates with no realignment; rejected tokens leave both KV caches by
 * rolling each row's position back. With `draftThreshold` > 0 each row drafts only until its
 * draft is unsure (see {@link SpeculativeOptions}) and is verified with γ = its draft length.
 *
 * @param target the large model whose law the output follows
 * @param draft the small model proposing tokens (same numTokens, same GPU)
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included (> prompt length, ≤ both models' maxSeqLen)
 * @param options gamma, temperature (0 = greedy), filterThres, lenience, draftThreshold (an
 *   adaptive draft length: a row stops drafting after a draft token of probability under it),
 *   seed, chunking, streaming and timing
 * @returns the generated tokens, acceptance statistics (and `draftedMean`) and cost counters
 * @throws Error on bad input (gamma, temperature, filterThres, lenience, draftThreshold,
 *   mismatched models,
 *   a prompt that is not `number[][]`, empty or ragged, tokens out of range, seqLen too small or
 *   too large); and, at the readback after the step that met them, when the draft's or the
 *   target's logits cannot be sampled (NaN; +Inf unless temperature is 0; all −Inf): the error
 *   names the model, the row, its position and step (and the draft token or verification row).
 *   No token is ever drawn from such logits.
 * @example
 * ```ts
 * import { Decoder, requestGpu, speculativeDecoding } from "@x/specdec";
 * const gpu = await requestGpu();
 * const target = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 4 }, { seed: 0 });
 * const draft = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 1 }, { seed: 1 });
 * const out = await speculativeDecoding(target, draft, [[72, 101]], 32, { gamma: 4 });
 * console.log(out.tokens[0].length, out.acceptedMean, out.acceptedMeanRaw, out.targetForwards);
 * ```
 */
export async function speculativeDecoding(
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions = {},
): Promise<SpeculativeResult> {
  return await speculativeDecodingWith(acceptKernel, target, draft, prompt, seqLen, options);
}

/**
 * {@link speculativeDecoding} with another acceptance kernel: internal (not exported from
 * mod.ts), for the tests that prove the law tests reject a wrong sampler.
 *
 * @param accept the acceptance kernel's builder
 * @param target the large model
 * @param draft the small model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options as {@link speculativeDecoding}
 * @returns as {@link speculativeDecoding}
 */
export async function speculativeDecodingWith(
  accept: AcceptKernel,
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions = {},
): Promise<SpeculativeResult> {
  return await decode<SpeculativeResult>(
    "speculativeDecoding",
    target.gpu,
    seqLen,
    options,
    () => speculativeDecodingEngine(target, draft, prompt, seqLen, options, accept),
    (engine, run) => {
      const P = engine.promptLen, B = engine.layout.batch, W = engine.layout.statsWidth;
      const G = engine.maxRate - 1;
      // stats per row: [steps, accepted (emitted), acceptedRaw, acceptedAt[0..G), drafted?]
      const adaptive = W === speculativeStatsWidth(G, true);
      let rowStepsTotal = 0, accepted = 0, acceptedRaw = 0, drafted = 0;
      const at = new Array<number>(G).fill(0);
      for (let b = 0; b < B; b++) {
        rowStepsTotal += run.stats[b * W];
        accepted += run.stats[b * W + 1];
        acceptedRaw += run.stats[b * W + 2];
        for (let i = 0; i < G; i++) at[i] += run.stats[b * W + 3 + i];
        drafted += adaptive ? run.stats[b * W + 3 + G] : G * run.stats[b * W];
      }
      return {
        draftForwards: G * run.stepsEncoded + (P > 1 ? 1 : 0),
        acceptedMean: accepted / rowStepsTotal,
        acceptedMeanRaw: acceptedRaw / rowStepsTotal,
        acceptedPerPosition: at.map((a) => a / rowStepsTotal),
        rowSteps: run.rowSteps,
        gamma: G,
        draftedMean: drafted / rowStepsTotal,
      };
    },
  );
}
