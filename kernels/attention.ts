/**
 * Causal self-attention over a per-row KV cache, forward and backward.
 *
 * Semantics follow lucidrains/speculative-decoding's `CausalAttention`: scores `q·k · D^−0.5`,
 * causal mask filled with `−FLT_MAX`, softmax over keys, `out = softmax · v`, heads merged as
 * `(T, H, D)`. A masked key gets weight `exp(−FLT_MAX − max) = 0` exactly in float32 (every query
 * sees at least key 0, so no row is fully masked); the kernels therefore skip masked keys, which
 * gives the same result.
 *
 * Layouts (row-major, f32 unless noted):
 * - `qkv (T, 3, H, D)` with T = B·n, token `t = b·n + i`: q at `[t, 0, h]`, k at `[t, 1, h]`, v at
 *   `[t, 2, h]` (after {@link "./rotary.ts" | rotary}).
 * - `kv (2, B, H, maxLen, D)`: this layer's cache, k at `[0, b, h, pos]`, v at `[1, b, h, pos]`.
 * - `start: u32 (B)`: token `(b, i)` sits at absolute position `start[b] + i`.
 *
 * One forward: {@link kvWrite} copies this forward's k and v into the cache at their positions,
 * then {@link attention} lets query `(b, i)` attend cache keys `0..start[b]+i`. The same two
 * dispatches serve training and prefill (`start = 0`, n up to maxLen), cached decode (`n = 1`)
 * and speculative verification (`n = γ + 1`), with each row at its own start; rollback is a
 * smaller start next time (stale cache entries past a query's position are never read).
 *
 * Training (start = 0) goes through {@link trainingAttention} and {@link attentionBackward}: on
 * software adapters (lavapipe, where a storage load is a per-lane loop and a texel fetch a
 * vectorised gather) their inner loops read keys, values, queries, dOut and the per-query
 * (lse, Δ) from rgba32float scratch textures, copied just before (kernels/attention_head.ts);
 * the same arithmetic in the same order, so the same bits as the storage kernels, which
 * hardware adapters, D % 4 ≠ 0 and textures over maxTextureDimension2D keep.
 *
 * Softmax is streamed (online max and sum), so any key count works in fixed memory. Every
 * reduction has a fixed order: results are deterministic, and no float atomics are used.
 *
 * Files: kernels/attention_forward.ts ({@link kvWrite}, {@link attention}: variants `"tiled"`,
 * with `per` queries per invocation, and `"split"`), kernels/attention_backward.ts ({@link attentionBackward}), and what they share,
 * kernels/attention_head.ts: one WGSL template per kernel, head vectors held as `array<vec4f, D4>`
 * in unrolled loops (registers), each head size D compiling its own pipelines.
 *
 * @module
 */
export {
  attention,
  type AttentionSizes,
  type AttentionVariant,
  kvWrite,
  qkvTexture,
  trainingAttention,
  trainingTexturesFit,
} from "./attention_forward.ts";
export { attentionBackward } from "./attention_backward.ts";
