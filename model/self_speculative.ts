/**
 * Self-speculative decoding: `speculativeDecoding(model, model, …)` with a model that has an exit
 * head (`DecoderConfig.earlyExitLayer` = k). The draft is the model's own blocks [0, k), the exit
 * branch's extra blocks and the exit head; it shares the model's KV cache for blocks < k (one
 * cache, whose extra layers after the model's blocks hold the extra blocks' keys and values).
 *
 * The step is speculative decoding's (decoding.ts), with the same sampling and acceptance kernels,
 * and one difference in the feeds: the draft needs no look-back, since the shared cache already
 * holds every position below `pos − 1` that the verification wrote, so each step starts with a
 * one-token feed of `seq[pos − 1]` at `pos − 1` (the acceptance kernel's two-token feed goes to a
 * scratch buffer). The verification forward runs every block over the γ + 1 positions
 * `pos − 1 …`, so it rewrites the draft's keys and values of blocks < k there before any
 * attention reads them: the cache below `pos − 1` only ever holds what verification (or the
 * prefill) wrote, and exactness does not depend on the draft computing the same bits. With extra
 * blocks, verification (and the prefill) also runs them on a copy of the stream after block
 * k − 1, so their cache holds every verified position too.
 *
 * Not done yet: verification recomputes blocks < k for the γ positions the draft already ran;
 * keeping the draft's stream after block k − 1 would let it run only blocks [k, depth) there.
 *
 * @module
 */
import { seqFeedKernel, type StateLayout } from "../kernels/decode_state.ts";
import { draftStepKernel } from "../kernels/decode_step.ts";
import type { SamplingOptions } from "../kernels/sampling.ts";
import { type AcceptKernel, speculativeStatsWidth } from "../kernels/speculative.ts";
import type { Decoder } from "./decoder.ts";
import {
  cleanupList,
  type DecodingEngine,
  initialState,
  type StepPart,
} from "./decoding_engine.ts";
import { type SpeculativeOptions, validateSpeculative } from "./decoding_options.ts";
import { draftGate, draftParts } from "./draft_gate.ts";

/**
 * Builds the engine of self-speculative decoding (see the module doc): per step a one-token feed,
 * γ draft forwards of the exit plan (blocks < k, extra blocks, exit head), each followed by its
 * sampling kernel, the verification forward of γ + 1 tokens and the acceptance kernel.
 *
 * @param model the model with an exit head, target and draft at once
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options gamma, temperature, filterThres, lenience, seed and draftThreshold
 * @param accept the acceptance kernel's builder (tests pass a deliberately broken one)
 * @returns the engine; call `destroy()` when done
 * @throws Error when the model has no exit head, or on bad input as `speculativeDecoding`
 */
export function selfSpeculativeEngine(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions,
  accept: AcceptKernel,
): DecodingEngine {
  const { temperature, filterThres, seed, lenience, gamma, draftThreshold, B, P } =
    validateSpeculative(model, model, prompt, seqLen, options);
  if (model.config.earlyExitLayer === 0) {
    throw new Error(
      "specdec: speculativeDecoding with the same model as target and draft needs a model with " +
        "an exit head (config.earlyExitLayer ≥ 1): its first layers and exit head are the draft",
    );
  }
  const gpu = model.gpu, L = seqLen, V = model.config.numTokens, G = gamma;
  const adaptive = draftThreshold > 0; // 0: the fixed-gamma kernels
  const layout: StateLayout = {
    batch: B,
    seqLen: L,
    statsWidth: speculativeStatsWidth(G, adaptive),
  };
  const label = "self-speculative decoding";
  // in-flight writes reach position L + γ − 1 for rows about to finish
  const maxLen = L + G + 1;
  // verification runs the extra blocks too, so their cache keeps up with the shared one
  const verifyKind = model.config.earlyExitExtraBlocks > 0 ? "verify" : "full";
  const cleanup = cleanupList();
  try {
    const buffer = (name: string, bytes: number) => {
      const b = gpu.buffer(`${label} ${name}`, bytes);
      cleanup.add(() => b.destroy());
      return b;
    };
    const state = initialState(gpu, layout, prompt, label);
    cleanup.add(() => state.destroy());
    const q = buffer(`q (${B}, ${G}, ${V})`, B * G * V * 4);
    const drafts = buffer(`draft tokens u32 (${B}, ${G})`, B * G * 4);
    // adaptive draft length: each row's drafts this step (k | STOPPED), decode_step.ts
    const drafted = adaptive ? buffer(`drafted u32 (${B})`, B * 4) : undefined;
    const adapt = adaptive ? { drafted, threshold: draftThreshold } : {};
    // the acceptance kernel's two-token draft feed, unused here (see the module doc)
    const unusedTokens = buffer(`unused feed tokens u32 (${B}, 2)`, B * 2 * 4);
    const unusedStart = buffer(`unused feed start u32 (${B})`, B * 4);
    const { cache, release, adopt } = model.caches.acquire(B, maxLen);
    cleanup.add(release);
    const d1 = model.forwardPlan(cache, 1, false, "draft");
    const tp = model.forwardPlan(cache, G + 1, false, verifyKind);
    [d1, tp].forEach(adopt); // freed with the cache if the pool evicts it
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const common = { ...sampling, state, layout, q, draft: drafts, gamma: G, seed };
    // the step's first draft forward: seq[pos − 1] at pos − 1 (the cache holds everything below)
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: d1.tokens,
      start: d1.start,
      n: 1,
      back: 1,
    });
    const parts: StepPart[] = [{ name: "draft feed", dispatches: [feed] }];
    const draftStep = (i: number) =>
      draftStepKernel(gpu, {
        ...common,
        logits: d1.logits,
        n: 1,
        i,
        ...adapt,
        ...(i < G
          ? { feedTokens: d1.tokens, feedStart: d1.start }
          : { targetTokens: tp.tokens, targetStart: tp.start }),
      });
    const gate = adaptive && G > 1 ? draftGate(gpu, state, layout, drafted!, d1, B) : undefined;
    if (gate) cleanup.add(() => gate.counts.destroy());
    parts.push(...draftParts(d1.dispatches, draftStep, 1, G, gate));
    parts.push(
      { name: `target forward n=${G + 1}`, dispatches: tp.dispatches },
      {
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
          feedTokens: unusedTokens,
          feedStart: unusedStart,
          drafted,
        })],
      },
    );
    // the prefill: the first P − 1 prompt tokens through every block (and the extra blocks)
    const prefill = [];
    if (P > 1) {
      const plan = model.forwardPlan(cache, P - 1, false, verifyKind);
      adopt(plan);
      prefill.push(
        seqFeedKernel(gpu, {
          state,
          layout,
          tokens: plan.tokens,
          start: plan.start,
          n: P - 1,
          back: P,
        }),
        ...plan.dispatches,
      );
    }
    return {
      gpu,
      label,
      layout,
      promptLen: P,
      state,
      prefill,
      step: parts.flatMap((x) => x.dispatches),
      parts,
      maxRate: G + 1,
      modelNames: { target: "the model", draft: "the model's exit head (its draft)" },
      destroy: cleanup.run,
    };
  } catch (e) {
    cleanup.run();
    throw e;
  }
}
