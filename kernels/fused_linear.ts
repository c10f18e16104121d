/**
 * GEMVs of the fused small-M forward (decode and verification steps): the RMSNorm that feeds a
 * linear layer folded into its prologue, and its consumer folded into the epilogue.
 *
 * - {@link fusedLinear} `y = epilogue(RMSNorm(x) · Wᵀ)` (or `epilogue(x · Wᵀ)` without a norm
 *   weight) with epilogue
 *   - `"none"`: store (the final norm + logits);
 *   - `"biasGelu"`: `gelu(y + bias)`, exact erf (the feed-forward input);
 *   - `"accumulate"`: `out += y (+ bias)` (the out-projection and ffOut with the residual add),
 *     optionally also storing the new rows into a self-speculative verification's input slots
 *     (`slotCopy`, model/self_speculative.ts: one dispatch fewer per draft step);
 *   - `"rotaryKv"`: the qkv projection with rotary applied to q and k at each row's position
 *     (read from `start`), q stored into `qkv (T, 3, H, D)` and k, v written straight into the KV
 *     cache: RMSNorm + linear + rotary + kvWrite in one dispatch.
 *
 * Bits: every output is computed with the arithmetic of the unfused kernels on software
 * adapters, in the same order whatever M: the narrow vec4 RMSNorm's sum (8 lanes over vec4s,
 * components pairwise, a 3-step tree), `x · rstd · weight`, the register-tile GEMV's
 * `acc += dot(a₄, w₄)` over k in order, then bias, GELU or rotary as those kernels compute them.
 * A verification forward of γ + 1 tokens and γ + 1 one-token steps therefore give the same bits,
 * and so do the fused and the unfused paths (tests/fused_linear_test.ts checks both).
 *
 * ## Where a small dispatch's time goes on the software adapter (bench/dispatch_bench.ts)
 *
 * Mesa 22.3 lavapipe (llvmpipe, LLVM 15, AVX2, 8-lane SIMD), 2 cores shared with other jobs
 * (load average 4.4 to 5.7 while measured, so absolute times are ~2× a quiet machine's; the
 * ratios held over repeated runs). GEMV `y (512) = W (512, 128) · x`, 65 536 multiply-adds,
 * µs per dispatch, 20 to 30 dispatches per timed pass, best of 3 to 5 alternated rounds:
 *
 * | suspected cause                         | variants                                  | µs            |
 * | --------------------------------------- | ----------------------------------------- | ------------- |
 * | fixed cost of a dispatch                | empty dispatch (1 × 1 invocation)         | 18 to 25      |
 * | workgroup size (8 workgroups)           | 1 / 8 / 32 / 64 / 256 lanes               | 1075 / 880 / 916 / 889 / 904 |
 * | workgroup count (8 lanes)               | 1 / 4 / 16 / 64 / 256 / 1024 workgroups   | 970 / 710 / 673 / 574 / 956 / 974 |
 * | barriers (8 lanes × 8, 64 × 1)          | 0 / 1 / 8 / 32 per invocation             | 941 / 927 / 972 / 931; 914 / 931 / 1088 / 991 |
 * | params uniform vs WGSL constants        | sizes read from the uniform / constants   | 771 / 929     |
 * | storage loads f32 vs vec4               | 4× the loads of 1 word / vec4 loads       | 986 / 946     |
 * | private array, dynamic vs unrolled      | 8-column tile in a loop / unrolled        | 565 / 560 (1 column: 690) |
 * | uniform addresses (lane = row, W shared)| 1 lane × 8 wg / 8 lanes × 8 wg            | 953 / 7385    |
 * | the loads themselves                    | same loops, fma on registers, no loads    | 56 to 70      |
 * | W / 4 (64 KiB) through a uniform binding | x, W: storage / W uniform / both uniform | 270 / 156 / 72 |
 * | all of W in 4 uniform chunks (x uniform) | a workgroup-uniform if-chain / 4 dispatches | 246 / 234 |
 *
 * So the time is neither a fixed cost of the dispatch (an empty one is ~20 µs; the thread pool
 * section below says where that comes from) nor workgroup shape, barriers or register arrays
 * (all within the noise), but the storage loads: llvmpipe
 * (Mesa 22.3) turns each storage-buffer load into a loop over the 8 SIMD lanes and over the
 * components, with a mask and bounds test per lane, even when every lane loads the same address
 * (eight lanes loading one shared weight cost 8× one lane). The cost is ~5 to 7 ns per 32-bit
 * word an active lane loads, against ~0.5 ns of arithmetic: a GEMV through storage bindings
 * costs its weight words (once each) plus its activation words (once per lane), and that is all.
 * Uniform bindings take another path: a gather without the per-lane loop (a weight word ~2× as
 * cheap) and, at an address uniform over the workgroup (x[row, k] when every lane reads the same
 * row), one load broadcast to all lanes. A uniform binding holds 64 KiB (lavapipe's limit and
 * WebGPU's default), so W is bound in chunks of whole rows and each workgroup selects its chunk
 * by a workgroup-uniform if-chain, which costs no more than a dispatch per chunk.
 *
 * The design that follows: 8 lanes per workgroup (one SIMD group, no idle lanes, no barrier but
 * the norm's) and a few workgroups (2 cores); a lane owns 8 output columns (4 where a 64-column
 * slab would straddle two W chunks) and keeps every row of a block of up to 16 in registers, so
 * each weight word is loaded once per step; on software adapters x, the norm weight and W are
 * read through uniform bindings (x, W chunks ≤ 64 KiB, at most 12 chunks, M ≤ 16; the plan pads
 * its inputs to 64 KiB so one pipeline serves every M of a block size), else storage bindings.
 * Fusion then saves what it can: the separate norm, rotary, kvWrite and GELU dispatches (20+ µs
 * each plus their loads and stores of the activations). The RMSNorm prologue costs each
 * workgroup a share of one row's loads (its 8 lanes split the row, as the narrow RMSNorm does).
 *
 * ## The fixed cost of a dispatch: the driver's thread pool (bench/dispatch_threads.ts)
 *
 * What an empty dispatch costs is lavapipe's thread pool: llvmpipe hands each dispatch to its
 * worker threads (`LP_NUM_THREADS`, default one per core) and the submitting thread sleeps until
 * they are done, so every dispatch pays a wake-up of each worker and of the submitter. On this
 * 2-vCPU VM, where a wake-up crosses virtual CPUs, that is ~10 µs per thread. Wall clock over 400
 * dispatches per submit, one completion subtracted, medians of 9 rounds, µs per dispatch (load
 * ~0.6; each column is a fresh process, since lavapipe reads the variable at device creation):
 *
 * | dispatch                                  | LP_NUM_THREADS=0 | 1    | 2 (default) | 4    |
 * | ----------------------------------------- | ---------------: | ---: | ----------: | ---: |
 * | empty, 1 workgroup of 8 lanes             | 4.0              | 23.8 | 28.1        | 39.3 |
 * | empty, 4 workgroups                       | 4.5              | 32.5 | 32.6        | 41.6 |
 * | 6 storage buffers + 3 textures bound      | 5.5              | 22.6 | 36.9        | 43.4 |
 * | the same, 8 pipelines in turn             | 10.4             | 34.6 | 41.0        | 48.1 |
 *
 * (the 1 and 4 columns from a first run of 5 rounds.) Neither the bindings nor the workgroup
 * count matter much; a pipeline switch adds a few µs. Without workers (`LP_NUM_THREADS=0`) a
 * dispatch costs ~4 µs, but the work then runs on one core: a base decoding step of this shape
 * (22 dispatches) took 3.37 ms there against 1.70 ms with the default pool in a quiet minute, and
 * 3.00 against 3.05 in a busy one (the host's load slows the wake-ups), so the default stays the
 * better one at dim 128. So the floor of a step is its dispatch count times
 * ~25 to 30 µs (a base step: 22 dispatches, ~0.6 ms of ~1.6 ms) plus its texel fetches: the
 * fused path's few dispatches matter more than any further tuning of one kernel, and merging two
 * dependent dispatches pays only when the work it duplicates (each workgroup recomputing what
 * the other dispatch produced) costs less than ~25 µs. A library cannot set `LP_NUM_THREADS`
 * for its host process; the benchmark shows what it does.
 *
 * ## Weights from textures (bench/dispatch_bench.ts `--only space`)
 *
 * A later round measured where W itself should live, M = 1, µs per dispatch and ns per weight
 * word (median of 5 alternated rounds, load average ~4; the full table, with the attention loop,
 * is in kernels/attention_decode.ts's header):
 *
 * | GEMV      | storage     | 4 uniform chunks | rgba32f texture | workgroup memory (coop) | storage, 1 lane |
 * | --------- | ----------: | ---------------: | --------------: | ----------------------: | --------------: |
 * | 512 × 128 | 876, 13.4   | 206, 3.1         | **81, 1.2**     | 1247, 19.0              | 1052, 16.1      |
 * | 128 × 512 | 925, 14.1   | 196, 3.0         | **80, 1.2**     | 1885, 28.8              | 863, 13.2       |
 *
 * `textureLoad` of an rgba32float texel is llvmpipe's vectorised texel fetch: a gather per
 * component for all 8 lanes, where a uniform load at a varying address is a masked gather per
 * word and a storage load a per-lane scalar loop. So on software adapters the model keeps an
 * rgba32float copy of each weight `(N rows, K/4 texels)` (model/state.ts `weightTexture`, where
 * K % 64 = 0 so one buffer-to-texture copy fills it) and the fused GEMVs read W from it (`wTex`),
 * x and the norm weight still through uniform bindings; the arithmetic and its order are
 * unchanged, so the bits are too. Elsewhere the uniform chunks or storage above.
 *
 * ## What is left of a decode step (bench/dispatch_bench.ts `--only fused`)
 *
 * The step's five GEMVs at the reference shape (M = 1, dim 128, 4 × 32 heads, F 512, V 256, W
 * from textures), µs per dispatch, min (median) of 21 rounds of 10 to 20 dispatches, three runs,
 * load average 2.5 to 4.7 (two other jobs held both cores at nice 10):
 *
 * | dispatch            | words  | µs, min        | µs, median  |
 * | ------------------- | -----: | -------------: | ----------: |
 * | empty, 1 / 2 / 4 / 16 workgroups of 8 lanes | 0 | 17 / 19 / 21 / 21 | 45 to 56 |
 * | embedding (T 1)     | 128    | 17 to 23       | 44 to 47    |
 * | qkv 384 × 128       | 49 152 | 65 to 73       | 98 to 109   |
 * | out 128 × 128       | 16 384 | 36 to 51       | 48 to 76    |
 * | ffIn 512 × 128      | 65 536 | 83 to 88       | 123 to 172  |
 * | ffOut 128 × 512     | 65 536 | 73 to 79       | 95 to 176   |
 * | logits 256 × 128    | 32 768 | 44 to 57       | 74 to 114   |
 *
 * Each is ~18 µs of fixed cost plus ~1.1 ns per weight word (the texel fetch), so the GEMVs are
 * at the fetch bound. Variants measured against them (commit dfec54a has their code), none kept:
 * - 4 columns per lane, twice the workgroups (out 4, ffOut 4, ffIn 16, logits 8): out 36 vs 36,
 *   ffOut 76 to 79 vs 73 to 74, ffIn 94 to 113 vs 83 to 88, logits 52 to 80 vs 44 to 51: no gain
 *   where a 2-thread pool already has 2+ workgroups per thread, a loss where each workgroup
 *   repeats the norm prologue;
 * - every lane summing the norm itself in the narrow order (no workgroup memory, no barrier;
 *   the same bits): ffIn 84 vs 83 to 88, qkv 65 to 69 vs 70 to 73, logits 51 to 57 vs 44 to 53:
 *   within the noise;
 * - Wᵀ in the texture (a workgroup's 64 columns contiguous at each k), ffOut over 16 distinct
 *   weights (µs per 16): 1531 to 2346 vs 1271 to 1852; a vec4 embedding with 8 lanes: 27 to 31
 *   vs 21 to 23 (the lookup is all fixed cost).
 * Cold weights (16 distinct 256 KiB textures in turn, as a step reads each once) cost 0 to 30 %
 * more than one texture 16 times; 16 bind groups on one texture cost nothing extra.
 * What could go was a dispatch: the embedding lookup folds into the first block's qkv GEMV
 * (`embed`: x's rows fetched from the table's texture, stored by the first column tile), one
 * dispatch (~18 to 45 µs) fewer per forward (a decode step 22, a draft step of one block 6).
 * The sampling dispatch (kernels/decode_step.ts, not measured here) is the other small one.
 * The attention dispatch at 1 key costs 53 to 65 µs (min): its cross-lane combine through
 * workgroup memory is ~10 to 15 of them (38 to 45 without it), its barriers ~0.
 *
 * ## Why a layer stays at five dispatches (branch `blocks`, bench/results/split-layer-2026-12-01)
 *
 * Three per layer were built and measured: the out-projection split by head into the attention
 * dispatch, the feed-forward split over hidden units (its GELU outputs in workgroup memory), the
 * residual adds left as partial sums that the next GEMV adds to its input. Correct, and slower:
 * a base step 1.28×, a speculative step 1.36× the time (paired, one process). On lavapipe a GEMV
 * input read from workgroup memory in the inner loop cost 366 µs against 249 µs from a uniform
 * binding (4 rows; 192 against 160 at one), and each partial added to the input costs another
 * load per row and k (the logits GEMV at 4 rows with 4 addends: 80 → 98–144 µs; 365 µs when the
 * addends' stride came from `params` inside the loop). So each GEMV here reads an input that the
 * dispatch before it wrote, through a uniform binding, and the fixed cost of that dispatch
 * (~17–30 µs) is the cheaper price.
 *
 * Attention was kernels/attention_forward.ts's `"split"` kernel: already one dispatch per
 * layer for every head and row, each key and value loaded once for up to 8 queries of a row
 * (the γ + 1 verification rows), keys split over 8 lanes. Splitting long contexts over more
 * workgroups was not done: with B·H = 4 workgroups per step there are already 2 per core.
 * On software adapters the fused path now runs kernels/attention_decode.ts, the same kernel
 * reading K and V from a texture copy of the cache that the `"rotaryKv"` epilogue also writes
 * (`kvTex`).
 *
 * @module
 */
