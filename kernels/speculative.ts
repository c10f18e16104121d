/**
 * The acceptance step of speculative decoding on the GPU: the per-row acceptance of Leviathan,
 * Kalman and Matias (2022, arXiv 2211.17192), Algorithm 1, with its bookkeeping in the decoding
 * state (decode_state.ts) and the feed of the next step's first draft forward.
 *
 * @module
 */
import type { KernelSpec } from "./bindings.ts";
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

/**
 * The acceptance kernel, one workgroup per row. It computes the target's p_i from its logits (the
 * WGSL of every sampling kernel, {@link LOGITS_CORE}, so the same bits) only for the rows it
 * needs: x_1.. until the first rejection, then the correction's (or the bonus) row — a + 1 rows
 * instead of γ + 1.
 */
const acceptCode = (
  wg: number,
  cache: number,
  adaptive: boolean,
  feedWidth: 1 | 2 = 2,
): string => /* wgsl */ `
struct Params {
  V: u32, k: u32, invT: f32, greedy: u32,
  B: u32, L: u32, errOff: u32, statsOff: u32, seqOff: u32, statsW: u32,
  seedLo: u32, seedHi: u32, gamma: u32, lenience: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> state: array<u32>;      // [pos (B) | err (B, 2) | stats (B, W) | seq (B, L)]
@group(0) @binding(2) var<storage, read> logits: array<f32>;           // (B, gamma + 1, V) target logits
@group(0) @binding(3) var<storage, read> q: array<f32>;                // (B, gamma, V) draft probs
@group(0) @binding(4) var<storage, read> draft: array<u32>;            // (B, gamma) draft tokens
@group(0) @binding(5) var<storage, read_write> feedTokens: array<u32>; // (B, FEED) next draft feed
@group(0) @binding(6) var<storage, read_write> feedStart: array<u32>;  // (B)
const FEED: u32 = ${feedWidth}u; // tokens the next step's first draft forward takes per row${
  adaptive
    ? "\n@group(0) @binding(7) var<storage, read> drafted: array<u32>;          // (B) k | STOPPED"
    : ""
}
${rowCommonWgsl(wg, cache)}
${PHILOX_WGSL}
${LOGITS_CORE}
${FAIL_ROW_WGSL}
const SOURCE: u32 = ${ROW_ERROR.target << 4}u; // ROW_ERROR.target << 4
var<workgroup> wacc: u32;
var<private> residual: bool; // sample the extra token from max(0, p − q), else from p
var<private> qRow: u32;      // offset of q_a in q

fn weight(j: u32, l: f32, tie: ptr<function, u32>) -> f32 {
  let pv = probOf(j, l, tie);
  if (residual) { return max(0.0, pv - q[qRow + j]); }
  return pv;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let b = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (b >= params.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= params.L) { return; } // finished rows do nothing
  let key = vec2<u32>(params.seedLo, params.seedHi);
  let G = params.gamma;
  // the row's draft length k: Algorithm 1 with γ = k (x_{k+1}..x_γ were not drafted)
  let K = ${adaptive ? "clamp(drafted[b] & 0xffffu, 1u, G)" : "G"};
  // accept x_i while r_i ≤ p_i(x_i) / (lenience · q_i(x_i)); greedy: while x_i = argmax p_i
  var a = 0u;
  loop {
    if (a >= K) { break; }
    let bad = analyze((b * (G + 1u) + a) * params.V, t); // p_{a+1}, only as far as needed
    if (bad != 0u) { // non-finite target logits: stop the row, write nothing (the host throws)
      if (t == 0u) { failRow(b, bad | SOURCE | (a << 8u), pos + a); }
      return;
    }
    if (t == 0u) {
      let x = draft[b * G + a];
      let pv = probAt(x);
      let qv = q[(b * G + a) * params.V + x];
      var ok = pv > 0.0;
      if (params.greedy == 0u) {
        let r = uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.accept}u, a), key);
        ok = r <= pv / (params.lenience * qv);
      }
      wacc = select(0u, 1u, ok);
    }
    if (workgroupUniformLoad(&wacc) == 0u) { break; }
    a++;
  }
  if (a == K) { // the bonus row
    let bad = analyze((b * (G + 1u) + K) * params.V, t);
    if (bad != 0u) {
      if (t == 0u) { failRow(b, bad | SOURCE | (K << 8u), pos + K); }
      return;
    }
  }
  // the extra token: norm(max(0, p_a − q_a)) after a rejection, p_{k+1} when all k passed
  qRow = (b * G + min(a, G - 1u)) * params.V;
  residual = a < K;
  var tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.extra}u, 0u), key));
  if (tok == NONE) { // p_a = q_a exactly (possible only with lenience > 1): sample from p_a
    residual = false;
    tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.extra}u, 1u), key));
  }
  if (t == 0u) {
    if (tok >= params.V) { failRow(b, ${ROW_ERROR.noToken}u | SOURCE | (a << 8u), pos + a); return; }
    let seq = params.seqOff + b * params.L;
    let emitted = min(a, params.L - pos); // accepted drafts that fit below L (pos < L here)
    for (var i = 0u; i < emitted; i++) { state[seq + pos + i] = draft[b * G + i]; }
    if (pos + a < params.L) { state[seq + pos + a] = tok; }
    let next = min(pos + a + 1u, params.L); // rows never run past L
    state[b] = next;
    let st = params.statsOff + b * params.statsW;
    state[st] += 1u;            // steps this row was active
    state[st + 1u] += emitted;  // accepted draft tokens that were emitted
    state[st + 2u] += a;        // accepted draft tokens, emitted or not (the reference's count)
    for (var i = 0u; i < emitted; i++) { state[st + 3u + i] += 1u; } // emitted at draft position i${
  adaptive ? "\n    state[st + 3u + G] += K;    // drafted tokens" : ""
}
    // the next step's first draft forward (n = FEED), as seqFeedKernel (back = FEED) would feed it
    var s = 0u;
    if (next > FEED) { s = next - FEED; }
    for (var j = 0u; j < FEED; j++) { feedTokens[FEED * b + j] = state[seq + min(s + j, params.L - 1u)]; }
    feedStart[b] = s;
  }
}`;

