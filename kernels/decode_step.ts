/**
 * The sampling kernels of a decode step, one workgroup per row: the base step's (sample the next
 * token into the state) and the draft steps' of speculative decoding (store q_i, sample x_i).
 * Each also feeds the next forward of the step (its input tokens and start positions), so a step
 * has no feed dispatches. Sampling semantics and the shared WGSL are in sampling.ts.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { FAIL_ROW_WGSL, layoutParams, ROW_ERROR, type StateLayout } from "./decode_state.ts";
import {
  LOGITS_CORE,
  PHILOX_WGSL,
  RNG_PURPOSE,
  rowCommonWgsl,
  samplingCacheLength,
  type SamplingOptions,
  samplingParams,
  samplingWorkgroupSize,
  seedParams,
} from "./sampling.ts";

/** The base step: sample the last logits row of each unfinished row, feed the next forward. */
const baseStepCode = (wg: number, cache: number): string => /* wgsl */ `
struct Params {
  V: u32, k: u32, invT: f32, greedy: u32,
  B: u32, L: u32, errOff: u32, statsOff: u32, seqOff: u32, statsW: u32,
  n: u32, seedLo: u32, seedHi: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;           // (B, n, V)
@group(0) @binding(2) var<storage, read_write> state: array<u32>;      // [pos (B) | err (B, 2) | stats (B, W) | seq (B, L)]
@group(0) @binding(3) var<storage, read_write> feedTokens: array<u32>; // (B) next forward's tokens
@group(0) @binding(4) var<storage, read_write> feedStart: array<u32>;  // (B) and their positions
${rowCommonWgsl(wg, cache)}
${PHILOX_WGSL}
${LOGITS_CORE}
${FAIL_ROW_WGSL}
fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 { return probOf(j, l, tie); }
const SOURCE: u32 = ${ROW_ERROR.target << 4}u; // ROW_ERROR.target << 4

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let b = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (b >= params.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= params.L) { return; } // finished rows do nothing (their last feed stays, the same)
  let bad = analyze((b * params.n + params.n - 1u) * params.V, t);
  if (bad != 0u) { // non-finite logits: stop the row, write no token (the host throws)
    if (t == 0u) { failRow(b, bad | SOURCE, pos); }
    return;
  }
  var tok = rArg;
  if (params.greedy == 0u) {
    let ctr = vec4<u32>(b, pos, ${RNG_PURPOSE.base}u, 0u);
    tok = invCdf(t, uniform01(ctr, vec2<u32>(params.seedLo, params.seedHi)));
  }
  if (t == 0u) {
    if (tok >= params.V) { failRow(b, ${ROW_ERROR.noToken}u | SOURCE, pos); return; }
    state[params.seqOff + b * params.L + pos] = tok;
    state[b] = pos + 1u;
    state[params.statsOff + b * params.statsW] += 1u;
    feedTokens[b] = tok; // the next step's one-token forward feeds it
    feedStart[b] = pos;  // at its position
  }
}`;

/**
 * One base decoding step's sampling: for each unfinished row b (pos[b] < L), samples a token
 * from the last logits row of b, writes it at seq[b, pos[b]], advances pos[b] and counts the
 * step in stats[b, 0]. The uniform's counter is (b, pos[b], base, 0). It also feeds the next
 * step's one-token forward (the token at its position), as {@link "./decode_state.ts" |
 * seqFeedKernel} with `n = 1, back = 1` would from the new state, which saves that dispatch per
 * step (finished rows keep their last feed, which is the same). A row whose logits cannot be
 * sampled (NaN; +∞ unless greedy; all −∞) is stopped instead: its `err` words say why and where
 * (decode_state.ts, `ROW_ERROR`, source target), `pos = L`, and no token or feed is written.
 *
 * @param gpu the runtime
 * @param args `logits (B, n, V)` f32, the `state` buffer and its `layout`, `n`, `seed`, the
 *   sampling options, and the next forward's `feedTokens (B)`, `feedStart (B)` u32
 * @returns the dispatch
 */
