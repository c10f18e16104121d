/**
 * Self-speculative decoding: `speculativeDecoding(model, model, …)` with a model that has an exit
 * head (`DecoderConfig.earlyExitLayer` = k). The draft is the model's own blocks [0, k), the exit
 * branch's extra blocks and the exit head; it shares the model's KV cache for blocks < k (one
 * cache, whose extra layers after the model's blocks hold the extra blocks' keys and values).
 *
 * The step is speculative decoding's (decoding.ts), with the same sampling and acceptance kernels,
 * and one difference in the feeds: the draft needs no look-back, since the shared cache already
 * holds every position below `pos − 1` that the verification wrote, so each step's first draft
 * forward takes one token, `seq[pos − 1]` at `pos − 1`, fed by the acceptance kernel of the step
 * before (`feedWidth` 1; after the prefill, by a feed kernel).
 *
 * Verification recomputes nothing the draft computed. Each one-token draft forward keeps its
 * stream after block k − 1 in its slot of `hidden (B, γ + 1, C)` (the verification plan's input
 * stream; slot = position − (pos − 1), stored by the epilogue of block k − 1's last GEMV on the
 * fused path (kernels/fused_linear.ts), else by the slot copy of kernels/hidden_slots.ts after
 * it): draft step i, whose input is x_{i−1}, fills slot i − 1. The one stream missing is the
 * last draft's: the last draft step's sampling kernel also feeds each row's last draft x_k (k = γ,
 * or the row's own draft count with an adaptive draft length) at its position, and the draft
 * forward's dispatches up to the exit head run it (blocks < k with the slot copy into slot k, the
 * extra blocks). Then the verification runs only blocks
 * [k, depth) and the final head over the γ + 1 positions (an `"upper"` plan).
 *
 * So the cache holds the draft forwards' keys and values for blocks < k and for the extra blocks
 * at every position `pos − 1 … pos − 1 + k` a row can accept, and the verification's for blocks
 * ≥ k. The target's logits at a position are still a function of the tokens up to it alone (each
 * position's blocks < k ran once, on its own token, over the cache below it), so the law and
 * greedy exactness hold whatever bits the one-token forward gives; on the fused path a row's
 * result does not depend on the forward's width, so they are the bits of a full verification too
 * (tests/early_exit_test.ts compares them).
 *
 * Rows that stopped drafting early (adaptive draft length) keep their feed at their last draft
 * x_k, so a later draft forward of theirs (while other rows draft) recomputes x_k at its position
 * and rewrites slot k with the same values; the tail forward always runs, so slot k is filled even
 * when every later draft forward was gated off. Their slots after k are stale: verification rows
 * after k read them, but a verification row attends only to positions up to its own, so rows ≤ k
 * (all the acceptance reads) are unaffected, and the keys and values the stale rows write lie
 * beyond the row's new `pos − 1`, rewritten before any later step reads them. Finished rows skip
 * the copies; their verification reads stale slots and nobody reads its result.
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
  prefillDispatches,
  type StepPart,
} from "./decoding_engine.ts";
import { type SpeculativeOptions, validateSpeculative } from "./decoding_options.ts";
import { draftGate, draftParts, speculativeBuffers } from "./speculative_parts.ts";
import { slotCopyKernel } from "../kernels/hidden_slots.ts";

/**
 * Builds the engine of self-speculative decoding (see the module doc): per step γ draft forwards
 * of the exit plan (blocks < k with the slot copy, extra blocks, exit head), each followed by its
 * sampling kernel (the last one also feeds the tail), the last draft's forward up to the exit
 * head, the verification forward of blocks [k, depth) over γ + 1 positions and the acceptance
 * kernel (which feeds the next step's first draft forward).
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
  // the prefill runs the extra blocks too, so their cache keeps up with the shared one
  const prefillKind = model.config.earlyExitExtraBlocks > 0 ? "verify" : "full";
  const C = model.config.dim;
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
    const { cache, release, adopt } = model.caches.acquire(B, maxLen);
    cleanup.add(release);
    const d1 = model.forwardPlan(cache, 1, false, "draft");
    const tp = model.forwardPlan(cache, G + 1, false, "upper");
    [d1, tp].forEach(adopt); // freed with the cache if the pool evicts it
    const sampling: SamplingOptions = { numTokens: V, temperature, filterThres };
    const common = { ...sampling, state, layout, q, draft: drafts, gamma: G, seed };
    // the first step's first draft forward: seq[pos − 1] at pos − 1 (the cache holds everything
    // below), fed after the prefill; the acceptance kernel feeds every later step's
    const feed = seqFeedKernel(gpu, {
      state,
      layout,
      tokens: d1.tokens,
      start: d1.start,
      n: 1,
      back: 1,
    });
    const parts: StepPart[] = [];
    const draftStep = (i: number) =>
      draftStepKernel(gpu, {
        ...common,
        logits: d1.logits,
        n: 1,
        i,
        ...adapt,
        ...(i < G ? { feedTokens: d1.tokens, feedStart: d1.start } : {
          targetTokens: tp.tokens,
          targetStart: tp.start,
          // and the tail forward's: each row's last draft at its position
          tailTokens: d1.tokens,
          tailStart: d1.start,
        }),
      });
    // the draft forward with the slot copy of its stream after block k − 1 into the verification's
    // input, and the part of it that the last draft runs (no exit head)
    const split = d1.draftSplit!;
    const slots = { state, start: d1.start, hidden: tp.layers[0].x, slots: G + 1, L };
    // on the fused path block k − 1's last GEMV stores the stream into its slot itself (one
    // dispatch fewer per draft step: a dispatch costs ~25 µs of fixed cost on lavapipe);
    // otherwise a copy dispatch follows it
    const forward = split.slotCopy
      ? [
        ...d1.dispatches.slice(0, split.lower - 1),
        split.slotCopy(slots),
        ...d1.dispatches.slice(split.lower),
      ]
      : [
        ...d1.dispatches.slice(0, split.lower),
        slotCopyKernel(gpu, { ...slots, x: d1.layers[0].x, B, C }),
        ...d1.dispatches.slice(split.lower),
      ];
    // the last draft's forward: everything before the exit head
    const tail = forward.slice(0, forward.length - (d1.dispatches.length - split.head));
    const gate = adaptive && G > 1
      ? draftGate(gpu, state, layout, drafted!, { ...d1, dispatches: forward }, B)
      : undefined;
    if (gate) cleanup.add(() => gate.counts.destroy());
    parts.push(...draftParts(forward, draftStep, 1, G, gate));
    parts.push(
      { name: "tail forward n=1", dispatches: tail },
      { name: `target forward n=${G + 1} (blocks ≥ k)`, dispatches: tp.dispatches },
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
          // the next step's first draft forward: seq[pos − 1] at pos − 1
          feedTokens: d1.tokens,
          feedStart: d1.start,
          feedWidth: 1,
          drafted,
        })],
      },
    );
    // the prefill: the first P − 1 prompt tokens through every block (and the extra blocks)
    const prefill = [
      ...prefillDispatches(model, cache, state, layout, P, adopt, prefillKind),
      feed,
    ];
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
