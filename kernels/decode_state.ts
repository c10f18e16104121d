/**
 * The decoding state on the GPU and the kernel that feeds forwards from it.
 *
 * All state lives in one u32 buffer (see {@link StateLayout}), so one readback per chunk of steps
 * gets everything: `pos (B)` is each row's current length, `err (B, 2)` says why a row was stopped
 * (0 while it is fine; see {@link ROW_ERROR}), `seq (B, L)` holds prompt + generated tokens and
 * `stats (B, W)` counts steps (and, for speculative decoding, accepted draft tokens).
 * Kernels read positions from it, so the host encodes the same dispatches every step; rows
 * advance independently and rollback is implicit (the next step's forward starts at the row's
 * new `pos − 1`, overwriting the rejected keys and values).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/**
 * Where the decoding state lives in its single u32 buffer:
 * `[pos (B) | err (B, 2) | stats (B, statsWidth) | seq (B, seqLen)]`.
 */
export interface StateLayout {
  /** Rows B. */
  batch: number;
  /** Sequence length L (prompt + generated). */
  seqLen: number;
  /** u32 counters per row (base: 1 = steps; speculative: 3 + gamma). */
  statsWidth: number;
}

/**
 * Word offsets of the parts of the state buffer and its total size in words.
 *
 * @param layout the state's layout
 * @returns the offsets of pos, err, stats and seq, and the total words
 */
export function stateOffsets(
  layout: StateLayout,
): { pos: number; err: number; stats: number; seq: number; words: number } {
  const { batch: B, seqLen: L, statsWidth: W } = layout;
  const stats = 3 * B;
  return { pos: 0, err: B, stats, seq: stats + B * W, words: stats + B * W + B * L };
}

/**
 * The params `B, L, errOff, statsOff, seqOff, statsW` of a kernel that reads or writes the state.
 *
 * @param layout the state's layout
 * @returns the params fields by name
 */
export function layoutParams(
  layout: StateLayout,
): { B: number; L: number; errOff: number; statsOff: number; seqOff: number; statsW: number } {
  const o = stateOffsets(layout);
  return {
    B: layout.batch,
    L: layout.seqLen,
    errOff: o.err,
    statsOff: o.stats,
    seqOff: o.seq,
    statsW: layout.statsWidth,
  };
}

/**
 * The error word of a stopped row, `err[b, 0]` (`err[b, 1]` is the position whose token could not
 * be drawn): `why | source << 4 | index << 8`, 0 while the row is fine.
 *
 * - why: {@link ROW_ERROR}.nan (a NaN anywhere in the row, even where top-k would drop it),
 *   `posInf` (a +∞ when the temperature is above 0), `noMax` (every logit −∞: nothing has
 *   probability; reported only when neither of the others is), `noToken` (the sampler found no
 *   token of positive weight; a safety net, not expected with finite logits);
 * - source: {@link ROW_ERROR}.target (the decoded model in base decoding, the target in
 *   speculative decoding) or `draft`;
 * - index: the draft token i (1..γ) of a draft step, or the verification row a (0..γ) of the
 *   acceptance; 0 in base decoding.
 *
 * Policy (like PyTorch's `multinomial`, which refuses probabilities with NaN or Inf): a row whose
 * logits are not usable stops (it is marked finished, `pos = L`, and no token is written for it)
 * and the host throws at the next readback, naming the row, the position and the model. NaN is
 * never usable; +∞ is usable only at temperature 0 (the argmax is the first +∞), since
 * `softmax` of +∞ is ∞/∞; −∞ is a masked logit (probability 0) and fine as long as some logit is
 * larger.
 */
export const ROW_ERROR: {
  readonly nan: 1;
  readonly posInf: 2;
  readonly noMax: 4;
  readonly noToken: 8;
  readonly target: 1;
  readonly draft: 2;
} = { nan: 1, posInf: 2, noMax: 4, noToken: 8, target: 1, draft: 2 } as const;

/** A row's error, decoded from its two `err` words (see {@link ROW_ERROR}). */
export interface RowError {
  /** The row. */
  row: number;
  /** `"target"` or `"draft"`: the model whose logits could not be used. */
  source: "target" | "draft";
  /** What was wrong with them, e.g. `["NaN"]` or `["+Inf"]`. */
  reasons: string[];
  /** Draft token i of the step (draft), or verification row a (target of speculative). */
  index: number;
  /** The sequence position whose token could not be drawn. */
  position: number;
}

/**
 * The rows the kernels stopped, read from a state buffer's words.
 *
 * @param layout the state's layout
 * @param words the state buffer's contents
 * @returns one entry per stopped row, in row order (empty when every row is fine)
 */
export function rowErrors(layout: StateLayout, words: Uint32Array): RowError[] {
  const off = stateOffsets(layout).err;
  const out: RowError[] = [];
  for (let b = 0; b < layout.batch; b++) {
    const code = words[off + 2 * b];
    if (code === 0) continue;
    const why = code & 15;
    const reasons = [
      [ROW_ERROR.nan, "NaN"],
      [ROW_ERROR.posInf, "+Inf"],
      [ROW_ERROR.noMax, "every logit -Inf"],
      [ROW_ERROR.noToken, "no token of positive probability"],
    ].flatMap(([bit, name]) => why & (bit as number) ? [name as string] : []);
    out.push({
      row: b,
      source: ((code >>> 4) & 3) === ROW_ERROR.draft ? "draft" : "target",
      reasons,
      index: code >>> 8,
      position: words[off + 2 * b + 1],
    });
  }
  return out;
}

/**
 * WGSL: `failRow(b, code, at)` stops row b (needs `state` read_write and `params.errOff, L`): the
 * first error of the row and its position are kept, and `pos = L` makes every later kernel skip
 * the row, so nothing more is written for it.
 */
export const FAIL_ROW_WGSL: string = /* wgsl */ `
fn failRow(b: u32, code: u32, at: u32) {
  if (state[params.errOff + 2u * b] == 0u) {
    state[params.errOff + 2u * b] = code;
    state[params.errOff + 2u * b + 1u] = at;
  }
  state[b] = params.L;
}
`;

const SEQ_FEED_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, seqOff: u32, n: u32, back: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | err | stats | seq]
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>; // (B, n)
@group(0) @binding(3) var<storage, read_write> start: array<u32>;  // (B)
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = g.x + g.y * nwg.x * 64u;
  if (idx >= params.B * params.n) { return; }
  let b = idx / params.n;
  let j = idx % params.n;
  let pos = state[b];
  var s = 0u;
  if (pos > params.back) { s = pos - params.back; }
  tokens[idx] = state[params.seqOff + b * params.L + min(s + j, params.L - 1u)];
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
    params: { B, L, seqOff: stateOffsets(args.layout).seq, n: args.n, back: args.back },
    buffers: { state: args.state, tokens: args.tokens, start: args.start },
    workgroups: Math.ceil((B * args.n) / 64),
  });
}
