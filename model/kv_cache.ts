/**
 * Per-row KV cache: one buffer per layer holding keys and values of every row at every position.
 *
 * There is no length field to copy or realign: each forward pass reads a per-row `start` buffer
 * (u32, one per row) that says where its tokens go; keys and values beyond a row's start are
 * simply ignored and later overwritten. Rolling a row back to any shorter length is therefore
 * O(1): the next forward uses a smaller start.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { kvTexture, kvTextureSupported } from "../kernels/attention_decode.ts";

/** Keys and values for `batch` rows of up to `maxLen` positions, per layer. */
export class KVCache {
  /** Rows. */
  readonly batch: number;
  /** Positions per row. */
  readonly maxLen: number;
  /** Per layer: `(2, batch, heads, maxLen, dimHead)` f32 — k at [0], v at [1]. */
  readonly layers: GPUBuffer[];
  /**
   * Per layer, on software adapters: the same keys and values in an rgba32float texture
   * `(2·batch·heads layers, maxLen, dimHead/4)` that the decode attention reads (see
   * kernels/attention_decode.ts: ~10× cheaper loads than the storage buffer on lavapipe).
   * Every forward plan over this cache writes both. Undefined elsewhere.
   */
  readonly textures?: GPUTexture[];

  /**
   * Allocates the cache (uninitialised: only positions below a row's start are ever read).
   *
   * @param gpu the runtime
   * @param depth number of layers
   * @param heads attention heads
   * @param dimHead head width
   * @param batch rows
   * @param maxLen positions per row
   * @param label label prefix for the buffers
   */
  constructor(
    gpu: Gpu,
    depth: number,
    heads: number,
    dimHead: number,
    batch: number,
    maxLen: number,
    label = "kv",
  ) {
    this.batch = batch;
    this.maxLen = maxLen;
    const bytes = 2 * batch * heads * maxLen * dimHead * 4;
    if (bytes > gpu.maxBinding) {
      throw new Error(
        `specdec: a KV cache layer for batch ${batch} × ${maxLen} positions needs ${bytes} bytes, ` +
          `over this device's ${gpu.maxBinding}-byte binding limit; use a smaller batch or length`,
      );
    }
    this.layers = Array.from(
      { length: depth },
      (_, l) =>
        gpu.buffer(`${label} layer ${l} (2, ${batch}, ${heads}, ${maxLen}, ${dimHead})`, bytes),
    );
    if (kvTextureSupported(gpu, batch, heads, dimHead, maxLen)) {
      this.textures = Array.from(
        { length: depth },
        (_, l) => kvTexture(gpu, `${label} layer ${l} texture`, batch, heads, dimHead, maxLen),
      );
    }
  }

  /** Frees the GPU memory. */
  destroy(): void {
    for (const b of this.layers) b.destroy();
    for (const t of this.textures ?? []) t.destroy();
  }
}