import { type Dispatch, type Gpu, grid } from "./gpu.ts";
import { ERF_WGSL } from "./activation.ts";
import { RMS_EPS } from "./norm.ts";
import { unrollLoops } from "./unroll.ts";

/** Lanes per workgroup: one SIMD group of the software adapter. */
const WG = 8;
/** Most rows of a block: more rows are split into even blocks. */
const MAX_R = 16;
/** Bytes of a uniform binding (the WebGPU default limit, lavapipe's too). */
const UNIFORM_BYTES = 65536;
/** Weight chunks (uniform bindings) at most: 15 uniform buffers per stage, less x, norm, params. */
const MAX_CHUNKS = 12;
/** GPUBufferUsage.UNIFORM. */
const UNIFORM_USAGE = 0x40;

/** Buffer usage of tensors the fused kernels may bind as uniforms on software adapters. */
export const STORAGE_UNIFORM: number = 0x80 | 0x40 | 0x4 | 0x8;

/** What the fused GEMV does with its outputs. */
export type FusedEpilogue =
  | { kind: "none"; out: GPUBuffer }
  | { kind: "biasGelu"; bias: GPUBuffer; out: GPUBuffer }
  | {
    kind: "accumulate";
    bias?: GPUBuffer;
    out: GPUBuffer;
    /**
     * Also store each updated row of `out` into its slot of a verification's input stream, as
     * kernels/hidden_slots.ts's `slotCopyKernel` does after the dispatch (one dispatch fewer per
     * self-speculative draft step): row b (a one-token forward, M = B) goes to
     * `hidden[b, start[b] − (pos[b] − 1)]`; finished rows (pos ≥ L, or 0) and slots ≥ `slots`
     * write nothing.
     */
    slotCopy?: FusedSlotCopy;
  }
  | {
    kind: "rotaryKv";
    /** `qkv (T, 3, H, D)`: q (rotated) is written; k and v go to the cache only. */
    qkv: GPUBuffer;
    /** This layer's cache `(2, B, H, maxLen, D)`. */
    kv: GPUBuffer;
    /** `(B)` u32: token `(b, i)` sits at position `start[b] + i`. */
    start: GPUBuffer;
    /** Rotary tables `(maxLen, D/2)`. */
    cos: GPUBuffer;
    /** See cos. */
    sin: GPUBuffer;
    /** Rows. */
    B: number;
    /** Tokens per row (M = B·n). */
    n: number;
    /** Heads. */
    H: number;
    /** dimHead. */
    D: number;
    /** Cache positions per row. */
    maxLen: number;
    /**
     * The layer's KV texture (kernels/attention_decode.ts), written as well as `kv` where given:
     * k of `(b, h)` at array layer `b·H + h`, v at `(B + b)·H + h`, texel (d/4, position).
     */
    kvTex?: GPUTexture;
  };