export function baseStepKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    state: GPUBuffer;
    layout: StateLayout;
    n: number;
    seed: number;
    feedTokens: GPUBuffer;
    feedStart: GPUBuffer;
  },
): Dispatch {
  return gpu.kernel({
    label: `base step sample (${args.layout.batch}, ${args.numTokens})`,
    code: baseStepCode(
      samplingWorkgroupSize(args.numTokens, gpu.isSoftware),
      samplingCacheLength(args.numTokens, gpu.isSoftware),
    ),
    params: {
      ...samplingParams(args),
      ...layoutParams(args.layout),
      n: args.n,
      ...seedParams(args.seed),
    },
    buffers: {
      logits: args.logits,
      state: args.state,
      feedTokens: args.feedTokens,
      feedStart: args.feedStart,
    },
    workgroups: args.layout.batch,
  });
}

/** The adaptive draft length's flag in `drafted[b]`: the row stopped drafting after this draft. */
const STOPPED = 0x80000000;

/** The adaptive draft kernels' extra binding: the step's drafts per row so far. */
const ADAPTIVE_BINDING = /* wgsl */ `
@group(0) @binding(7) var<storage, read_write> drafted: array<u32>;    // (B) drafts so far | STOPPED
const STOPPED: u32 = ${STOPPED}u;
var<workgroup> wdrafted: u32; // drafted[b], broadcast (not wword: a slow thread may still read it)
// The draft's confidence in its argmax at temperature 0, where q is one-hot: its plain softmax
// (temperature 1, no top-k filter), 1 / Σ_j exp(l_j − max). Uniform control flow; NaN (so no
// stop) when the max is +∞.
fn greedyConfidence(t: u32) -> f32 {
  let ch = chunkOf(t);
  let n = ch.y - ch.x;
  var s = 0.0;
  for (var i = 0u; i < n; i++) { s += exp(ownLogit(i) - rMax); }
  wf[t] = s;
  workgroupBarrier();
  var total = 0.0;
  for (var c = 0u; c < WG; c++) { total += wf[c]; }
  return 1.0 / total;
}`;

/**
 * WGSL of the adaptive draft kernels: step i > 1 of a row that stopped drafting (drafted[b] is
 * not i − 1: a draft of this step had q below the threshold) does nothing but `also`.
 */
const adaptiveSkip = (also: string): string => /* wgsl */ `
  if (params.i > 1u) { // uniform
    if (t == 0u) { wdrafted = drafted[b]; }
    if (workgroupUniformLoad(&wdrafted) != params.i - 1u) { ${also}return; }
  }`;

/**
 * Draft step i that feeds the next draft forward (i < γ): q_i and x_i, then x_i at its position.
 * With n = 2 the forward started at max(pos − 2, 0), so the row of interest is 1 once pos ≥ 2.
 */
const draftStepFeedDraftCode = (
  wg: number,
  cache: number,
  adaptive: boolean,
): string => /* wgsl */ `
struct Params {
  V: u32, k: u32, invT: f32, greedy: u32,
  B: u32, L: u32, errOff: u32, seqOff: u32,
  n: u32, seedLo: u32, seedHi: u32, i: u32, gamma: u32,${adaptive ? " threshold: f32," : ""}
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;           // (B, n, V)
@group(0) @binding(2) var<storage, read_write> state: array<u32>;      // [pos (B) | err (B, 2) | … | seq]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;          // (B, gamma, V)
@group(0) @binding(4) var<storage, read_write> draft: array<u32>;      // (B, gamma)
@group(0) @binding(5) var<storage, read_write> feedTokens: array<u32>; // (B) next draft forward
@group(0) @binding(6) var<storage, read_write> feedStart: array<u32>;  // (B)
${adaptive ? ADAPTIVE_BINDING : ""}
${rowCommonWgsl(wg, cache)}
${PHILOX_WGSL}
${LOGITS_CORE}
${FAIL_ROW_WGSL}
fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 { return probOf(j, l, tie); }
const SOURCE: u32 = ${ROW_ERROR.draft << 4}u; // ROW_ERROR.draft << 4

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let b = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (b >= params.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= params.L) { return; } // finished rows do nothing
${adaptive ? adaptiveSkip("") : ""}
  var r = 0u;
  if (params.n == 2u && pos >= 2u) { r = 1u; }
  let bad = analyze((b * params.n + r) * params.V, t);
  if (bad != 0u) { // non-finite logits: stop the row, write no token (the host throws)
    if (t == 0u) { failRow(b, bad | SOURCE | (params.i << 8u), pos + params.i - 1u); }
    return;
  }
  let qBase = (b * params.gamma + params.i - 1u) * params.V;
  let ch = chunkOf(t);
  let n = ch.y - ch.x;
  var tie = tieBase[t];
  for (var i = 0u; i < n; i++) { q[qBase + ch.x + i] = probOf(ch.x + i, ownLogit(i), &tie); }
  var tok = rArg;
  if (params.greedy == 0u) {
    let ctr = vec4<u32>(b, pos, ${RNG_PURPOSE.draft}u, params.i);
    tok = invCdf(t, uniform01(ctr, vec2<u32>(params.seedLo, params.seedHi)));
  }${
  adaptive
    ? `
  var conf = 1.0; // the draft's confidence in x_i; greedy: its plain softmax (q is one-hot)
  if (params.greedy != 0u && params.threshold > 0.0) { conf = greedyConfidence(t); }`
    : ""
}
  if (t == 0u) {
    if (tok >= params.V) {
      failRow(b, ${ROW_ERROR.noToken}u | SOURCE | (params.i << 8u), pos + params.i - 1u);
      return;
    }
    draft[b * params.gamma + params.i - 1u] = tok;
    feedTokens[b] = tok;                // the next draft forward feeds x_i
    feedStart[b] = pos + params.i - 1u; // at its position${
  adaptive
    ? `
    if (params.greedy == 0u) { conf = probAt(tok); } // q_i(x_i), the bits stored in q
    drafted[b] = params.i | select(0u, STOPPED, conf < params.threshold);`
    : ""
}
  }
}`;

