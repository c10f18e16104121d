/**
 * The slot copy that lets self-speculative verification skip the blocks below the exit
 * (model/self_speculative.ts) on the unfused path: it keeps a one-token draft forward's residual
 * stream after block k − 1 in its slot of the verification's input `(B, γ + 1, C)`. The fused
 * path stores the slot in the epilogue of block k − 1's last GEMV instead (kernels/fused_linear.ts,
 * the same rule). The tail forward's feed is the last draft step's sampling kernel's
 * (kernels/decode_step.ts).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { grid } from "./gpu.ts";

/** Invocations per workgroup of the slot copy. */
const WG = 64;

/**
 * The slot copy: row b's stream `x[b]` goes to `hidden[b, slot]` with slot = `start[b] − (pos − 1)`,
 * the forward's position relative to the step's first verified position `pos − 1`. Finished rows
 * and slots out of range (a finished row's stale start) write nothing.
 */
const SLOT_COPY_CODE = /* wgsl */ `
struct Params { B: u32, C: u32, slots: u32, L: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;        // [pos (B) | …]
@group(0) @binding(2) var<storage, read> start: array<u32>;        // (B) the forward's positions
@group(0) @binding(3) var<storage, read> x: array<f32>;            // (B, C) its stream
@group(0) @binding(4) var<storage, read_write> hidden: array<f32>; // (B, slots, C)
const WG: u32 = ${WG}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (i >= params.B * params.C) { return; }
  let b = i / params.C;
  let pos = state[b];
  if (pos >= params.L || pos == 0u) { return; }
  let slot = start[b] + 1u - pos; // wraps to a huge value below pos − 1
  if (slot >= params.slots) { return; }
  hidden[(b * params.slots + slot) * params.C + i % params.C] = x[i];
}`;

/**
 * Copies each unfinished row's residual stream `x (B, C)` of a one-token forward into
 * `hidden (B, slots, C)` at slot `start[b] − (pos[b] − 1)`, where `start` is the forward's
 * position and `pos` the row's length in the decoding state: draft step i (input at
 * `pos − 2 + i`) fills slot i − 1. Deriving the slot from the positions lets one dispatch serve
 * every draft step, and a row that stopped drafting early (whose feed stays at its last draft)
 * rewrites that draft's slot with the same values. Finished rows and slots ≥ `slots` are skipped.
 *
 * @param gpu the runtime
 * @param args the decoding `state` (pos read at words 0..B), `start (B)` u32, `x (B, C)` f32,
 *   `hidden (B, slots, C)` f32 written, `B`, `C`, `slots` (γ + 1) and `L` (the decode's length)
 * @returns the dispatch
 * @example
 * ```ts ignore
 * const copy = slotCopyKernel(gpu, { state, start: d1.start, x: d1.layers[0].x, hidden, B, C, slots: G + 1, L });
 * ```
 */
export function slotCopyKernel(
  gpu: Gpu,
  args: {
    state: GPUBuffer;
    start: GPUBuffer;
    x: GPUBuffer;
    hidden: GPUBuffer;
    B: number;
    C: number;
    slots: number;
    L: number;
  },
): Dispatch {
  const { B, C, slots, L } = args;
  return gpu.kernel({
    label: `hidden slot copy (${B}, ${slots}, ${C})`,
    code: SLOT_COPY_CODE,
    params: { B, C, slots, L },
    buffers: { state: args.state, start: args.start, x: args.x, hidden: args.hidden },
    workgroups: grid(Math.ceil((B * C) / WG)),
  });
}
