/**
 * specdec: speculative decoding for transformers on WebGPU.
 *
 * @module
 */
export { type Dispatch, f32bits, Gpu, GpuTimer, requestGpu } from "./kernels/gpu.ts";
export type { KernelSpec, RequestGpuOptions } from "./kernels/gpu.ts";