/**
 * The last draft step (i = γ), which feeds the target's verification forward for every row,
 * finished ones included (as the separate feed kernel it replaces did):
 * `[seq[b, pos − 1], x_1 .. x_γ]` at start pos − 1.
 */
const draftStepFeedTargetCode = (
  wg: number,
  cache: number,
  adaptive: boolean,
  tail: boolean,
): string => /* wgsl */ `
struct Params {
  V: u32, k: u32, invT: f32, greedy: u32,
  B: u32, L: u32, errOff: u32, seqOff: u32,
  n: u32, seedLo: u32, seedHi: u32, i: u32, gamma: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;             // (B, n, V)
@group(0) @binding(2) var<storage, read_write> state: array<u32>;        // [pos (B) | err (B, 2) | … | seq]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;            // (B, gamma, V)
@group(0) @binding(4) var<storage, read_write> draft: array<u32>;        // (B, gamma)
@group(0) @binding(5) var<storage, read_write> targetTokens: array<u32>; // (B, gamma + 1)
@group(0) @binding(6) var<storage, read_write> targetStart: array<u32>;  // (B)
${adaptive ? ADAPTIVE_BINDING : ""}${
  tail
    ? `
@group(0) @binding(8) var<storage, read_write> tailTokens: array<u32>; // (B) the tail forward's
@group(0) @binding(9) var<storage, read_write> tailStart: array<u32>;  // (B) token and position`
    : ""
}
${rowCommonWgsl(wg, cache)}
${PHILOX_WGSL}
${LOGITS_CORE}
${FAIL_ROW_WGSL}
fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 { return probOf(j, l, tie); }
const SOURCE: u32 = ${ROW_ERROR.draft << 4}u; // ROW_ERROR.draft << 4

