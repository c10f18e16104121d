/**
 * Attention for decode and verification steps on software adapters, reading keys and values from
 * an rgba32float texture copy of the KV cache instead of the storage buffer.
 *
 * ## Why a texture (bench/dispatch_bench.ts `--only space`)
 *
 * Mesa 22.3 lavapipe (llvmpipe, LLVM 15, AVX2: 8 lanes), 2 shared cores, load average ~4,
 * GPU timestamps, 20 dispatches per pass, median of 5 alternated rounds. The same loop reads the
 * same data from different places; ns per 32-bit word of the big operand:
 *
 * | work                                      | storage | uniform chunks | rgba32f texture | workgroup (coop fill) |
 * | ----------------------------------------- | ------: | -------------: | --------------: | --------------------: |
 * | attention decode, 4 heads × 512 keys × 32 | 2183 µs, 16.7 | 616 µs, 4.7 | **145 µs, 1.1** | 4362 µs, 33.3 |
 * | GEMV 512 × 128 (M = 1)                    | 876 µs, 13.4 | 206 µs, 3.1 | **81 µs, 1.2** | 1247 µs, 19.0 |
 * | GEMV 128 × 512 (M = 1)                    | 925 µs, 14.1 | 196 µs, 3.0 | **80 µs, 1.2** | 1885 µs, 28.8 |
 *
 * A storage load is a scalar loop over the 8 lanes with a bounds check each; a uniform load at a
 * varying address is a masked gather; `textureLoad` of an rgba32float texel with integer
 * coordinates goes through llvmpipe's SoA texel fetch, one vectorised gather per component for
 * all lanes, and a texture has no 64 KiB limit. Workgroup memory filled from storage pays the
 * storage loads and then its own per-lane loads (it only helps when a word is reused, and here
 * each is read once). Addressing matters a little: the same K/V in a texture 256 texels wide
 * (x and y from a flat index) took 230 µs against 145 µs with x = the vec4 of the head vector
 * and y = the position (the y is shared by a row's 8 loads).
 *
 * So on software adapters each KV cache layer also lives in a texture: a 2-D array of
 * `2·B·H` layers (k of (b, h) at layer `b·H + h`, v at `(B + b)·H + h`), `D/4` texels wide and
 * `maxLen` high. The fused qkv GEMV's epilogue stores k and v into it as well as into the
 * storage cache (kernels/fused_linear.ts), and unfused forwards copy them with
 * {@link kvTextureWrite}; the storage cache stays the one training and the unfused attention
 * read.
 *
 * {@link attentionDecode} is kernels/attention_forward.ts's `"split"` kernel with its key and
 * value loads from the texture: the same lanes, order and arithmetic, so its outputs have the
 * same bits and greedy decoding is unchanged (tests/attention_decode_test.ts).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { attentionSplitCode, kvWriteCode, splitShape } from "./attention_forward.ts";

/** GPUTextureUsage: TEXTURE_BINDING | STORAGE_BINDING | COPY_SRC | COPY_DST. */
const KV_TEXTURE_USAGE = 0x04 | 0x08 | 0x01 | 0x02;

/**
 * Whether a KV cache of these sizes gets a texture copy: software adapters only (hardware keeps
 * the storage path, unmeasured there), D a multiple of 8 (the fused qkv epilogue's rotary
 * halves), and within the device's texture limits.
 *
 * @param gpu the runtime
 * @param B rows
 * @param H heads
 * @param D dimHead
 * @param maxLen positions per row
 * @returns whether {@link kvTexture} may be called
 */
export function kvTextureSupported(
  gpu: Gpu,
  B: number,
  H: number,
  D: number,
  maxLen: number,
): boolean {
  const lim = gpu.device.limits;
  return gpu.isSoftware && D > 0 && D % 8 === 0 && D / 4 <= lim.maxTextureDimension2D &&
    maxLen > 0 && maxLen <= lim.maxTextureDimension2D && B * H > 0 &&
    2 * B * H <= lim.maxTextureArrayLayers;
}

/**
 * Allocates one layer's KV texture: rgba32float, `D/4` wide, `maxLen` high, `2·B·H` layers.
 *
 * @param gpu the runtime
 * @param label the texture's label
 * @param B rows
 * @param H heads
 * @param D dimHead
 * @param maxLen positions per row
 * @returns the texture (uninitialised, like the storage cache)
 */
export function kvTexture(
  gpu: Gpu,
  label: string,
  B: number,
  H: number,
  D: number,
  maxLen: number,
): GPUTexture {
  return gpu.device.createTexture({
    label,
    size: [D / 4, maxLen, 2 * B * H],
    format: "rgba32float",
    usage: KV_TEXTURE_USAGE,
  });
}