/** The slot copy of the `"accumulate"` epilogue (see {@link FusedEpilogue}). */
export interface FusedSlotCopy {
  /** The decoding state: `pos (B)` u32 at its first words. */
  state: GPUBuffer;
  /** `(B)` u32: the forward's position of each row. */
  start: GPUBuffer;
  /** `(B, slots, N)` f32: the verification's input stream, written. */
  hidden: GPUBuffer;
  /** Slots per row (γ + 1). */
  slots: number;
  /** The decode's length: rows at pos ≥ L are finished. */
  L: number;
}

/** Arguments of {@link fusedLinear}. */
export interface FusedLinearArgs {
  /** The input `x (M, K)` (the residual stream when normalised). */
  x: GPUBuffer;
  /** RMSNorm weight `(K)`: normalise x first; omit for a plain GEMV. */
  norm?: GPUBuffer;
  /** Weight `(N, K)` (torch layout). */
  w: GPUBuffer;
  /**
   * The same weight as an rgba32float texture `(N rows, K/4 texels)` (ModelState.weightTexture):
   * W is then read from it (~2.5× cheaper than uniform chunks on lavapipe, see the module doc).
   */
  wTex?: GPUTexture;
  /**
   * The embedding lookup folded in: x's rows are `table[tokens[t]]` (zero for a token ≥ the
   * table's rows, as kernels/embedding.ts), read from the table's texture `(V rows, K/4 texels)`,
   * and the workgroups of the first column tile also store them into `x` (the residual stream
   * the later dispatches read). `x` is then bound as storage, the norm weight as before.
   */
  embed?: { tokens: GPUBuffer; table: GPUTexture };
  /** Rows. */
  M: number;
  /** Output columns (`3·H·D` for `"rotaryKv"`). */
  N: number;
  /** Inputs per row. */
  K: number;
  /** What happens to the outputs. */
  epilogue: FusedEpilogue;
  /**
   * Read x, the norm weight and W through uniform bindings (W in chunks of 64 KiB) where they
   * fit and their buffers allow it. Default: on software adapters. See the module doc.
   */
  uniform?: boolean;
}