// The verification's input; with the tail feed also the row's last draft x_k at its position.
fn feedTarget(b: u32, pos: u32, k: u32) {
  let n = params.gamma + 1u;
  targetTokens[b * n] = state[params.seqOff + b * params.L + min(pos - 1u, params.L - 1u)];
  for (var j = 1u; j < n; j++) { targetTokens[b * n + j] = draft[b * params.gamma + j - 1u]; }
  targetStart[b] = pos - 1u;${
  tail
    ? `
  tailTokens[b] = targetTokens[b * n + k];
  tailStart[b] = pos - 1u + k;`
    : ""
}
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let b = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (b >= params.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= params.L) { // finished rows sample nothing, but feed the target as before
    if (t == 0u) { feedTarget(b, pos, ${
  adaptive ? "min(drafted[b] & 0xffffu, params.gamma)" : "params.gamma"
}); }
    return;
  }
${
  adaptive
    ? adaptiveSkip("if (t == 0u) { feedTarget(b, pos, min(wdrafted & 0xffffu, params.gamma)); } ")
    : ""
}
  var r = 0u;
  if (params.n == 2u && pos >= 2u) { r = 1u; }
  let bad = analyze((b * params.n + r) * params.V, t);
  if (bad != 0u) { // non-finite logits: stop the row, write no token (the host throws)
    if (t == 0u) { failRow(b, bad | SOURCE | (params.i << 8u), pos + params.i - 1u); }
    return;
  }
  let qBase = (b * params.gamma + params.i - 1u) * params.V;
  let ch = chunkOf(t);
  let n = ch.y - ch.x;
  var tie = tieBase[t];
  for (var i = 0u; i < n; i++) { q[qBase + ch.x + i] = probOf(ch.x + i, ownLogit(i), &tie); }
  var tok = rArg;
  if (params.greedy == 0u) {
    let ctr = vec4<u32>(b, pos, ${RNG_PURPOSE.draft}u, params.i);
    tok = invCdf(t, uniform01(ctr, vec2<u32>(params.seedLo, params.seedHi)));
  }
  if (t == 0u) {
    if (tok >= params.V) {
      failRow(b, ${ROW_ERROR.noToken}u | SOURCE | (params.i << 8u), pos + params.i - 1u);
      return;
    }
    draft[b * params.gamma + params.i - 1u] = tok;
    feedTarget(b, pos, params.gamma);${
  adaptive ? "\n    drafted[b] = params.i; // the last draft of the step" : ""
}
  }
}`;

/**
 * Draft step i (1-based) of a speculative step: for each unfinished row b, computes q_i from
 * the draft's logits row of interest (with `n = 2` the forward started at max(pos − 2, 0), so the
 * row is pos − 1 − start; with `n = 1` it is the only row), stores q_i at `q[b, i − 1]` and
 * samples x_i (counter (b, pos, draft, i)) into `draft[b, i − 1]`. Then it feeds the next
 * forward, which saves a feed dispatch per step: with `feedTokens`/`feedStart` (steps i < γ) x_i
 * at position pos + i − 1 to the next draft forward; with `targetTokens`/`targetStart` (the last
 * step) the target's verification forward, `[seq[b, pos − 1], x_1 .. x_γ]` at pos − 1, for
 * every row, and with `tailTokens`/`tailStart` as well (self-speculation's tail forward,
 * model/self_speculative.ts) each row's last draft x_k at its position pos − 1 + k, k = γ or
 * with an adaptive draft length the row's own count (one dispatch fewer per step than a feed
 * kernel of its own). A row whose draft logits cannot be sampled (NaN; +∞ unless greedy; all
 * −∞) is stopped instead (`err` = why | draft source | i, at position pos + i − 1; `pos = L`): no q_i,
 * x_i or feed is written for it.
 *
 * Adaptive draft length (with `drafted`, the engine's `draftThreshold`): step 1 and every step a
 * row is still drafting at write `drafted[b] = i`, with the flag `STOPPED` (bit 31) when the
 * draft's confidence in x_i is below `threshold` (q_i(x_i), the bits stored in q; at temperature
 * 0, where q is one-hot, the draft's plain softmax of x_i, at temperature 1 without the top-k
 * filter). A row whose `drafted[b]` is not i − 1 at step i > 1 stopped drafting: the step only
 * feeds the target (last step) or does nothing. The acceptance reads `drafted[b] & 0xffff` as the
 * row's draft length k (see {@link "./speculative.ts" | acceptKernel}).
 *
 * @param gpu the runtime
 * @param args `logits (B, n, V)`, `state` (pos read, err written), `q (B, gamma, V)` and
 *   `draft (B, gamma)` out, either `feedTokens (B)`/`feedStart (B)` u32 out or
 *   `targetTokens (B, gamma + 1)`/
 *   `targetStart (B)` u32 out (then optionally `tailTokens (B)`/`tailStart (B)` u32 out), `n`
 *   (1 or 2), `i`, `gamma`, `seed` and the sampling options;
 *   for an adaptive draft length `drafted (B)` u32 (read and written) and `threshold` in [0, 1)
 * @returns the dispatch
 * @throws Error unless exactly one of the two feeds is given, on a tail feed without the
 *   target's, or on a threshold without drafted
 */
export function draftStepKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    logits: GPUBuffer;
    state: GPUBuffer;
    layout: StateLayout;
    q: GPUBuffer;
    draft: GPUBuffer;
    feedTokens?: GPUBuffer;
    feedStart?: GPUBuffer;
    targetTokens?: GPUBuffer;
    targetStart?: GPUBuffer;
    tailTokens?: GPUBuffer;
    tailStart?: GPUBuffer;
    n: number;
    i: number;
    gamma: number;
    seed: number;
    drafted?: GPUBuffer;
    threshold?: number;
  },
): Dispatch {
  const adaptive = args.drafted !== undefined;
  if (!adaptive && args.threshold !== undefined) {
    throw new Error("specdec: draftStepKernel's threshold needs the drafted buffer");
  }
  const toDraft = !!(args.feedTokens && args.feedStart);
  const toTarget = !!(args.targetTokens && args.targetStart);
  if (toDraft === toTarget) {
    throw new Error(
      "specdec: draftStepKernel needs exactly one feed: feedTokens and feedStart (the next " +
        "draft forward) or targetTokens and targetStart (the verification forward)",
    );
  }
  const tail = !!(args.tailTokens && args.tailStart);
  if (tail && !toTarget) {
    throw new Error(
      "specdec: draftStepKernel's tail feed (tailTokens, tailStart) goes with the last step's " +
        "feed of the verification (targetTokens, targetStart)",
    );
  }
  const wg = samplingWorkgroupSize(args.numTokens, gpu.isSoftware);
  const cache = samplingCacheLength(args.numTokens, gpu.isSoftware);
  const { B, L, errOff, seqOff } = layoutParams(args.layout);
  const common = { logits: args.logits, state: args.state, q: args.q, draft: args.draft };
  return gpu.kernel({
    label: `draft step ${args.i} sample (${args.layout.batch}, ${args.numTokens})` +
      (adaptive ? " adaptive" : ""),
    code: toDraft
      ? draftStepFeedDraftCode(wg, cache, adaptive)
      : draftStepFeedTargetCode(wg, cache, adaptive, tail),
    params: {
      ...samplingParams(args),
      B,
      L,
      errOff,
      seqOff,
      n: args.n,
      ...seedParams(args.seed),
      i: args.i,
      gamma: args.gamma,
      // the last step stops nothing: no threshold
      ...(adaptive && toDraft ? { threshold: args.threshold ?? 0 } : {}),
    },
    buffers: {
      ...(toDraft
        ? { ...common, feedTokens: args.feedTokens!, feedStart: args.feedStart! }
        : { ...common, targetTokens: args.targetTokens!, targetStart: args.targetStart! }),
      ...(adaptive ? { drafted: args.drafted! } : {}),
      ...(tail ? { tailTokens: args.tailTokens!, tailStart: args.tailStart! } : {}),
    },
    workgroups: args.layout.batch,
  });
}

const DRAFT_GATE_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, i: u32, n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;      // [pos (B) | err | stats | seq]
@group(0) @binding(2) var<storage, read> drafted: array<u32>;    // (B) drafts so far | STOPPED
@group(0) @binding(3) var<storage, read_write> args: array<u32>; // [full (n) | gated (n)]
var<workgroup> live: atomic<u32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) t: u32) {
  var mine = false;
  for (var b = t; b < params.B; b += 64u) {
    mine = mine || (state[b] < params.L && drafted[b] == params.i);
  }
  if (mine) { atomicOr(&live, 1u); } // workgroup memory starts at zero
  workgroupBarrier();
  let on = atomicLoad(&live) != 0u;
  for (var j = t; j < params.n; j += 64u) { args[params.n + j] = select(0u, args[j], on); }
}`;