/**
 * The stats width of a speculative decode's state:
 * `[steps, accepted, acceptedRaw, acceptedAt[0..gamma)]`, where `accepted` counts the accepted
 * draft tokens that were emitted (those below seqLen), `acceptedRaw` every accepted draft token
 * (the reference's count, which includes drafts past seqLen that are cut off), and
 * `acceptedAt[i]` the steps whose draft token i + 1 was accepted and emitted; with an adaptive
 * draft length one more word, `drafted`: the draft tokens of all the row's steps (Σ k).
 *
 * @param gamma draft tokens per step
 * @param adaptive whether the draft length is adaptive (the `drafted` word)
 * @returns u32 words per row
 */
export function speculativeStatsWidth(gamma: number, adaptive = false): number {
  return 3 + gamma + (adaptive ? 1 : 0);
}

/** What {@link acceptKernel} takes. */
export type AcceptArgs = SamplingOptions & {
  /** The decoding state `[pos (B) | err (B, 2) | stats (B, W) | seq (B, L)]` u32. */
  state: GPUBuffer;
  /** Its layout (statsWidth W = 3 + gamma, + 1 with `drafted`: {@link speculativeStatsWidth}). */
  layout: StateLayout;
  /** The target's verification logits `(B, gamma + 1, V)` f32. */
  logits: GPUBuffer;
  /** The draft probabilities `(B, gamma, V)` f32. */
  q: GPUBuffer;
  /** The draft tokens `(B, gamma)` u32. */
  draft: GPUBuffer;
  /** Draft tokens per step. */
  gamma: number;
  /** Accept while r ≤ p / (lenience · q); 1 keeps the target's law. */
  lenience: number;
  /** Seed of the Philox key. */
  seed: number;
  /** The next step's first draft forward's tokens `(B, feedWidth)` u32, written. */
  feedTokens: GPUBuffer;
  /** And its start positions `(B)` u32, written. */
  feedStart: GPUBuffer;
  /**
   * Tokens that forward takes per row (default 2: a separate draft's look-back, as
   * `seqFeedKernel` with back = 2; 1: self-speculation's `seq[pos − 1]` at pos − 1).
   */
  feedWidth?: 1 | 2;
  /**
   * Adaptive draft length: each row's drafts this step `(B)` u32, k in the low 16 bits (the draft
   * kernels' `drafted`); without it every row drafted gamma.
   */
  drafted?: GPUBuffer;
};

/** A builder of the acceptance dispatch: {@link acceptKernel}, or a test's variant of it. */
export type AcceptKernel = (gpu: Gpu, args: AcceptArgs) => Dispatch;