/**
 * Whether the fused kernels serve these sizes: vec4 rows (K % 4 = 0, N % 4 = 0) and, for the
 * qkv epilogue, rotary halves of whole vec4s (D % 8 = 0). Otherwise use the unfused kernels.
 *
 * @param K inputs per row (the model dim)
 * @param N outputs
 * @param D dimHead, for the qkv epilogue
 * @returns whether {@link fusedLinear} accepts them
 */
export function fusedLinearSupported(K: number, N: number, D?: number): boolean {
  return K > 0 && K % 4 === 0 && N > 0 && N % 4 === 0 && (D === undefined || D % 8 === 0);
}

/** Rows per block for M rows: M up to 16, else the most even split (as the unfused GEMV). */
function blockRows(M: number): number {
  const blocks = Math.max(1, Math.ceil(M / MAX_R));
  return Math.max(1, Math.ceil(M / blocks));
}

/** How a kernel variant reads its operands and lays out its lanes. */
export interface FusedLayout {
  /** The epilogue. */
  kind: FusedEpilogue["kind"];
  /** Whether x is normalised in the prologue. */
  norm: boolean;
  /** Whether the accumulate epilogue adds a bias. */
  bias: boolean;
  /** Whether the accumulate epilogue also stores the rows into their verification slots. */
  slotCopy?: boolean;
  /** Rows per block. */
  R: number;
  /** Columns per lane: 8 (two vec4 groups) or 4. */
  C: number;
  /** The qkv epilogue also stores k and v into the KV texture. */
  kvTex?: boolean;
  /** x is the embedding of `tokens`, from the texture `embT`, and is stored (see the args). */
  embed?: boolean;
  /** W is read from a texture `wT` (uniform.chunks is then empty). */
  wTex?: boolean;
  /** Uniform bindings: vec4s of x, the norm weight and each W chunk; undefined: storage. */
  uniform?: { x: number; norm: number; chunks: number[] };
}

