/**
 * Speculative decoding on the GPU: feeding forwards from the per-row decoding state, and the
 * per-row acceptance of Leviathan et al. (2023), Algorithm 1, with its bookkeeping.
 *
 * All state lives in one u32 buffer (see {@link StateLayout}): `pos (B)` is each row's current
 * length, `seq (B, L)` holds prompt + generated tokens and `stats (B, W)` counts steps and
 * accepted draft tokens. Kernels read positions from it, so the host encodes the same dispatches
 * every step; rows advance independently and rollback is implicit (the next step's forward
 * starts at the row's new `pos − 1`, overwriting the rejected keys and values).
 *
 * @module
 */
import { type Dispatch, f32bits, type Gpu } from "./gpu.ts";
import {
  RNG_PURPOSE,
  ROW_WGSL,
  ROW_WORDS,
  type SamplingOptions,
  samplingWorkgroupSize,
  seedWords,
  type StateLayout,
  stateOffsets,
} from "./sampling.ts";

const SEQ_FEED_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, seqOff: u32, n: u32, back: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | stats | seq (B, L)]
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>; // (B, n)
@group(0) @binding(3) var<storage, read_write> start: array<u32>;  // (B)
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = g.x + g.y * nwg.x * 64u;
  if (idx >= P.B * P.n) { return; }
  let b = idx / P.n;
  let j = idx % P.n;
  let pos = state[b];
  var s = 0u;
  if (pos > P.back) { s = pos - P.back; }
  tokens[idx] = state[P.seqOff + b * P.L + min(s + j, P.L - 1u)];
  if (j == 0u) { start[b] = s; }
}`;

/**
 * Feeds a forward of `n` tokens per row from the sequence: the tokens `seq[b, s .. s + n)` at
 * start `s = max(pos[b] − back, 0)` (indices clamped to the sequence). Base steps use
 * `n = 1, back = 1`; the first draft step `n = 2, back = 2`; the prefill `n = P − 1, back = P`.
 *
 * @param gpu the runtime
 * @param args the `state` buffer and its `layout`, the plan's `tokens (B, n)` and `start (B)` u32
 *   buffers, `n` and `back`
 * @returns the dispatch
 */
export function seqFeedKernel(
  gpu: Gpu,
  args: {
    state: GPUBuffer;
    layout: StateLayout;
    tokens: GPUBuffer;
    start: GPUBuffer;
    n: number;
    back: number;
  },
): Dispatch {
  const { batch: B, seqLen: L } = args.layout;
  return gpu.kernel({
    label: `feed from seq (${B}, ${args.n})`,
    code: SEQ_FEED_CODE,
    buffers: [args.state, args.tokens, args.start],
    params: [B, L, stateOffsets(args.layout).seq, args.n, args.back],
    workgroups: Math.ceil((B * args.n) / 64),
  });
}

const TARGET_FEED_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, seqOff: u32, gamma: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | stats | seq (B, L)]
@group(0) @binding(2) var<storage, read> draft: array<u32>;        // (B, gamma)
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>; // (B, gamma + 1)
@group(0) @binding(4) var<storage, read_write> start: array<u32>;  // (B)
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = P.gamma + 1u;
  let idx = g.x + g.y * nwg.x * 64u;
  if (idx >= P.B * n) { return; }
  let b = idx / n;
  let j = idx % n;
  let pos = state[b]; // ≥ 1: the prompt is never empty
  if (j == 0u) {
    tokens[idx] = state[P.seqOff + b * P.L + min(pos - 1u, P.L - 1u)];
    start[b] = pos - 1u;
  } else {
    tokens[idx] = draft[b * P.gamma + j - 1u];
  }
}`;

/**
 * Feeds the target's verification forward: `[seq[b, pos − 1], x_1 .. x_γ]` at start `pos − 1`.
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
    buffers: [args.state, args.draft, args.tokens, args.start],
    params: [B, L, stateOffsets(args.layout).seq, args.gamma],
    workgroups: Math.ceil((B * (args.gamma + 1)) / 64),
  });
}

/**
 * The acceptance kernel; `residual = false` is the deliberately wrong variant. With `fromLogits`
 * it reads the target's logits instead of its probabilities and computes p_i (the very WGSL of
 * probsKernel, so the same bits) only for the rows it needs: x_1.. until the first rejection,
 * then the correction's (or the bonus) row — a + 1 rows instead of γ + 1, and no probs dispatch.
 */
