/**
 * Kernels only the tests use: the sampling building blocks on their own (probabilities, one
 * sample per row, raw Philox words) and the target feed that the last draft step fuses. They
 * include the library's WGSL (kernels/sampling.ts), so what they check is what the decoding
 * kernels run.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../kernels/gpu.ts";
import { type StateLayout, stateOffsets } from "../../kernels/decode_state.ts";
import {
  LOGITS_CORE,
  PHILOX_WGSL,
  rowCommonWgsl,
  samplingCacheLength,
  type SamplingOptions,
  samplingParams,
  samplingWorkgroupSize,
  seedParams,
} from "../../kernels/sampling.ts";

const probsCode = (wg: number, cache: number): string => /* wgsl */ `
struct Params { V: u32, k: u32, invT: f32, greedy: u32, rows: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;      // (R, V)
@group(0) @binding(2) var<storage, read_write> probs: array<f32>; // (R, V)
${rowCommonWgsl(wg, cache)}
${LOGITS_CORE}
fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 { return probOf(j, l, tie); }

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.rows) { return; }
  analyze(row * params.V, t);
  let ch = chunkOf(t);
  var tie = tieBase[t];
  for (var i = 0u; i < ch.y - ch.x; i++) {
    probs[row * params.V + ch.x + i] = probOf(ch.x + i, ownLogit(i), &tie);
  }
}`;

/**
 * Filtered, tempered probabilities of each logits row: `probs = softmax(topk(logits) / T)`, or a
 * one-hot at the argmax when the temperature is 0. One workgroup per row.
 *
 * @param gpu the runtime
 * @param args `logits (R, V)` f32 in, `probs (R, V)` f32 out, `rows` R and the sampling options;
 *   `cache`, the logits each thread keeps privately, overrides the adapter's
 *   {@link samplingCacheLength} (0: read storage in every pass)
 * @returns the dispatch
 */
export function probsKernel(
  gpu: Gpu,
  args: SamplingOptions & { logits: GPUBuffer; probs: GPUBuffer; rows: number; cache?: number },
): Dispatch {
  return gpu.kernel({
    label: `probs (${args.rows}, ${args.numTokens})`,
    code: probsCode(
      samplingWorkgroupSize(args.numTokens, gpu.isSoftware),
      args.cache ?? samplingCacheLength(args.numTokens, gpu.isSoftware),
    ),
    params: { ...samplingParams(args), rows: args.rows },
    buffers: { logits: args.logits, probs: args.probs },
    workgroups: args.rows,
  });
}

const sampleCode = (wg: number, cache: number): string => /* wgsl */ `
struct Params { V: u32, k: u32, invT: f32, greedy: u32, rows: u32, seedLo: u32, seedHi: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // (R, V)
@group(0) @binding(2) var<storage, read> counters: array<u32>;     // (R, 4) Philox counters
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>; // (R)
${rowCommonWgsl(wg, cache)}
${PHILOX_WGSL}
${LOGITS_CORE}
fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 { return probOf(j, l, tie); }

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.rows) { return; }
  analyze(row * params.V, t);
  var tok = rArg;
  if (params.greedy == 0u) {
    let c = vec4<u32>(counters[4u * row], counters[4u * row + 1u], counters[4u * row + 2u],
                      counters[4u * row + 3u]);
    tok = invCdf(t, uniform01(c, vec2<u32>(params.seedLo, params.seedHi)));
  }
  if (t == 0u) { tokens[row] = tok; }
}`;

/**
 * Samples one token per logits row from `softmax(topk(logits) / T)` (argmax at T = 0), with the
 * uniform of each row drawn from Philox under `seed` at that row's counter: the building block
 * the decoding kernels specialise.
 *
 * @param gpu the runtime
 * @param args `logits (R, V)` f32, `counters (R, 4)` u32 Philox counters, `tokens (R)` u32 out,
 *   `rows`, `seed` and the sampling options; `cache` as {@link probsKernel}'s
 * @returns the dispatch
 */