/** The epilogue's bindings (from `first`) and its store of the accumulators. */
function epilogueCode(l: FusedLayout, first: number): { bindings: string; store: string } {
  const b = (i: number) => `@group(0) @binding(${first + i})`;
  const rowsCols = (body: string) => /* wgsl */ `
  for (var i = 0u; i < R; i++) { /* unroll */
    for (var q = 0u; q < C4; q++) { /* unroll */
      let col = cols[q];
      if (m0 + i < params.M && col < params.N) {
        let o = ((m0 + i) * params.N + col) / 4u;${body}
      }
    }
  }`;
  if (l.kind === "none") {
    return {
      bindings: `${b(0)} var<storage, read_write> out: array<vec4f>; // (M, N)`,
      store: rowsCols(`\n        out[o] = acc[i * C4 + q];`),
    };
  }
  if (l.kind === "accumulate") {
    const o = l.bias ? 1 : 0;
    const copyBindings = !l.slotCopy ? "" : `
${b(o + 1)} var<storage, read> state: array<u32>;          // [pos (B) | …]
${b(o + 2)} var<storage, read> start: array<u32>;          // (B) the forward's positions
${b(o + 3)} var<storage, read_write> hidden: array<vec4f>; // (B, slots, N)`;
    return {
      bindings: `${l.bias ? `${b(0)} var<storage, read> bias: array<vec4f>;     // (N)\n` : ""}${
        b(o)
      } var<storage, read_write> out: array<vec4f>; // (M, N), added to${copyBindings}`,
      // as the unfused GEMV's store: (acc + bias) + out; the slot copy as slotCopyKernel's
      store: rowsCols(`
        var v = acc[i * C4 + q];${l.bias ? "\n        v += bias[col / 4u];" : ""}
        v += out[o];
        out[o] = v;${
        l.slotCopy
          ? `
        let pos = state[m0 + i];
        let slot = start[m0 + i] + 1u - pos; // wraps to a huge value below pos − 1
        if (pos < params.L && pos != 0u && slot < params.slots) {
          hidden[((m0 + i) * params.slots + slot) * (params.N / 4u) + col / 4u] = v;
        }`
          : ""
      }`),
    };
  }
  if (l.kind === "biasGelu") {
    return {
      bindings: `${b(0)} var<storage, read> bias: array<vec4f>;      // (N)
${b(1)} var<storage, read_write> out: array<vec4f>; // (M, N) gelu(h + bias)
${ERF_WGSL}`,
      // as the unfused path: h = acc + bias stored, then gelu(h) = 0.5·h·(1 + erf(h/√2))
      store: rowsCols(`
        let h = acc[i * C4 + q] + bias[col / 4u];
        let e = vec4f(erf_f32(h.x * 0.70710678118654752), erf_f32(h.y * 0.70710678118654752),
                      erf_f32(h.z * 0.70710678118654752), erf_f32(h.w * 0.70710678118654752));
        out[o] = 0.5 * h * (1.0 + e);`),
    };
  }
  return {
    bindings: `${b(0)} var<storage, read_write> qkv: array<vec4f>; // (T, 3, H, D): q
${b(1)} var<storage, read_write> kv: array<vec4f>;  // (2, B, H, maxLen, D)
${b(2)} var<storage, read> start: array<u32>;       // (B)
${b(3)} var<storage, read> cosT: array<vec4f>;      // (maxLen, D/2)
${b(4)} var<storage, read> sinT: array<vec4f>;      // (maxLen, D/2)${
      l.kvTex
        ? `\n${b(5)} var kvT: texture_storage_2d_array<rgba32float, write>; // (2·B·H, maxLen, D/4)`
        : ""
    }`,
    // the lane's two column groups are x₁ = cols n0..n0+4 and x₂ = n0+D/2..: a rotary pair
    store: /* wgsl */ `
  let half = params.D / 2u;
  let hs = n0 / params.D;        // head slot over (3, H)
  let s = hs / params.H;         // 0 q, 1 k, 2 v
  let h = hs % params.H;
  let d4 = (n0 % params.D) / 4u; // vec4 index of x₁ in the head
  let D4 = params.D / 4u;
  for (var i = 0u; i < R; i++) { /* unroll */
    let t = m0 + i;
    if (t < params.M && n0 < params.N) {
      let b = t / params.n;
      let pos = start[b] + t % params.n;
      var y1 = acc[i * C4];
      var y2 = acc[i * C4 + 1u];
      if (s < 2u && pos < params.maxLen) { // rotary as kernels/rotary.ts: [x₁, x₂]·cos + [−x₂, x₁]·sin
        let c = cosT[(pos * half) / 4u + d4];
        let sn = sinT[(pos * half) / 4u + d4];
        let x1 = y1;
        let x2 = y2;
        y1 = x1 * c - x2 * sn;
        y2 = x2 * c + x1 * sn;
      }
      if (s == 0u) {
        let o = (t * 3u * params.H + h) * D4 + d4;
        qkv[o] = y1;
        qkv[o + half / 4u] = y2;
      } else if (pos < params.maxLen) { // no slot past the cache, as kvWrite
        let o = ((((s - 1u) * params.B + b) * params.H + h) * params.maxLen + pos) * D4 + d4;
        kv[o] = y1;
        kv[o + half / 4u] = y2;${
      l.kvTex
        ? `
        let layer = ((s - 1u) * params.B + b) * params.H + h;
        textureStore(kvT, vec2u(d4, pos), layer, y1);
        textureStore(kvT, vec2u(d4 + half / 4u, pos), layer, y2);`
        : ""
    }
      }
    }
  }`,
  };
}

/** The params struct's fields, in order (all 4-byte scalars; eps is the only f32). */
const PARAM_FIELDS = [
  "M",
  "N",
  "K",
  "tilesN",
  "tiles",
  "eps",
  "B",
  "n",
  "H",
  "D",
  "maxLen",
  "RC",
  "slots",
  "L",
] as const;

/**
 * The WGSL of one fused GEMV variant: R rows per block, 8 lanes × C columns per workgroup.
 *
 * @param l the variant
 * @returns the WGSL, unrolled
 */
export function fusedLinearCode(l: FusedLayout): string {
  const u = l.uniform;
  const C4 = l.C / 4;
  let next = 1;
  const bind = () => `@group(0) @binding(${next++})`;
  const xDecl = l.embed
    ? `${bind()} var<storage, read_write> x: array<vec4f>; // (M, K): the embeddings, stored
