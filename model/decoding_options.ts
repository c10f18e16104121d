/**
 * The options of {@link "./decoding.ts" | baseDecoding} and speculativeDecoding and their
 * validation (every bad value throws an error naming it before anything touches the GPU).
 *
 * @module
 */
import type { GpuTimer } from "../kernels/timer.ts";
import { seedWords, showValue, validateSampling } from "../kernels/sampling.ts";
import { type Decoder, validateTokens } from "./decoder.ts";

/** Options shared by {@link baseDecoding} and {@link speculativeDecoding}. */
export interface DecodingOptions {
  /** Softmax temperature ≥ 0; 0 is greedy (argmax) everywhere. Default 1. */
  temperature?: number;
  /** Top-k threshold in [0, 1): keeps ceil((1 − filterThres) · numTokens) logits. Default 0.9. */
  filterThres?: number;
  /** Seed of the GPU's counter-based generator: same seed, same output. Default 0. */
  seed?: number;
  /** Most decode steps per submission (default 128: at most one readback per 128 steps). */
  chunkSteps?: number;
  /** Called once per chunk with each row's new tokens (empty rows when a row had none). */
  onTokens?: (rows: number[][]) => void;
  /** Adds the GPU time of every submission; the result's `gpuMs` reads it. */
  timer?: GpuTimer;
}

/** Options of {@link speculativeDecoding}. */
export interface SpeculativeOptions extends DecodingOptions {
  /** Draft tokens per step, an integer ≥ 1. Default 5. */
  gamma?: number;
  /** Acceptance lenience > 0: accept while r ≤ p / (lenience · q). 1 (default) keeps the target's law. */
  lenience?: number;
  /**
   * Adaptive draft length (early stopping of drafting): a probability in [0, 1), default 0 (off:
   * every row drafts gamma tokens per step, as Leviathan et al. 2022's Algorithm 1 with a fixed
   * γ). Per row and step, drafting stops after the first draft token x_i whose draft probability
   * q_i(x_i) (under the filtered, tempered draft law it was sampled from) is below the threshold,
   * and at gamma tokens at most; at temperature 0, where q is one-hot, the draft's plain softmax
   * probability of x_i (temperature 1, no top-k filter) is compared instead. A row that drafted
   * k tokens is verified as Algorithm 1 with γ = k, so the output law is unchanged (greedy still
   * equals the target's greedy). Decided on the GPU with no readback; the rows of a batch stop on
   * their own, and once every row has stopped the step's remaining draft forwards do no work
   * (the target's verification still spans gamma + 1 positions). Like the confidence thresholds
   * of dynamic-draft-length methods (e.g. SpecDec++, Huang et al. 2024, which learns the stopping
   * rule; here it is the draft's own probability). The result's `draftedMean` is the mean draft
   * length.
   */
  draftThreshold?: number;
}

/** Checks an option is an integer ≥ min. */
export function integerOption(name: string, v: number, min: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new Error(`specdec: ${name} must be an integer ≥ ${min}, got ${showValue(v)}`);
  }
  return v;
}

/** Checks the options argument is an object and its callback a function. */
function validateOptionsObject(options: DecodingOptions): void {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new Error(`specdec: options must be an object, got ${showValue(options)}`);
  }
  if (options.onTokens !== undefined && typeof options.onTokens !== "function") {
    throw new Error(`specdec: onTokens must be a function, got ${showValue(options.onTokens)}`);
  }
}

/** Validates the prompt and seqLen against a model; returns batch and prompt length. */
export function validatePrompt(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  maxSeqLen: number,
): { B: number; P: number } {
  const { batch, n } = validateTokens(prompt, model.config.numTokens, maxSeqLen, "prompt");
  integerOption("seqLen", seqLen, 1);
  if (n >= seqLen) {
    throw new Error(
      `specdec: the prompt has ${n} tokens, so seqLen (which counts the prompt) must be more than ` +
        `${n}; got ${seqLen}`,
    );
  }
  if (seqLen > maxSeqLen) {
    throw new Error(`specdec: seqLen ${seqLen} is over the model's maxSeqLen ${maxSeqLen}`);
  }
  return { B: batch, P: n };
}

/** The sampling options of a decode, with their defaults, after validation. */
export interface ResolvedSampling {
  /** Softmax temperature (default 1). */
  temperature: number;
  /** Top-k threshold (default 0.9). */
  filterThres: number;
  /** Philox seed (default 0). */
  seed: number;
}

/**
 * Validates the options and prompt of a base decode.
 *
 * @param model the model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options the decode's options
 * @returns the sampling options with their defaults, batch B and prompt length P
 * @throws Error naming the bad option or input
 */
export function validateBase(
  model: Decoder,
  prompt: number[][],
  seqLen: number,
  options: DecodingOptions,
): ResolvedSampling & { B: number; P: number } {
  validateOptionsObject(options);
  const { temperature = 1, filterThres = 0.9, seed = 0 } = options;
  validateSampling(temperature, filterThres);
  seedWords(seed);
  const { B, P } = validatePrompt(model, prompt, seqLen, model.config.maxSeqLen);
  return { temperature, filterThres, seed, B, P };
}

/**
 * Validates the options, models and prompt of a speculative decode.
 *
 * @param target the large model
 * @param draft the small model
 * @param prompt a batch of equal-length rows of tokens
 * @param seqLen total length, prompt included
 * @param options the decode's options
 * @returns the options with their defaults, batch B and prompt length P
 * @throws Error naming the bad option or input
 */
export function validateSpeculative(
  target: Decoder,
  draft: Decoder,
  prompt: number[][],
  seqLen: number,
  options: SpeculativeOptions,
): ResolvedSampling & {
  gamma: number;
  lenience: number;
  draftThreshold: number;
  B: number;
  P: number;
} {
  validateOptionsObject(options);
  const { temperature = 1, filterThres = 0.9, seed = 0, lenience = 1, gamma = 5 } = options;
  const { draftThreshold = 0 } = options;
  integerOption("gamma", gamma, 1);
  if (
    typeof draftThreshold !== "number" || !(draftThreshold >= 0 && draftThreshold < 1)
  ) {
    throw new Error(
      `specdec: draftThreshold must be a probability in [0, 1) (0 = a fixed gamma), got ` +
        showValue(draftThreshold),
    );
  }
  validateSampling(temperature, filterThres);
  if (typeof lenience !== "number" || !Number.isFinite(lenience) || lenience <= 0) {
    throw new Error(`specdec: lenience must be a finite number > 0, got ${showValue(lenience)}`);
  }
  seedWords(seed);
  if (target.config.numTokens !== draft.config.numTokens) {
    throw new Error(
      `specdec: target and draft must share the vocabulary; target has numTokens ` +
        `${target.config.numTokens}, draft ${draft.config.numTokens}`,
    );
  }
  if (target.gpu !== draft.gpu) {
    throw new Error("specdec: target and draft must be on the same Gpu");
  }
  const maxSeqLen = Math.min(target.config.maxSeqLen, draft.config.maxSeqLen);
  const { B, P } = validatePrompt(target, prompt, seqLen, maxSeqLen);
  return { temperature, filterThres, seed, gamma, lenience, draftThreshold, B, P };
}
