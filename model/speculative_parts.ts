/**
 * What the two speculative engines (decoding.ts: a separate draft; self_speculative.ts: the
 * model's exit head) share: their step buffers, and the adaptive draft length's gate (see
 * `SpeculativeOptions.draftThreshold`): after each draft step a one-workgroup kernel checks
 * whether any row is still drafting, and the later draft forwards and samplings of the step read
 * their workgroup counts from a buffer it rewrites, so once every row has stopped they run zero
 * workgroups without a readback.
 *
 * @module
 */
import type { StateLayout } from "../kernels/decode_state.ts";
import { draftGateKernel } from "../kernels/decode_step.ts";
import { type Dispatch, type Gpu, grid, INDIRECT_STORAGE } from "../kernels/gpu.ts";
import type { ForwardPlan } from "./forward_plan.ts";
import { type cleanupList, initialState, type StepPart } from "./decoding_engine.ts";

/** The buffers of a speculative decoding step (see {@link speculativeBuffers}). */
export interface SpeculativeBuffers {
  /** The decoding state `[pos (B) | err (B, 2) | stats (B, W) | seq (B, L)]` u32. */
  state: GPUBuffer;
  /** The draft's probabilities `(B, γ, V)` f32. */
  q: GPUBuffer;
  /** The draft tokens `(B, γ)` u32. */
  drafts: GPUBuffer;
  /** Each row's drafts this step `(B)` u32 (k | STOPPED), with an adaptive draft length only. */
  drafted?: GPUBuffer;
  /** The draft sampling kernels' adaptive arguments: `{ drafted, threshold }`, or none. */
  adapt: { drafted?: GPUBuffer; threshold?: number };
}

/**
 * Allocates a speculative step's buffers, each freed by `cleanup`.
 *
 * @param gpu the runtime
 * @param label the engine's name, for buffer labels
 * @param layout the state's layout
 * @param prompt the prompt rows
 * @param G gamma
 * @param V vocabulary size
 * @param draftThreshold the adaptive draft length's threshold (0: a fixed gamma, no `drafted`)
 * @param cleanup where each buffer's destroy goes
 * @returns the buffers
 */
export function speculativeBuffers(
  gpu: Gpu,
  label: string,
  layout: StateLayout,
  prompt: number[][],
  G: number,
  V: number,
  draftThreshold: number,
  cleanup: ReturnType<typeof cleanupList>,
): SpeculativeBuffers {
  const B = layout.batch;
  const buffer = (name: string, bytes: number) => {
    const b = gpu.buffer(`${label} ${name}`, bytes);
    cleanup.add(() => b.destroy());
    return b;
  };
  const state = initialState(gpu, layout, prompt, label);
  cleanup.add(() => state.destroy());
  const q = buffer(`q (${B}, ${G}, ${V})`, B * G * V * 4);
  const drafts = buffer(`draft tokens u32 (${B}, ${G})`, B * G * 4);
  // adaptive draft length: each row's drafts this step (k | STOPPED), decode_step.ts
  const drafted = draftThreshold > 0 ? buffer(`drafted u32 (${B})`, B * 4) : undefined;
  const adapt = drafted ? { drafted, threshold: draftThreshold } : {};
  return { state, q, drafts, drafted, adapt };
}

/** A draft gate: its counts buffer, its kernel and the gated copy of a dispatch. */
export interface DraftGate {
  /** `[full (n) | gated (n)]` u32 workgroup counts, the gated half rewritten by each gate. */
  counts: GPUBuffer;
  /** The gate kernel that runs after draft step i. */
  after: (i: number) => Dispatch;
  /** Dispatch d with its counts read from slot j (0..D−1: the forward's, D: a sampling). */
  gated: (d: Dispatch, j: number) => Dispatch;
}

/**
 * The gate of the adaptive draft length: `after(i)` is the gate kernel that runs after draft step
 * i, and `gated(d, j)` the dispatch d with its workgroup counts read from slot j of `counts`
 * (slots 0..D−1: the draft forward's D dispatches, slot D: a draft sampling), which the gate sets
 * to d's counts while some row is still drafting and to zeros once every row has stopped.
 *
 * @param gpu the runtime
 * @param state the decoding state
 * @param layout its layout
 * @param drafted u32 (B): each row's drafts this step (k | STOPPED)
 * @param d1 the one-token draft forward whose dispatches are gated
 * @param B rows
 * @returns the gate; destroy `counts` when done
 */
export function draftGate(
  gpu: Gpu,
  state: GPUBuffer,
  layout: StateLayout,
  drafted: GPUBuffer,
  d1: ForwardPlan,
  B: number,
): DraftGate {
  const full = [...d1.dispatches.map((d) => d.workgroups), grid(B)].flat();
  const n = full.length; // [full (n) | gated (n)] u32, the gated half rewritten by each gate
  const counts = gpu.upload(
    `draft gate counts u32 (2, ${n / 3}, 3)`,
    new Uint32Array([...full, ...full]),
    INDIRECT_STORAGE,
  );
  return {
    counts,
    after: (i) => draftGateKernel(gpu, { state, layout, drafted, i, counts, n }),
    gated: (d, j) => ({ ...d, indirect: { buffer: counts, offset: 4 * (n + 3 * j) } }),
  };
}

/**
 * The draft parts of steps `from..G`: the one-token draft forward and its sampling each. With a
 * gate, each step after the first runs behind the gate of the step before, and once every row
 * has stopped its forward and sampling run zero workgroups; the last sampling always runs,
 * since it feeds the verification.
 *
 * @param forward the one-token draft forward's dispatches
 * @param sample draft step i's sampling kernel
 * @param from the first step built here (1 or 2)
 * @param G gamma, the last step
 * @param gate the adaptive draft length's gate, or undefined for a fixed gamma
 * @returns the parts, in order
 */
export function draftParts(
  forward: Dispatch[],
  sample: (i: number) => Dispatch,
  from: number,
  G: number,
  gate?: DraftGate,
): StepPart[] {
  const parts: StepPart[] = [];
  for (let i = from; i <= G; i++) {
    const s = sample(i);
    if (!gate || i === 1) {
      parts.push(
        { name: "draft forward n=1", dispatches: forward },
        { name: "draft sample", dispatches: [s] },
      );
      continue;
    }
    parts.push(
      { name: "draft gate", dispatches: [gate.after(i - 1)] },
      { name: "draft forward n=1", dispatches: forward.map(gate.gated) },
      { name: "draft sample", dispatches: [i < G ? gate.gated(s, forward.length) : s] },
    );
  }
  return parts;
}