${bind()} var<storage, read> tokens: array<u32>;     // (M)
${bind()} var embT: texture_2d<f32>;                 // (V, K/4) texels: the embedding table
// x(row, vec4 c) of a row whose token is tok (zero past the table, as the embedding kernel)
fn xe(tok: u32, c: u32) -> vec4f {
  if (tok >= textureDimensions(embT).y) { return vec4f(); }
  return textureLoad(embT, vec2u(c, tok), 0);
}`
    : u
    ? `${bind()} var<uniform> x: array<vec4f, ${u.x}>;          // (M, K)`
    : `${bind()} var<storage, read> x: array<vec4f>;    // (M, K)`;
  const normDecl = !l.norm
    ? ""
    : u
    ? `${bind()} var<uniform> norm: array<vec4f, ${u.norm}>; // (K) RMSNorm weight`
    : `${bind()} var<storage, read> norm: array<vec4f>; // (K) RMSNorm weight`;
  const wDecl = l.wTex
    ? `${bind()} var wT: texture_2d<f32>;            // (N, K/4) texels: W`
    : u
    ? u.chunks.map((c, q) =>
      `${bind()} var<uniform> w${q}: array<vec4f, ${c}>; // W rows of chunk ${q}`
    )
      .join("\n")
    : `${bind()} var<storage, read> w: array<vec4f>;    // (N, K)`;
  const e = epilogueCode(l, next);
  // x(m0 + i, vec4 c): ai[i] is the row's offset in x, or with the embedding its token
  const xAt = (c: string) => l.embed ? `xe(ai[i], ${c})` : `x[ai[i] + ${c}]`;
  // the lane's unit u of C columns: n0..n0+4 and n1..n1+4 with n1 = n0 + 4, or for the qkv
  // epilogue a rotary pair of vec4s, n1 = n0 + D/2 (a head slot of (3, H) holds D/8 units)
  const rotary = l.kind === "rotaryKv";
  const colOf = (unit: string) =>
    rotary
      ? `(${unit} / (params.D / 8u)) * params.D + (${unit} % (params.D / 8u)) * 4u`
      : `${unit} * C`;
  const loadW = l.wTex
    ? `for (var j = 0u; j < C; j++) { /* unroll */ bv[j] = textureLoad(wT, vec2u(k, bj[j]), 0); }`
    : u
    ? u.chunks.map((_, q) =>
      `${q === 0 ? "" : " else "}${
        q === u.chunks.length - 1 && q > 0 ? "" : `if (chunk == ${q}u) `
      }{
      for (var j = 0u; j < C; j++) { /* unroll */ bv[j] = w${q}[bj[j] + k]; }
    }`
    ).join("")
    : `for (var j = 0u; j < C; j++) { /* unroll */ bv[j] = w[bj[j] + k]; }`;
  return unrollLoops(/* wgsl */ `
struct Params {
  M: u32, N: u32, K: u32,
  tilesN: u32, tiles: u32, // workgroups along N, in all
  eps: f32,                // RMSNorm epsilon
  B: u32, n: u32, H: u32, D: u32, maxLen: u32, // the qkv epilogue's shapes (else unused)
  RC: u32,                 // rows of W per uniform chunk (storage: N)
  slots: u32, L: u32,      // the accumulate epilogue's slot copy (else unused)
}
@group(0) @binding(0) var<uniform> params: Params;
${xDecl}
${normDecl}
${wDecl}
${e.bindings}

const R: u32 = ${l.R}u;   // rows per block
const C: u32 = ${l.C}u;    // columns per lane
const C4: u32 = ${C4}u;   // vec4 column groups per lane
const WG: u32 = ${WG}u;   // lanes per workgroup
${l.norm ? "var<workgroup> red: array<f32, R * WG>; // (R, WG) partial sums of squares" : ""}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; } // the whole workgroup
  let K4 = params.K / 4u;
  let m0 = (t / params.tilesN) * R;
  var ai: array<u32, R>; // row offsets of x(m0 + i, ·), clamped (with the embedding: tokens)
${
    l.embed
      ? `  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = tokens[min(m0 + i, params.M - 1u)]; }
  if (t % params.tilesN == 0u) { // the first column tile stores the rows of x
    for (var i = 0u; i < R; i++) { /* unroll */
      if (m0 + i < params.M) {
        for (var c = lid; c < K4; c += WG) { x[(m0 + i) * K4 + c] = xe(ai[i], c); }
      }
    }
  }`
      : "  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u) * K4; }"
  }
${
    l.norm
      ? `  // prologue: rstd of each row as the narrow vec4 RMSNorm sums it (lane lid takes vec4s
  // lid, lid + 8, …; components pairwise; then a 3-step tree)
  for (var i = 0u; i < R; i++) { /* unroll */
    var ss = vec4f();
    for (var c = lid; c < K4; c += WG) {
      let v = ${xAt("c")};
      ss = fma(v, v, ss);
    }
    red[i * WG + lid] = (ss.x + ss.y) + (ss.z + ss.w);
  }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      for (var i = 0u; i < R; i++) { /* unroll */ red[i * WG + lid] = red[i * WG + lid] + red[i * WG + lid + s]; }
    }
    workgroupBarrier();
  }
  var r: array<f32, R>;
  for (var i = 0u; i < R; i++) { /* unroll */ r[i] = 1.0 / sqrt(red[i * WG] / f32(params.K) + params.eps); }`
      : ""
  }
  let u0 = (t % params.tilesN) * WG; // the workgroup's first unit of C columns
  let chunk = (${colOf("u0")}) / params.RC; // the W chunk all its columns lie in
  let u = u0 + lid;
  let n0 = ${colOf("u")};
  let n1 = ${rotary ? "n0 + params.D / 2u" : "n0 + 4u"};
  let cols = array<u32, 2>(n0, n1);
  let rowEnd = min(params.N, (chunk + 1u) * params.RC) - 1u; // last W row of the chunk
  var bj: array<u32, C>; // ${l.wTex ? "rows" : "offsets"} of W(col, ·) in the chunk, clamped
  for (var j = 0u; j < C; j++) { /* unroll */
    bj[j] = (min(cols[j / 4u] + j % 4u, rowEnd) - chunk * params.RC)${l.wTex ? "" : " * K4"};
  }
  var acc: array<vec4f, R * C4>; // (row i, column group q) at acc[i * C4 + q]
  for (var k = 0u; k < K4; k++) {
    var bv: array<vec4f, C>;
    ${loadW}
    ${l.norm ? "let g = norm[k];" : ""}
    for (var i = 0u; i < R; i++) { /* unroll */
      let av = ${xAt("k")}${l.norm ? " * r[i] * g; // RMSNorm(x), rounded as the norm kernel" : ";"}
      for (var q = 0u; q < C4; q++) { /* unroll */
        acc[i * C4 + q] += vec4f(dot(av, bv[4u * q]), dot(av, bv[4u * q + 1u]),
                                 dot(av, bv[4u * q + 2u]), dot(av, bv[4u * q + 3u]));
      }
    }
  }
${e.store}
}`);
}