const acceptCode = (
  wg: number,
  residual: boolean,
  feed: boolean,
  fromLogits: boolean,
): string => /* wgsl */ `
struct Params {
  ${ROW_WGSL.samplingFields} ${ROW_WGSL.layoutFields}
  seedLo: u32, seedHi: u32, gamma: u32, lenience: f32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> state: array<u32>; // [pos (B) | stats (B, W) | seq (B, L)]
${
  fromLogits
    ? "@group(0) @binding(2) var<storage, read> logits: array<f32>;      // (B, gamma + 1, V) target logits"
    : "@group(0) @binding(2) var<storage, read> p: array<f32>;           // (B, gamma + 1, V) target probs"
}
@group(0) @binding(3) var<storage, read> q: array<f32>;           // (B, gamma, V) draft probs
@group(0) @binding(4) var<storage, read> draft: array<u32>;       // (B, gamma) draft tokens
${
  feed
    ? `@group(0) @binding(5) var<storage, read_write> feedTokens: array<u32>; // (B, 2) next draft feed
@group(0) @binding(6) var<storage, read_write> feedStart: array<u32>;  // (B)`
    : ""
}
${ROW_WGSL.common(wg)}
${ROW_WGSL.philox}
${fromLogits ? ROW_WGSL.logitsCore : ""}
const RESIDUAL: u32 = ${residual ? 1 : 0}u;
var<workgroup> wacc: u32;
var<private> wMode: u32; // 1: max(0, p − q), 0: p
var<private> pRow: u32;
var<private> qRow: u32;