/**
 * The gate of the adaptive draft length after draft step i (< γ): while some unfinished row is
 * still drafting (`drafted[b] = i` without the STOPPED flag), copies the full workgroup counts
 * `args[0, n)` to the gated ones `args[n, 2n)`, else writes zeros there, so the next draft step's
 * indirect dispatches (its forward and sampling) do no work once every row has stopped. One
 * workgroup; no readback.
 *
 * @param gpu the runtime
 * @param args the `state` buffer and its `layout`, `drafted (B)` u32, the step `i`, and
 *   `counts`, a buffer of `2n` u32 with INDIRECT usage whose first half holds the full counts,
 *   `n` (three per gated dispatch)
 * @returns the dispatch
 */
export function draftGateKernel(
  gpu: Gpu,
  args: {
    state: GPUBuffer;
    layout: StateLayout;
    drafted: GPUBuffer;
    i: number;
    counts: GPUBuffer;
    n: number;
  },
): Dispatch {
  return gpu.kernel({
    label: `draft gate after step ${args.i} (${args.layout.batch})`,
    code: DRAFT_GATE_CODE,
    params: { B: args.layout.batch, L: args.layout.seqLen, i: args.i, n: args.n },
    buffers: { state: args.state, drafted: args.drafted, args: args.counts },
    workgroups: 1,
  });
}
