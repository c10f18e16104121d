/**
 * The decoding state on the GPU and the kernel that feeds forwards from it.
 *
 * All state lives in one u32 buffer (see {@link StateLayout}), so one readback per chunk of steps
 * gets everything: `pos (B)` is each row's current length, `seq (B, L)` holds prompt + generated
 * tokens and `stats (B, W)` counts steps (and, for speculative decoding, accepted draft tokens).
 * Kernels read positions from it, so the host encodes the same dispatches every step; rows
 * advance independently and rollback is implicit (the next step's forward starts at the row's
 * new `pos − 1`, overwriting the rejected keys and values).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/**
 * Where the decoding state lives in its single u32 buffer:
 * `[pos (B) | stats (B, statsWidth) | seq (B, seqLen)]`.
 */
export interface StateLayout {
  /** Rows B. */
  batch: number;
  /** Sequence length L (prompt + generated). */
  seqLen: number;
  /** u32 counters per row (base: 1 = steps; speculative: 2 + gamma). */
  statsWidth: number;
}

/**
 * Word offsets of the parts of the state buffer and its total size in words.
 *
 * @param layout the state's layout
 * @returns the offsets of pos, stats and seq, and the total words
 */
export function stateOffsets(
  layout: StateLayout,
): { pos: number; stats: number; seq: number; words: number } {
  const { batch: B, seqLen: L, statsWidth: W } = layout;
  return { pos: 0, stats: B, seq: B + B * W, words: B + B * W + B * L };
}

/**
 * The params `B, L, statsOff, seqOff, statsW` of a kernel that reads or writes the state.
 *
 * @param layout the state's layout
 * @returns the params fields by name
 */
export function layoutParams(
  layout: StateLayout,
): { B: number; L: number; statsOff: number; seqOff: number; statsW: number } {
  const o = stateOffsets(layout);
  return {
    B: layout.batch,
    L: layout.seqLen,
    statsOff: o.stats,
    seqOff: o.seq,
    statsW: layout.statsWidth,
  };
}

const SEQ_FEED_CODE = /* wgsl */ `
struct Params { B: u32, L: u32, seqOff: u32, n: u32, back: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | stats | seq (B, L)]
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