fn weight(j: u32, tie: ptr<function, u32>) -> f32 {
  let pv = ${fromLogits ? "logitProb(j, tie)" : "p[pRow + j]"};
  if (wMode == 1u) { return max(0.0, pv - q[qRow + j]); }
  return pv;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) t: u32) {
  let b = wid.x + wid.y * nwg.x;
  if (b >= P.B) { return; }
  if (t == 0u) { wword = state[b]; }
  let pos = workgroupUniformLoad(&wword);
  if (pos >= P.L) { return; } // finished rows do nothing
  let key = vec2<u32>(P.seedLo, P.seedHi);
  let G = P.gamma;
  // accept x_i while r_i ≤ p_i(x_i) / (lenience · q_i(x_i)); greedy: while x_i = argmax p_i
${
  fromLogits
    ? `  var a = 0u;
  loop {
    if (a >= G) { break; }
    analyze((b * (G + 1u) + a) * P.V, t); // p_{a+1}, only as far as needed
    if (t == 0u) {
      let x = draft[b * G + a];
      let pv = probAt(x);
      let qv = q[(b * G + a) * P.V + x];
      var ok = pv > 0.0;
      if (P.greedy == 0u) {
        let r = uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.accept}u, a), key);
        ok = r <= pv / (P.lenience * qv);
      }
      wacc = select(0u, 1u, ok);
    }
    if (workgroupUniformLoad(&wacc) == 0u) { break; }
    a++;
  }
  if (a == G) { analyze((b * (G + 1u) + G) * P.V, t); } // the bonus row`
    : `  if (t == 0u) {
    var a = 0u;
    loop {
      if (a >= G) { break; }
      let x = draft[b * G + a];
      let pv = p[(b * (G + 1u) + a) * P.V + x];
      let qv = q[(b * G + a) * P.V + x];
      var ok = pv > 0.0;
      if (P.greedy == 0u) {
        let r = uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.accept}u, a), key);
        ok = r <= pv / (P.lenience * qv);
      }
      if (!ok) { break; }
      a++;
    }
    wacc = a;
  }
  let a = workgroupUniformLoad(&wacc);`
}
  // the extra token: norm(max(0, p_a − q_a)) after a rejection, p_{γ+1} when all passed
  pRow = (b * (G + 1u) + a) * P.V;
  qRow = (b * G + min(a, G - 1u)) * P.V;
  wMode = select(0u, RESIDUAL, a < G);
  var tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.extra}u, 0u), key));
  if (tok == NONE) { // p_a = q_a exactly (possible only with lenience > 1): sample from p_a
    wMode = 0u;
    tok = invCdf(t, uniform01(vec4<u32>(b, pos, ${RNG_PURPOSE.extra}u, 1u), key));
  }
  if (t == 0u) {
    let seq = P.seqOff + b * P.L;
    for (var i = 0u; i < a; i++) {
      if (pos + i < P.L) { state[seq + pos + i] = draft[b * G + i]; }
    }
    if (pos + a < P.L) { state[seq + pos + a] = tok; }
    let next = min(pos + a + 1u, P.L); // rows never run past L
    state[b] = next;
    let st = P.statsOff + b * P.statsW;
    state[st] += 1u;      // steps this row was active
    state[st + 1u] += a;  // accepted draft tokens
    for (var i = 0u; i < a; i++) { state[st + 2u + i] += 1u; } // accepted at draft position i
    ${
  feed
    ? `// the next step's first draft forward (n = 2), as seqFeedKernel (back = 2) would feed it
    var s = 0u;
    if (next > 2u) { s = next - 2u; }
    feedTokens[2u * b] = state[seq + min(s, P.L - 1u)];
    feedTokens[2u * b + 1u] = state[seq + min(s + 1u, P.L - 1u)];
    feedStart[b] = s;`
    : ""
}
  }
}`;

/**
 * The stats width of a speculative decode's state: `[steps, accepted, acceptedAt[0..gamma)]`.
 *
 * @param gamma draft tokens per step
 * @returns u32 words per row
 */
export function speculativeStatsWidth(gamma: number): number {
  return 2 + gamma;
}

/**
 * Acceptance for every unfinished row b (pos < L) of a speculative step (Leviathan et al.,
 * Algorithm 1): with draft tokens `x_1..x_γ` sampled from `q_1..q_γ` and target probabilities
 * `p_1..p_{γ+1}`, accepts x_i while `r_i ≤ p_i(x_i) / (lenience · q_i(x_i))` (r_i uniform,
 * counter (b, pos, accept, i − 1)); greedy (temperature 0, p and q one-hot): while x_i is the
 * argmax of p_i. At the first rejection i it samples the correction from
 * `norm(max(0, p_i − q_i))` (from p_i if that is all zero, which needs lenience > 1); if all γ
 * pass, the bonus token from p_{γ+1} (counter (b, pos, extra, 0)). It writes the accepted tokens
 * and the extra token at `seq[b, pos ..]` (only below L), sets `pos = min(pos + a + 1, L)`, and
 * adds to `stats[b] = [steps, accepted, acceptedAt[0..γ)]`. With `feedTokens (B, 2)` and
 * `feedStart (B)` it also feeds the next step's first draft forward (n = 2) from the new state,
 * as {@link seqFeedKernel} with `back = 2` would: one dispatch less per step.
 *
 * The target's p comes either from `p` (probsKernel's output) or, with `logits` instead, is
 * computed here row by row as needed by probsKernel's own WGSL (the same bits): a + 1 of the
 * γ + 1 rows, and no probs dispatch per step.
 *
 * @param gpu the runtime
 * @param args `state` and `layout` (statsWidth = 2 + gamma), either `p (B, gamma + 1, V)` f32
 *   probabilities or `logits (B, gamma + 1, V)` f32, `q (B, gamma, V)` f32, `draft (B, gamma)`
 *   u32, `gamma`, `lenience`, `seed`, the sampling options (with `p`, only
 *   `temperature === 0` matters), `residual` (default true; false is a deliberately WRONG
 *   sampler, corrections from p instead of max(0, p − q), for tests), and optionally the next
 *   draft forward's `feedTokens (B, 2)`, `feedStart (B)` u32
 * @returns the dispatch
 * @throws Error unless exactly one of `p` and `logits` is given, or on a wrong statsWidth
 */
export function acceptKernel(
  gpu: Gpu,
  args: SamplingOptions & {
    state: GPUBuffer;
    layout: StateLayout;
    p?: GPUBuffer;
    logits?: GPUBuffer;
    q: GPUBuffer;
    draft: GPUBuffer;
    gamma: number;
    lenience: number;
    seed: number;
    residual?: boolean;
    feedTokens?: GPUBuffer;
    feedStart?: GPUBuffer;
  },
): Dispatch {
  const feed = !!(args.feedTokens && args.feedStart);
  const target = args.logits ?? args.p;
  if (!target || (args.logits && args.p)) {
    throw new Error("specdec: acceptKernel needs exactly one of p (probabilities) or logits");
  }
  if (args.layout.statsWidth !== speculativeStatsWidth(args.gamma)) {
    throw new Error(
      `specdec: acceptKernel needs statsWidth ${speculativeStatsWidth(args.gamma)}, got ` +
        `${args.layout.statsWidth}`,
    );
  }
  return gpu.kernel({
    label: `accept (${args.layout.batch}, gamma ${args.gamma})`,
    code: acceptCode(
      samplingWorkgroupSize(args.numTokens, gpu.isSoftware),
      args.residual ?? true,
      feed,
      !!args.logits,
    ),
    buffers: [
      args.state,
      target,
      args.q,
      args.draft,
      ...(feed ? [args.feedTokens!, args.feedStart!] : []),
    ],
    params: [
      ...ROW_WORDS.sampling(args),
      ...ROW_WORDS.layout(args.layout),
      ...seedWords(args.seed),
      args.gamma,
      f32bits(args.lenience),
    ],
    workgroups: args.layout.batch,
  });
}