/**
 * The storage bindings a WGSL source declares, by name (`@binding(i) var<…> name`).
 */
function declaredBindings(code: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of code.matchAll(/@binding\((\d+)\) var<[^>]*> (\w+)/g)) out.set(m[2], Number(m[1]));
  return out;
}

/** The binding number of the texture `name` the WGSL declares. */
function textureBinding(code: string, name: string): number {
  const m = code.match(new RegExp(`@binding\\((\\d+)\\) var ${name}:`));
  if (!m) throw new Error(`specdec: fusedLinear: the shader declares no texture "${name}"`);
  return Number(m[1]);
}

/** Where each workgroup's columns lie: the chunk rows RC if every workgroup stays in one. */
function chunkRows(N: number, K: number, C: number, D: number | undefined): number {
  const unitsPerWg = WG;
  // the largest RC ≤ 64 KiB of W rows, a multiple of the workgroup's column span
  const span = D === undefined ? WG * C : Math.max(D, (WG / (D / 8)) * D);
  const rc = Math.floor(UNIFORM_BYTES / (4 * K) / span) * span;
  if (rc === 0) return 0;
  const units = D === undefined ? N / C : N / 8;
  const col = (u: number) =>
    D === undefined ? u * C : Math.floor(u / (D / 8)) * D + (u % (D / 8)) * 4;
  for (let u0 = 0; u0 < units; u0 += unitsPerWg) {
    const chunk = Math.floor(col(u0) / rc);
    for (let u = u0; u < Math.min(u0 + unitsPerWg, units); u++) {
      const last = Math.min(N - 1, col(u) + (D === undefined ? C : D / 2 + 4) - 1);
      if (Math.floor(last / rc) !== chunk || Math.floor(col(u) / rc) !== chunk) return 0;
    }
  }
  return rc;
}

/**
 * `epilogue(RMSNorm(x) · Wᵀ)` (or without the norm, `epilogue(x · Wᵀ)`) in one dispatch for
 * small M; see the module doc for the epilogues, the arithmetic and the uniform bindings.
 * The RMSNorm uses eps = 2⁻²³ like kernels/norm.ts.
 *
 * @param gpu the runtime
 * @param a inputs, sizes and the epilogue
 * @returns the dispatch
 * @throws Error when the sizes are not {@link fusedLinearSupported}, or the qkv epilogue's N is
 *   not 3·H·D or M not B·n
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { fusedLinear } from "./fused_linear.ts";
 * const gpu = await requestGpu();
 * const [M, N, K] = [2, 8, 4];
 * const x = gpu.upload("x (M, K)", new Float32Array(M * K).fill(1));
 * const norm = gpu.upload("norm (K)", new Float32Array(K).fill(1));
 * const w = gpu.upload("w (N, K)", new Float32Array(N * K).fill(0.5));
 * const out = gpu.buffer("out (M, N)", M * N * 4);
 * gpu.run("logits", [fusedLinear(gpu, { x, norm, w, M, N, K, epilogue: { kind: "none", out } })]);
 * console.log(await gpu.readF32(out)); // ≈ 2 everywhere
 * ```
 */