export function sampleKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    counters: GPUBuffer;
    tokens: GPUBuffer;
    rows: number;
    seed: number;
    cache?: number;
  },
): Dispatch {
  return gpu.kernel({
    label: `sample (${args.rows}, ${args.numTokens})`,
    code: sampleCode(
      samplingWorkgroupSize(args.numTokens, gpu.isSoftware),
      args.cache ?? samplingCacheLength(args.numTokens, gpu.isSoftware),
    ),
    params: { ...samplingParams(args), rows: args.rows, ...seedParams(args.seed) },
    buffers: { logits: args.logits, counters: args.counters, tokens: args.tokens },
    workgroups: args.rows,
  });
}

const PHILOX_CODE = /* wgsl */ `
struct Params { rows: u32, seedLo: u32, seedHi: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> counters: array<u32>;  // (R, 4)
@group(0) @binding(2) var<storage, read_write> out: array<u32>; // (R, 4)
${PHILOX_WGSL}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = g.x + g.y * nwg.x * 64u;
  if (r >= params.rows) { return; }
  let c = vec4<u32>(counters[4u * r], counters[4u * r + 1u], counters[4u * r + 2u],
                    counters[4u * r + 3u]);
  let o = philox(c, vec2<u32>(params.seedLo, params.seedHi));
  out[4u * r] = o.x; out[4u * r + 1u] = o.y; out[4u * r + 2u] = o.z; out[4u * r + 3u] = o.w;
}`;

/**
 * The raw Philox4x32-10 words of each counter under `seed` (to check the GPU generator bit for
 * bit against a CPU implementation).
 *
 * @param gpu the runtime
 * @param args `counters (R, 4)` u32 in, `out (R, 4)` u32 out, `rows`, `seed`
 * @returns the dispatch
 */
export function philoxKernel(
  gpu: Gpu,
  args: { counters: GPUBuffer; out: GPUBuffer; rows: number; seed: number },
): Dispatch {
  return gpu.kernel({
    label: `philox (${args.rows})`,
    code: PHILOX_CODE,
    params: { rows: args.rows, ...seedParams(args.seed) },
    buffers: { counters: args.counters, out: args.out },
    workgroups: Math.ceil(args.rows / 64),
  });
}

const TARGET_FEED_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, seqOff: u32, gamma: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | stats | seq (B, L)]
@group(0) @binding(2) var<storage, read> draft: array<u32>;        // (B, gamma)
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>; // (B, gamma + 1)
@group(0) @binding(4) var<storage, read_write> start: array<u32>;  // (B)
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = params.gamma + 1u;
  let idx = g.x + g.y * nwg.x * 64u;
  if (idx >= params.B * n) { return; }
  let b = idx / n;
  let j = idx % n;
  let pos = state[b]; // ≥ 1: the prompt is never empty
  if (j == 0u) {
    tokens[idx] = state[params.seqOff + b * params.L + min(pos - 1u, params.L - 1u)];
    start[b] = pos - 1u;
  } else {
    tokens[idx] = draft[b * params.gamma + j - 1u];
  }
}`;

/**
 * Feeds the target's verification forward: `[seq[b, pos − 1], x_1 .. x_γ]` at start `pos − 1`
 * (what the last draft step writes itself in the decoders).
 *
 * @param gpu the runtime
 * @param args `state` and `layout`, `draft (B, gamma)` u32, the plan's `tokens (B, gamma + 1)`
 *   and `start (B)` u32 buffers, `gamma`
 * @returns the dispatch
 */
export function targetFeedKernel(
  gpu: Gpu,
  args: {
    state: GPUBuffer;
    layout: StateLayout;
    draft: GPUBuffer;
    tokens: GPUBuffer;
    start: GPUBuffer;
    gamma: number;
  },
): Dispatch {
  const { batch: B, seqLen: L } = args.layout;
  return gpu.kernel({
    label: `feed target (${B}, ${args.gamma + 1})`,
    code: TARGET_FEED_CODE,
    params: { B, L, seqOff: stateOffsets(args.layout).seq, gamma: args.gamma },
    buffers: { state: args.state, draft: args.draft, tokens: args.tokens, start: args.start },
    workgroups: Math.ceil((B * (args.gamma + 1)) / 64),
  });
}