/**
 * The split kernel (kernels/attention_forward.ts `attentionSplitCode`) with its key and value
 * loads from the KV texture: one template, so both give the same bits.
 *
 * @param D head size
 * @param S threads per workgroup
 * @param QC queries per workgroup
 * @returns the WGSL
 */
export function attentionDecodeCode(D: number, S: number, QC: number): string {
  return attentionSplitCode(D, S, QC, "kvTexture");
}

/** Sizes of the decode attention and the texture write. */
export interface DecodeAttentionSizes {
  /** Rows. */
  B: number;
  /** Tokens per row in this forward. */
  n: number;
  /** Heads. */
  H: number;
  /** dimHead (a multiple of 8, see {@link kvTextureSupported}). */
  D: number;
  /** Cache positions per row. */
  maxLen: number;
}

/**
 * Causal attention of this forward's queries over the KV texture: query `(b, i)` attends
 * positions `0..start[b]+i` (clamped to maxLen − 1) of its row and head, exactly as
 * kernels/attention.ts's `attention` with the `"split"` variant, with the same bits; keys and
 * values come from `kvTex` (written by the fused qkv epilogue or {@link kvTextureWrite}).
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)` (q read), `kvTex` from {@link kvTexture}, `start (B)` u32,
 *   outputs `out (T, H, D)` and `lse (B, H, n)`, sizes
 * @returns the dispatch
 * @throws Error when D is not a multiple of 8
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { attentionDecode, kvTexture, kvTextureWrite } from "./attention_decode.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 1, 2, 8, 16];
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(0.5));
 * const kvTex = kvTexture(gpu, "kv texture", B, H, D, maxLen);
 * const start = gpu.upload("start (B)", new Uint32Array([0]));
 * const out = gpu.buffer("out (T, H, D)", B * n * H * D * 4);
 * const lse = gpu.buffer("lse (B, H, n)", B * H * n * 4);
 * const sizes = { B, n, H, D, maxLen };
 * gpu.run("decode", [
 *   kvTextureWrite(gpu, { qkv, kvTex, start, ...sizes }),
 *   attentionDecode(gpu, { qkv, kvTex, start, out, lse, ...sizes }),
 * ]);
 * console.log(await gpu.readF32(out)); // 0.5 everywhere
 * ```
 */
export function attentionDecode(
  gpu: Gpu,
  a: DecodeAttentionSizes & {
    qkv: GPUBuffer;
    kvTex: GPUTexture;
    start: GPUBuffer;
    out: GPUBuffer;
    lse: GPUBuffer;
  },
): Dispatch {
  const { B, n, H, D, maxLen } = a;
  if (D % 8 !== 0) throw new Error(`specdec: attentionDecode needs dimHead % 8 = 0, got ${D}`);
  const { S, QC } = splitShape(gpu, D, n);
  const tiles = Math.ceil(n / QC);
  return gpu.kernel({
    label: "attention decode (texture)",
    code: attentionDecodeCode(D, S, QC),
    params: { B, n, H, maxLen, scale: 1 / Math.sqrt(D), tiles },
    buffers: { qkv: a.qkv, start: a.start, out: a.out, lse: a.lse },
    textures: { kvT: a.kvTex.createView({ dimension: "2d-array" }) },
    workgroups: B * H * tiles,
  });
}

/**
 * Copies k and v of every token `(b, i)` of this forward from `qkv` into the KV texture at
 * position `start[b] + i` (positions ≥ maxLen are skipped), as kvWrite does into the storage
 * cache: the unfused forwards keep the texture in step with the cache.
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)` (after rotary), `kvTex` (written), `start (B)` u32, sizes
 * @returns the dispatch
 * @throws Error when D is not a multiple of 8
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { kvTexture, kvTextureWrite } from "./attention_decode.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 2, 1, 8, 4];
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(1));
 * const kvTex = kvTexture(gpu, "kv texture", B, H, D, maxLen);
 * const start = gpu.upload("start (B)", new Uint32Array([0]));
 * gpu.run("copy", [kvTextureWrite(gpu, { qkv, kvTex, start, B, n, H, D, maxLen })]);
 * ```
 */
export function kvTextureWrite(
  gpu: Gpu,
  a: DecodeAttentionSizes & { qkv: GPUBuffer; kvTex: GPUTexture; start: GPUBuffer },
): Dispatch {
  const { B, n, H, D, maxLen } = a;
  if (D % 8 !== 0) throw new Error(`specdec: kvTextureWrite needs dimHead % 8 = 0, got ${D}`);
  const total = B * n * 2 * H * (D / 4);
  return gpu.kernel({
    label: "kvTextureWrite",
    code: kvWriteCode("vec4f", "texture"),
    params: { B, n, H, Dw: D / 4, maxLen, total },
    buffers: { qkv: a.qkv, start: a.start },
    textures: { kvT: a.kvTex.createView({ dimension: "2d-array" }) },
    workgroups: total === 0 ? 0 : Math.ceil(total / 64),
  });
}