export function fusedLinear(gpu: Gpu, a: FusedLinearArgs): Dispatch {
  const { M, N, K, epilogue: e } = a;
  const D = e.kind === "rotaryKv" ? e.D : undefined;
  if (!fusedLinearSupported(K, N, D)) {
    throw new Error(
      `specdec: fusedLinear needs K and N multiples of 4${
        D === undefined ? "" : " and dimHead a multiple of 8"
      }, got K ${K}, N ${N}${D === undefined ? "" : `, dimHead ${D}`}`,
    );
  }
  const shapes = { B: 1, n: 1, H: 1, D: 8, maxLen: 1 };
  const copy = e.kind === "accumulate" ? e.slotCopy : undefined;
  const buffers: Record<string, GPUBufferBinding> = {};
  if (e.kind === "rotaryKv") {
    if (N !== 3 * e.H * e.D || M !== e.B * e.n) {
      throw new Error(
        `specdec: fusedLinear "rotaryKv" needs N = 3·H·D (${3 * e.H * e.D}) and M = B·n ` +
          `(${e.B * e.n}), got N ${N}, M ${M}`,
      );
    }
    Object.assign(shapes, { B: e.B, n: e.n, H: e.H, D: e.D, maxLen: e.maxLen });
    for (
      const [k, b] of Object.entries({
        qkv: e.qkv,
        kv: e.kv,
        start: e.start,
        cosT: e.cos,
        sinT: e.sin,
      })
    ) {
      buffers[k] = { buffer: b };
    }
  } else {
    buffers.out = { buffer: e.out };
    if (e.kind !== "none" && e.bias) buffers.bias = { buffer: e.bias };
    if (copy) {
      // row m of this forward is row b = m of the decode: M = B one-token rows
      const need = M * copy.slots * N * 4;
      if (copy.slots < 1 || copy.hidden.size < need || copy.start.size < M * 4) {
        throw new Error(
          `specdec: fusedLinear slot copy: "${copy.hidden.label}" has ${copy.hidden.size} bytes ` +
            `and "${copy.start.label}" ${copy.start.size}; ${M} rows × ${copy.slots} slots × ` +
            `${N} need ${need} and ${M * 4} (one token per row, slots ≥ 1)`,
        );
      }
      Object.assign(buffers, {
        state: { buffer: copy.state },
        start: { buffer: copy.start },
        hidden: { buffer: copy.hidden },
      });
    }
  }
  const R = blockRows(M);
  // uniform bindings where everything fits (see the module doc: ~2-4× faster loads on lavapipe)
  const uniformOk = (b: GPUBuffer) => (b.usage & UNIFORM_USAGE) !== 0;
  let rc = 0, C = 8;
  // x is declared as big as its buffer allows (≤ 64 KiB), not as M·K: one pipeline serves every
  // M of a block size when the buffers are padded (the forward plan pads them to 64 KiB)
  const xVec4 = Math.floor(Math.min(a.x.size, UNIFORM_BYTES) / 16);
  const tex = a.wTex !== undefined;
  const uniformX = (a.uniform ?? gpu.isSoftware) && M <= MAX_R && M * K <= 4 * xVec4 &&
    uniformOk(a.x) && (!a.norm || uniformOk(a.norm));
  if (a.embed && a.embed.table.width !== K / 4) {
    throw new Error(
      `specdec: fusedLinear: the embedding texture is ${a.embed.table.width} texels wide, ` +
        `rows of ${K} need ${K / 4}`,
    );
  }
  if (tex && (a.wTex!.width !== K / 4 || a.wTex!.height !== N)) {
    throw new Error(
      `specdec: fusedLinear: the weight texture is ${a.wTex!.width} × ${a.wTex!.height} texels, ` +
        `W (${N}, ${K}) needs ${K / 4} × ${N}`,
    );
  }
  if (tex) rc = uniformX ? N : 0; // x (and the norm weight) uniform, W from the texture
  else if (uniformX && uniformOk(a.w)) {
    // 8 columns per lane where a workgroup's 64 columns fit a chunk, else 4 (plain epilogues)
    for (const c of D === undefined ? [8, 4] : [8]) {
      const r = chunkRows(N, K, c, D);
      if (r > 0 && Math.ceil(N / r) <= MAX_CHUNKS) {
        [rc, C] = [r, c];
        break;
      }
    }
  }
  const chunks = rc > 0 && !tex
    ? Array.from(
      { length: Math.ceil(N / rc) },
      (_, q) => (Math.min(N, (q + 1) * rc) - q * rc) * K / 4,
    )
    : [];
  const layout: FusedLayout = {
    kind: e.kind,
    kvTex: e.kind === "rotaryKv" && !!e.kvTex,
    wTex: tex,
    embed: a.embed !== undefined,
    norm: !!a.norm,
    bias: e.kind === "accumulate" && !!e.bias,
    slotCopy: !!copy,
    R,
    C,
    uniform: rc > 0 ? { x: xVec4, norm: K / 4, chunks } : undefined,
  };
  buffers.x = rc > 0 && !a.embed ? { buffer: a.x, offset: 0, size: xVec4 * 16 } : { buffer: a.x };
  if (a.embed) buffers.tokens = { buffer: a.embed.tokens };
  if (a.norm) {
    buffers.norm = rc > 0 ? { buffer: a.norm, offset: 0, size: K * 4 } : { buffer: a.norm };
  }
  if (tex) { /* bound below */ }
  else if (rc > 0) {
    chunks.forEach((c, q) =>
      buffers[`w${q}`] = { buffer: a.w, offset: q * rc * K * 4, size: c * 16 }
    );
  } else buffers.w = { buffer: a.w };
  const unitCols = D === undefined ? C : 8;
  const tilesN = Math.ceil(N / unitCols / WG);
  const tiles = M === 0 ? 0 : tilesN * Math.ceil(M / R);
  const code = fusedLinearCode(layout);
  const label = `fusedLinear ${a.norm ? "norm " : ""}${e.kind}${rc > 0 ? " uniform" : ""}${
    tex ? " wTex" : ""
  }${a.embed ? " embed" : ""}${layout.slotCopy ? " slotCopy" : ""}`;
  const params: Record<string, number> = {
    M,
    N,
    K,
    tilesN,
    tiles,
    eps: RMS_EPS,
    ...shapes,
    RC: rc > 0 ? rc : N,
    slots: copy?.slots ?? 1,
    L: copy?.L ?? 0,
  };
  const bytes = new ArrayBuffer(Math.ceil((PARAM_FIELDS.length * 4) / 16) * 16);
  const view = new DataView(bytes);
  PARAM_FIELDS.forEach((f, i) => {
    if (f === "eps") view.setFloat32(4 * i, params[f], true);
    else view.setUint32(4 * i, params[f], true);
  });
  const uniform = gpu.buffer(`${label} params`, bytes.byteLength, 0x40 | 0x8);
  gpu.device.queue.writeBuffer(uniform, 0, bytes);
  // bound by the names the WGSL declares (gpu.kernel allows no uniform but params)
  const declared = declaredBindings(code);
  const names = [...declared.keys()].filter((k) => k !== "params").sort();
  const given = Object.keys(buffers).sort();
  if (names.join() !== given.join()) {
    throw new Error(
      `specdec: ${label}: the shader binds ${names.join(", ")}, got ${given.join(", ")}`,
    );
  }
  const pipeline = gpu.pipeline(label, code);
  const textures: GPUBindGroupEntry[] = [];
  if (e.kind === "rotaryKv" && e.kvTex) {
    textures.push({
      binding: textureBinding(code, "kvT"),
      resource: e.kvTex.createView({ dimension: "2d-array" }),
    });
  }
  if (tex) textures.push({ binding: textureBinding(code, "wT"), resource: a.wTex!.createView() });
  if (a.embed) {
    textures.push({ binding: textureBinding(code, "embT"), resource: a.embed.table.createView() });
  }
  const bindGroup = gpu.device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: uniform } },
      ...names.map((k) => ({ binding: declared.get(k)!, resource: buffers[k] })),
      ...textures,
    ],
  });
  const n = Math.max(tiles, 1);
  return { label, pipeline, bindGroup, workgroups: tiles === 0 ? [0, 1, 1] : grid(n) };
}
