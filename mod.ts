/**
 * specdec: speculative decoding for transformers, on WebGPU.
 *
 * A decoder-only byte-level transformer (the reference architecture of lucidrains'
 * speculative-decoding: pre-RMSNorm, fused qkv, rotary, erf-GELU feed-forward, final RMSNorm +
 * linear) whose forward and backward passes, Adam, KV cache and sampling all run as WGSL compute
 * shaders through `navigator.gpu`. Checkpoints are safetensors with PyTorch state_dict names.
 *
 * @example
 * ```ts
 * import { Decoder, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 2 }, { seed: 0 });
 * const logits = await model.logits([[104, 105]]); // Float32Array (1, 2, 256)
 * console.log(await model.loss([[104, 105, 33]]));
 * ```
 *
 * @module
 */
export { type Dispatch, Gpu, requestGpu } from "./kernels/gpu.ts";
export type { PassTimer, RequestGpuOptions } from "./kernels/gpu.ts";
export type { KernelSpec } from "./kernels/bindings.ts";
export { GpuTimer } from "./kernels/timer.ts";
export {
  CONFIG_DEFAULTS,
  type DecoderConfig,
  type FullDecoderConfig,
  type Preset,
  PRESETS,
  resolveConfig,
  type TrainingDefaults,
} from "./model/config.ts";
export { type CreateOptions, Decoder, validateTokens } from "./model/decoder.ts";
export { type ForwardPlan, type LayerActivations, type PlanKind } from "./model/forward_plan.ts";
export { type LossPlan } from "./model/loss_plan.ts";
export { type LayerWeights, type ModelWeights } from "./model/params.ts";
export { KVCache } from "./model/kv_cache.ts";
export {
  CachePool,
  type CachePoolOptions,
  type PooledCache,
  roundedCacheLength,
} from "./model/cache_pool.ts";
export {
  type CheckpointOptions,
  readSafetensors,
  type Safetensors,
  type Tensor,
  writeSafetensors,
} from "./model/checkpoint.ts";
export {
  Adam,
  type AdamOptions,
  type AdamStats,
  decodeAdamStats,
  type Parameter,
} from "./model/optimizer.ts";
export {
  type DistillOptions,
  type StepResult,
  Trainer,
  type TrainerOptions,
} from "./model/trainer.ts";
export {
  decodeCorpus,
  type Split,
  splitCorpus,
  TRAIN_BYTES,
  VAL_BYTES,
  WindowSampler,
} from "./data/corpus.ts";
export {
  baseDecoding,
  type DecodingCosts,
  decodingCosts,
  type DecodingOptions,
  type DecodingResult,
  speculativeDecoding,
  type SpeculativeOptions,
  type SpeculativeResult,
} from "./model/decoding.ts";
export {
  type GemmVariant,
  gemvNT,
  type GemvVariant,
  inputGradient,
  linear,
  linearForward,
  type MatmulArgs,
  matmulNN,
  matmulNT,
  matmulTN,
  weightGradient,
  type WeightGradientArgs,
} from "./kernels/matmul.ts";
export { RMS_EPS, rmsNorm, rmsNormBackward } from "./kernels/norm.ts";
export { add, gelu, geluBackward, sumRows } from "./kernels/activation.ts";
export { embedding, embeddingBackward } from "./kernels/embedding.ts";
export { crossEntropy, IGNORE, sumLoss } from "./kernels/loss.ts";
export { klDivergence } from "./kernels/distill.ts";
export {
  rotary,
  type RotaryArgs,
  rotaryBackward,
  rotaryInvFreq,
  rotaryTable,
} from "./kernels/rotary.ts";
export {
  attention,
  attentionBackward,
  type AttentionSizes,
  type AttentionVariant,
  kvWrite,
} from "./kernels/attention.ts";