/**
 * The kernel spec of {@link acceptKernel} (its label, WGSL, params, buffers and workgroups), for
 * building the dispatch, or a variant of it in tests.
 *
 * @param gpu the runtime
 * @param args as {@link acceptKernel}
 * @returns the spec for {@link Gpu.kernel}
 * @throws Error on a wrong statsWidth
 */
export function acceptSpec(gpu: Gpu, args: AcceptArgs): KernelSpec {
  const adaptive = args.drafted !== undefined;
  const width = speculativeStatsWidth(args.gamma, adaptive);
  if (args.layout.statsWidth !== width) {
    throw new Error(
      `specdec: acceptKernel needs statsWidth ${width}, got ${args.layout.statsWidth}`,
    );
  }
  return {
    label: `accept (${args.layout.batch}, gamma ${args.gamma}${adaptive ? ", adaptive" : ""})`,
    code: acceptCode(
      samplingWorkgroupSize(args.numTokens, gpu.isSoftware),
      samplingCacheLength(args.numTokens, gpu.isSoftware),
      adaptive,
      args.feedWidth ?? 2,
    ),
    params: {
      ...samplingParams(args),
      ...layoutParams(args.layout),
      ...seedParams(args.seed),
      gamma: args.gamma,
      lenience: args.lenience,
    },
    buffers: {
      state: args.state,
      logits: args.logits,
      q: args.q,
      draft: args.draft,
      feedTokens: args.feedTokens,
      feedStart: args.feedStart,
      ...(adaptive ? { drafted: args.drafted! } : {}),
    },
    workgroups: args.layout.batch,
  };
}

/**
 * Acceptance for every unfinished row b (pos < L) of a speculative step (Leviathan et al.,
 * Algorithm 1): with draft tokens `x_1..x_γ` sampled from `q_1..q_γ` and the target's
 * probabilities `p_1..p_{γ+1}` (filtered and tempered from its logits, as the draft's q),
 * accepts x_i while `r_i ≤ p_i(x_i) / (lenience · q_i(x_i))` (r_i uniform, counter
 * (b, pos, accept, i − 1)); greedy (temperature 0, p and q one-hot): while x_i is the argmax of
 * p_i. At the first rejection i it samples the correction from `norm(max(0, p_i − q_i))` (from
 * p_i if that is all zero, which needs lenience > 1); if all γ pass, the bonus token from
 * p_{γ+1} (counter (b, pos, extra, 0)). It writes the accepted tokens and the extra token at
 * `seq[b, pos ..]` (only below L), sets `pos = min(pos + a + 1, L)`, and adds to
 * `stats[b] = [steps, accepted, acceptedRaw, acceptedAt[0..γ)]` (see {@link speculativeStatsWidth}:
 * `accepted` counts only the drafts emitted below L). A row whose target logits it reads are not
 * finite (NaN; +∞ unless greedy; all −∞) is stopped instead and its error recorded (decode_state.ts,
 * `ROW_ERROR`): no token is written for it. It also feeds the next step's first draft
 * forward (n = 2) from the new state, as {@link "./decode_state.ts" | seqFeedKernel} with
 * `back = 2` would: one dispatch less per step.
 *
 * With `drafted` (an adaptive draft length, decode_step.ts) row b drafted only
 * `k = drafted[b] & 0xffff` tokens (1 ≤ k ≤ γ) this step: all of the above holds with γ = k for
 * that row (Algorithm 1 with γ = k; the bonus is sampled from p_{k+1}, the target at the
 * position after x_k, not from a residual; the verification rows after k + 1 are never read), and
 * k is added to the row's `drafted` stats word (the last one).
 *
 * p_i is computed here only for the rows read (a + 1 of the γ + 1), so no probabilities
 * dispatch runs per step.
 *
 * @param gpu the runtime
 * @param args `state` and `layout` (statsWidth = 3 + gamma), the target's `logits
 *   (B, gamma + 1, V)` f32, `q (B, gamma, V)` f32, `draft (B, gamma)` u32, `gamma`, `lenience`,
 *   `seed`, the sampling options, and the next draft forward's `feedTokens (B, 2)`,
 *   `feedStart (B)` u32; optionally `drafted (B)` u32 (statsWidth then 4 + gamma)
 * @returns the dispatch
 * @throws Error on a wrong statsWidth
 */
export function acceptKernel(gpu: Gpu, args: AcceptArgs): Dispatch {
  return gpu.kernel(acceptSpec(gpu, args));
}
