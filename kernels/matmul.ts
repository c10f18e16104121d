/**
 * Matrix multiplies in f32: the three GEMM layouts a linear layer needs (forward `y = x·Wᵀ`,
 * backward `dX = dY·W` and `dW = dYᵀ·X`), a GEMV for decode steps, and {@link linear}, which
 * picks between them. Sizes are uniform params, so one pipeline per variant (and, for the
 * register tiles, per load width and GEMV row block) serves all shapes; every kernel guards its
 * bounds, numbers its tiles linearly over a grid split beyond 65535 workgroups, adds an optional
 * bias and can accumulate into `c`.
 *
 * The WGSL lives beside this file, one variant per template: kernels/gemm.ts (GEMM variants
 * `"naive"`, `"workgroupTile"`, `"registerTile"`; see there for what each does and how fast it
 * runs) and kernels/gemv.ts (GEMV variants `"registerTile"`, `"splitK"`). Side by side in
 * `bench/matmul_bench.ts`.
 *
 * Training and prefill go through {@link linearForward}, {@link inputGradient} and
 * {@link weightGradient}, which on software adapters use the textured GEMM of
 * kernels/gemm_texture.ts (operands stored into rgba32float textures, 4–6× faster on lavapipe).
 *
 * The weight gradients `dW = dYᵀ·X` go through {@link weightGradient}: K is the token count
 * (thousands) while M×N is small (64×64, 256×64 at the tiny preset), so a tiled GEMM gets only a
 * few workgroups, each walking all of K. It splits K into chunks (partials into a scratch
 * buffer, then a reduction summing them in a fixed order; kernels/gemm_splitk.ts) when the
 * tiles alone would not reach a target count of workgroups. On software adapters the register
 * tiles are also narrowed to N (`fitTile`): N = 64 took a 128-column tile, half of it
 * computing clamped duplicates.
 *
 * The GEMV ({@link gemvNT}) serves small M (decode steps, verification) reading each weight
 * once per block of up to 16 rows: on software adapters it is the GEMM's register tile and,
 * when K and N are multiples of 4 (the model's shapes), R = M (no padded rows) with a vec4
 * epilogue (bias, `c`); its sums run in the GEMMs' order, so a row gets the same bits whatever
 * M is. On hardware, a workgroup per 4 output columns splits K over 64 invocations and reduces
 * in workgroup memory (coalesced weight reads).
 *
 * @module
 */
import {
  type Layout,
  naiveCode,
  type RegisterTile,
  registerTileCode,
  registerTileScalarCode,
  strides,
  vec4Ok,
  workgroupTileCode,
} from "./gemm.ts";
import { gemvRegisterTileCode, gemvSplitKCode } from "./gemv.ts";
import {
  REDUCE_WG,
  splitKPartialCode,
  splitKPartialScalarCode,
  splitKReduceCode,
} from "./gemm_splitk.ts";
import type { Dispatch, Gpu } from "./gpu.ts";
import { texturedGemm, texturedGemmFits, type TexturedLayout } from "./gemm_texture.ts";

/** GEMM variants of {@link matmulNT}, {@link matmulNN} and {@link matmulTN} (kernels/gemm.ts). */
export type GemmVariant = "naive" | "workgroupTile" | "registerTile";

/** GEMV variants of {@link gemvNT} (kernels/gemv.ts). */
export type GemvVariant = "registerTile" | "splitK";

/** Arguments of every matrix multiply; each function documents the shapes of `a`, `b`. */
export interface MatmulArgs {
  /** Left operand, f32 (shape per function). */
  a: GPUBuffer;
  /** Right operand, f32 (shape per function). */
  b: GPUBuffer;
  /** Output `(M, N)` f32, written (or added to, with `accumulate`). */
  c: GPUBuffer;
  /** Rows of `c`. */
  M: number;
  /** Columns of `c`. */
  N: number;
  /** Length of the reduction. */
  K: number;
  /** Optional `(N)` f32 added to every output row. */
  bias?: GPUBuffer;
  /** `c += a·b (+ bias)` instead of `c = a·b (+ bias)` (default false). */
  accumulate?: boolean;
  /** Label of the dispatch (default: the function's name). */
  label?: string;
  /**
   * Forces a variant, for benchmarks and tests: a {@link GemmVariant} for the GEMMs, a
   * {@link GemvVariant} for {@link gemvNT}. Default: the fastest for the adapter.
   */
  variant?: GemmVariant | GemvVariant;
}

/**
 * Register tile of the GEMMs with vec4 loads. Measured at 1024³ on lavapipe (best of several
 * runs on a busy 2-core machine): 8×8 ~16 GFLOPS, 16×8 ~22, 16×16 ~21. Bigger tiles compile
 * much slower there (the register allocator; cold: 8×8 0.5 s, 16×8 1.9 s, 16×16 6 s).
 */
const GEMM_TILE: RegisterTile = { R: 16, C: 8, WG: 16 };
/** Register tile of the GEMMs with scalar loads (sizes not multiples of 4: rare, compile fast). */
const GEMM_TILE_SCALAR: RegisterTile = { R: 8, C: 8, WG: 16 };
/**
 * GEMV register tile: columns per invocation and invocations per workgroup (R = the row block).
 * With R = 16 this is {@link GEMM_TILE}, so the two share a pipeline.
 */
const GEMV_C = 8, GEMV_WG = 16;
/** Largest M the GEMV serves in one row block; {@link linear} uses it up to this M. */
const GEMV_MAX_M = 16;
/** Largest row block of the vec4 GEMV (more rows are split into even blocks). */
const GEMV_VEC_MAX_R = 16;

/** A 16-byte buffer bound in place of an absent bias (read as f32 or vec4), one per device. */
const noBias = new WeakMap<GPUDevice, GPUBuffer>();

function dummyBias(gpu: Gpu): GPUBuffer {
  let buf = noBias.get(gpu.device);
  if (!buf) noBias.set(gpu.device, buf = gpu.buffer("matmul no-bias (4) f32", 16));
  return buf;
}

/** Checks sizes: non-negative integers below 2³¹. */
function checkSizes(name: string, { M, N, K }: MatmulArgs): void {
  for (const [k, v] of [["M", M], ["N", N], ["K", K]] as const) {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** 31) {
      throw new Error(`specdec: ${name}: ${k} = ${v} must be an integer in [0, 2^31)`);
    }
  }
}

/**
 * Builds the dispatch of a matmul shader: params (sizes, tiles along N, tile count, flags, and
 * `extra` fields such as strides), buffers a, b, bias (or the placeholder), c, and `tiles`
 * workgroups (split over x and y by the runtime).
 */
function build(
  gpu: Gpu,
  name: string,
  code: string,
  args: MatmulArgs,
  tile: { rows: number; cols: number },
  extra: Record<string, number> = {},
): Dispatch {
  const { M, N, K } = args;
  const tilesN = Math.ceil(N / tile.cols);
  const tiles = tilesN * Math.ceil(M / tile.rows);
  const d = gpu.kernel({
    label: args.label ?? name,
    code,
    params: {
      M,
      N,
      K,
      tilesN,
      tiles,
      hasBias: args.bias ? 1 : 0,
      accumulate: args.accumulate ? 1 : 0,
      ...extra,
    },
    buffers: { a: args.a, b: args.b, bias: args.bias ?? dummyBias(gpu), c: args.c },
    workgroups: Math.max(tiles, 1),
  });
  // Nothing to compute (M or N is 0): encode() skips a dispatch with a zero count.
  return tiles === 0 ? { ...d, workgroups: [0, 1, 1] } : d;
}

/** A register tile's output block: R rows × WG·C columns per workgroup. */
function regTileBlock(t: RegisterTile): { rows: number; cols: number } {
  return { rows: t.R, cols: t.WG * t.C };
}

/** The register-tile GEMM for these sizes: vec4 loads when {@link vec4Ok}, else scalar. */
function registerTile(
  gpu: Gpu,
  layout: Layout,
  name: string,
  args: MatmulArgs,
  vecTile: RegisterTile,
  scalarTile: RegisterTile,
): Dispatch {
  const { M, N, K } = args;
  if (vec4Ok(layout, M, N, K)) {
    return build(gpu, name, registerTileCode(layout, vecTile), args, regTileBlock(vecTile));
  }
  const code = registerTileScalarCode(scalarTile);
  return build(gpu, name, code, args, regTileBlock(scalarTile), strides(layout, M, N, K));
}

/**
 * The register tile narrowed to N: halves WG (down to 4 invocations) while half the tile still
 * spans N, so N = 64 gets 8 invocations × 8 columns instead of 16 × 8 of which half compute
 * clamped duplicates (measured at 256×64×2052 TN on lavapipe: ~2× faster). Each output is still
 * summed by one invocation in k order, so the bits do not change.
 */
function fitTile(tile: RegisterTile, N: number): RegisterTile {
  let WG = tile.WG;
  while (WG > 4 && (WG / 2) * tile.C >= N) WG /= 2;
  return { ...tile, WG };
}

/** Builds a GEMM of `layout` with the requested or default variant. */
function gemm(gpu: Gpu, layout: Layout, name: string, args: MatmulArgs): Dispatch {
  checkSizes(name, args);
  const variant = args.variant ?? (gpu.isSoftware ? "registerTile" : "workgroupTile");
  const { M, N, K } = args;
  switch (variant) {
    case "naive":
      return build(gpu, name, naiveCode(), args, { rows: 16, cols: 16 }, strides(layout, M, N, K));
    case "workgroupTile": {
      const s = strides(layout, M, N, K);
      return build(gpu, name, workgroupTileCode(), args, { rows: 64, cols: 64 }, s);
    }
    case "registerTile":
      return registerTile(
        gpu,
        layout,
        name,
        args,
        fitTile(GEMM_TILE, N),
        fitTile(GEMM_TILE_SCALAR, N),
      );
  }
  throw new Error(
    `specdec: ${name}: unknown variant ${variant} (naive, workgroupTile or registerTile)`,
  );
}

/**
 * `c (M, N) = a (M, K) · bᵀ` with `b (N, K)` (+ bias, or +=): the forward of a linear layer
 * `y = x·Wᵀ` with torch's `[out, in]` weights.
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (N, K)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulNT, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (2, 3)", new Float32Array([1, 2, 3, 4, 5, 6]));
 * const w = gpu.upload("w (1, 3)", new Float32Array([1, 0, -1]));
 * const y = gpu.buffer("y (2, 1)", 2 * 4);
 * gpu.run("y = x·wᵀ", [matmulNT(gpu, { a: x, b: w, c: y, M: 2, N: 1, K: 3 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [-2, -2]
 * ```
 */
export function matmulNT(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "NT", "matmulNT", args);
}

/**
 * `c (M, N) = a (M, K) · b (K, N)` (+ bias, or +=): the input gradient of a linear layer,
 * `dX = dY·W`.
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (K, N)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulNN, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (2, 3)", new Float32Array([1, 0, 0, 0, 1, 1]));
 * const dx = gpu.buffer("dx (1, 3)", 3 * 4);
 * gpu.run("dx = dy·w", [matmulNN(gpu, { a: dy, b: w, c: dx, M: 1, N: 3, K: 2 })]);
 * console.log(await gpu.readF32(dx)); // Float32Array [1, 2, 2]
 * ```
 */
export function matmulNN(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "NN", "matmulNN", args);
}

/**
 * `c (M, N) = aᵀ · b` with `a (K, M)`, `b (K, N)` (+ bias, or +=): the weight gradient of a
 * linear layer, `dW = dYᵀ·X` (use `accumulate` to add into a gradient buffer).
 *
 * @param gpu the runtime
 * @param args `a (K, M)`, `b (K, N)`, `c (M, N)`, optional `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { matmulTN, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (2, 1)", new Float32Array([1, 2]));
 * const x = gpu.upload("x (2, 2)", new Float32Array([1, 1, 3, 0]));
 * const dw = gpu.buffer("dw (1, 2)", 2 * 4);
 * gpu.run("dw = dyᵀ·x", [matmulTN(gpu, { a: dy, b: x, c: dw, M: 1, N: 2, K: 2 })]);
 * console.log(await gpu.readF32(dw)); // Float32Array [7, 1]
 * ```
 */
export function matmulTN(gpu: Gpu, args: MatmulArgs): Dispatch {
  return gemm(gpu, "TN", "matmulTN", args);
}

/** Arguments of {@link weightGradient}: a {@link matmulTN}'s, and optionally the K chunks. */
export interface WeightGradientArgs extends MatmulArgs {
  /**
   * K chunks of the split-K GEMM, forced (1: the plain {@link matmulTN}, one dispatch). Default:
   * chosen from the shape and the kind of adapter, so the same inputs give the same bits.
   */
  splits?: number;
}

/** Shortest K chunk worth a split: shorter ones cost more in partials than they gain. */
const SPLITK_MIN_CHUNK = 256;
/** Most K chunks. */
const SPLITK_MAX = 32;
/** Most floats of partials (16 MiB): bigger outputs have tiles enough without splitting. */
const SPLITK_MAX_FLOATS = 1 << 22;
/**
 * Workgroups the split-K GEMM aims for. Software adapters run a workgroup per thread at a time
 * (2–16 threads), hardware ones want thousands of invocations: with 16-invocation workgroups a
 * few hundred. A constant per kind of adapter, not the thread count, so the bits depend on the
 * shape and kind of adapter only.
 */
const SPLITK_TARGET = { software: 32, hardware: 256 };
/** Register tile of the split-K partials on hardware adapters (narrowed to N by fitTile). */
const SPLITK_TILE_HW: RegisterTile = { R: 4, C: 4, WG: 64 };

/** The partials' register tile for these sizes, and whether it loads vec4. */
function splitKTile(gpu: Pick<Gpu, "isSoftware">, M: number, N: number, K: number): {
  tile: RegisterTile;
  vec: boolean;
} {
  const vec = vec4Ok("TN", M, N, K);
  const base = gpu.isSoftware ? (vec ? GEMM_TILE : GEMM_TILE_SCALAR) : SPLITK_TILE_HW;
  return { tile: fitTile(base, N), vec };
}

/**
 * K chunks for a TN GEMM of these sizes: enough that tiles × chunks reaches the adapter's
 * target ({@link SPLITK_TARGET}), with chunks of at least {@link SPLITK_MIN_CHUNK} k; 1 (no
 * split) when the tiles alone reach it, K is short or the partials would be too big.
 */
export function splitKFor(
  gpu: Pick<Gpu, "isSoftware">,
  M: number,
  N: number,
  K: number,
): number {
  if (M === 0 || N === 0 || K === 0) return 1;
  const { tile } = splitKTile(gpu, M, N, K);
  const tiles = Math.ceil(N / (tile.WG * tile.C)) * Math.ceil(M / tile.R);
  const target = gpu.isSoftware ? SPLITK_TARGET.software : SPLITK_TARGET.hardware;
  const most = Math.min(
    SPLITK_MAX,
    Math.floor(K / SPLITK_MIN_CHUNK),
    Math.floor(SPLITK_MAX_FLOATS / (M * N)),
  );
  return Math.max(1, Math.min(Math.ceil(target / tiles), most));
}

/** Partials buffers, one per device, replaced by a bigger one when a GEMM needs more. */
const partials = new WeakMap<GPUDevice, GPUBuffer>();

/**
 * A buffer of at least `floats` f32 for partials. Shared by every split-K GEMM on the device:
 * each one's reduce directly follows its partials in any dispatch list, so no two uses overlap.
 * A smaller one is left to the dispatches already built on it.
 */
function partialsBuffer(gpu: Gpu, floats: number): GPUBuffer {
  let buf = partials.get(gpu.device);
  if (!buf || buf.size < floats * 4) {
    const bytes = Math.max(floats * 4, 2 * (buf?.size ?? 0), 1 << 16);
    buf = gpu.buffer("matmulTN split-K partials (S, M, N) f32", bytes);
    partials.set(gpu.device, buf);
  }
  return buf;
}

/** The split-K TN GEMM in `splits` K chunks: a partials dispatch, then the ordered reduction. */
function matmulTNSplitK(gpu: Gpu, args: MatmulArgs, splits: number): Dispatch[] {
  const { M, N, K } = args;
  const kChunk = Math.ceil(K / splits);
  const S = Math.ceil(K / kChunk); // no empty chunk
  const { tile, vec } = splitKTile(gpu, M, N, K);
  const tilesN = Math.ceil(N / (tile.WG * tile.C));
  const tiles = tilesN * Math.ceil(M / tile.R);
  const partial = partialsBuffer(gpu, S * M * N);
  const label = args.label ?? "matmulTN";
  const sizes = { M, N, K, tilesN, tiles, splits: S, kChunk };
  const d = gpu.kernel({
    label: `${label} split-K partials`,
    code: vec ? splitKPartialCode(tile) : splitKPartialScalarCode(tile),
    params: vec ? sizes : { ...sizes, ...strides("TN", M, N, K) },
    buffers: { a: args.a, b: args.b, partial },
    workgroups: tiles * S,
  });
  const r = gpu.kernel({
    label: `${label} split-K reduce`,
    code: splitKReduceCode(),
    params: {
      MN: M * N,
      N,
      splits: S,
      hasBias: args.bias ? 1 : 0,
      accumulate: args.accumulate ? 1 : 0,
    },
    buffers: { partial, bias: args.bias ?? dummyBias(gpu), c: args.c },
    workgroups: Math.ceil((M * N) / REDUCE_WG),
  });
  return [d, r];
}

/**
 * The weight gradient of a linear layer, `dW (M, N) (+)= dYᵀ·X` with {@link matmulTN}
 * semantics, `a (K, M)`, `b (K, N)`, K the token count. On software adapters (no `splits` or
 * `variant` forced) the textured GEMM of kernels/gemm_texture.ts (both operands stored
 * transposed into textures, 4–6× faster on lavapipe). Otherwise, when K is long and M×N gives few tiles
 * (e.g. 256×64 with K = 2052), a split-K GEMM — partials over K chunks into a scratch buffer,
 * then a reduction that sums them in a fixed order and adds `bias` and (with `accumulate`) `c` —
 * else the plain {@link matmulTN}. The choice depends on the sizes and the kind of adapter only,
 * so the same inputs give the same bits on the same adapter.
 *
 * @param gpu the runtime
 * @param args `a (K, M)`, `b (K, N)`, `c (M, N)`, optional `bias (N)`, `accumulate`, and
 *   `splits` to force the number of K chunks (1: no split)
 * @returns the dispatches (one or two), to encode in this order any number of times
 * @throws Error on sizes that are not integers in [0, 2³¹) or `splits` not a positive integer
 * @example
 * ```ts
 * import { requestGpu, weightGradient } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (2, 1)", new Float32Array([1, 2]));
 * const x = gpu.upload("x (2, 2)", new Float32Array([1, 1, 3, 0]));
 * const dw = gpu.upload("dw (1, 2)", new Float32Array([1, 1]));
 * const args = { a: dy, b: x, c: dw, M: 1, N: 2, K: 2, accumulate: true, splits: 2 };
 * gpu.run("dw += dyᵀ·x", weightGradient(gpu, args));
 * console.log(await gpu.readF32(dw)); // Float32Array [8, 2]
 * ```
 */
export function weightGradient(gpu: Gpu, args: WeightGradientArgs): Dispatch[] {
  checkSizes("weightGradient", args);
  const { splits, ...rest } = args;
  if (splits !== undefined && (!Number.isInteger(splits) || splits < 1)) {
    throw new Error(`specdec: weightGradient: splits = ${splits} must be a positive integer`);
  }
  const { M, N, K } = args;
  if (splits === undefined) {
    const t = textured(gpu, "TN", rest);
    if (t) return t;
  }
  const auto = args.variant ? 1 : splitKFor(gpu, M, N, K); // a forced variant: no split
  const S = Math.min(splits ?? auto, Math.max(K, 1));
  if (S <= 1 || M === 0 || N === 0) return [matmulTN(gpu, rest)];
  return matmulTNSplitK(gpu, rest, S);
}

/**
 * The textured GEMM (kernels/gemm_texture.ts) where it is the default: on software adapters,
 * no forced variant, and sizes that fit the textures; else undefined.
 */
function textured(gpu: Gpu, layout: TexturedLayout, args: MatmulArgs): Dispatch[] | undefined {
  if (!gpu.isSoftware || args.variant || !texturedGemmFits(gpu, args.M, args.N, args.K)) {
    return undefined;
  }
  const { variant: _, ...rest } = args;
  return texturedGemm(gpu, layout, { ...rest, label: args.label ?? `matmul${layout} (textured)` });
}

/**
 * The forward of a linear layer over many rows (training, prefill), `c (M, N) = a (M, K) · bᵀ`
 * (+ bias, or +=) with {@link matmulNT} semantics: the GEMV for M ≤ 16, on software adapters the
 * textured GEMM (kernels/gemm_texture.ts: the same bits as `matmulNT`, 4–6× faster on lavapipe),
 * else {@link matmulNT}.
 *
 * @param gpu the runtime
 * @param args `a (M, K)` inputs, `b (N, K)` weights `[out, in]`, `c (M, N)`, optional
 *   `bias (N)`, `accumulate`
 * @returns the dispatches (one to three), to encode in this order any number of times
 * @throws Error on sizes that are not integers in [0, 2³¹)
 * @example
 * ```ts
 * import { linearForward, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (1, 2)", new Float32Array([3, 4]));
 * const y = gpu.buffer("y (1, 1)", 4);
 * gpu.run("linear", linearForward(gpu, { a: x, b: w, c: y, M: 1, N: 1, K: 2 }));
 * console.log(await gpu.readF32(y)); // Float32Array [11]
 * ```
 */
export function linearForward(gpu: Gpu, args: MatmulArgs): Dispatch[] {
  checkSizes("linearForward", args);
  const { variant: _, ...rest } = args;
  if (args.M <= GEMV_MAX_M) return [gemvNT(gpu, rest)];
  return textured(gpu, "NT", rest) ?? [matmulNT(gpu, rest)];
}

/**
 * The input gradient of a linear layer, `dX (M, N) = dY (M, K) · W (K, N)` (+ bias, or +=) with
 * {@link matmulNN} semantics: on software adapters the textured GEMM (kernels/gemm_texture.ts,
 * W stored transposed), else {@link matmulNN}.
 *
 * @param gpu the runtime
 * @param args `a (M, K)` = dY, `b (K, N)` = W `[out, in]`, `c (M, N)`, optional `bias (N)`,
 *   `accumulate`
 * @returns the dispatches (one or three), to encode in this order any number of times
 * @throws Error on sizes that are not integers in [0, 2³¹)
 * @example
 * ```ts
 * import { inputGradient, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (2, 3)", new Float32Array([1, 0, 0, 0, 1, 1]));
 * const dx = gpu.buffer("dx (1, 3)", 3 * 4);
 * gpu.run("dx = dy·w", inputGradient(gpu, { a: dy, b: w, c: dx, M: 1, N: 3, K: 2 }));
 * console.log(await gpu.readF32(dx)); // Float32Array [1, 2, 2]
 * ```
 */
export function inputGradient(gpu: Gpu, args: MatmulArgs): Dispatch[] {
  checkSizes("inputGradient", args);
  return textured(gpu, "NN", args) ?? [matmulNN(gpu, args)];
}

/** Row block of the GEMV for M rows: the next power of two ≥ M, at most {@link GEMV_MAX_M}. */
function gemvRows(M: number): number {
  let r = 1;
  while (r < M && r < GEMV_MAX_M) r *= 2;
  return r;
}

/**
 * Row block of the vec4 GEMV for M rows: M itself up to {@link GEMV_VEC_MAX_R} (no padded rows
 * whose loads and dot products are thrown away), else the most even split into blocks of at
 * most that many rows.
 */
function gemvVecRows(M: number): number {
  const blocks = Math.max(1, Math.ceil(M / GEMV_VEC_MAX_R));
  return Math.max(1, Math.ceil(M / blocks));
}

/**
 * Matrix-vector product for decode steps, with {@link matmulNT} semantics:
 * `c (M, N) = a (M, K) · bᵀ` with `b (N, K)` (+ bias, or +=). Fast for small M (1..16):
 * the rows of a block are computed together, so each weight is read once per block of up to
 * 16 rows (`"registerTile"` takes exactly M rows when K and N are multiples of 4).
 *
 * @param gpu the runtime
 * @param args `a (M, K)`, `b (N, K)`, `c (M, N)`, optional `bias (N)`, `accumulate`;
 *   `variant` `"registerTile"` (default on software adapters) or `"splitK"` (default on
 *   hardware)
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { gemvNT, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (3, 2)", new Float32Array([1, 0, 0, 1, 1, 1]));
 * const y = gpu.buffer("y (1, 3)", 3 * 4);
 * gpu.run("y = x·wᵀ", [gemvNT(gpu, { a: x, b: w, c: y, M: 1, N: 3, K: 2 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [1, 2, 3]
 * ```
 */
export function gemvNT(gpu: Gpu, args: MatmulArgs): Dispatch {
  checkSizes("gemvNT", args);
  const { M, N, K } = args;
  const R = gemvRows(M);
  const variant = args.variant ?? (gpu.isSoftware ? "registerTile" : "splitK");
  if (variant === "registerTile") {
    if (vec4Ok("NT", M, N, K) && N % 4 === 0) {
      const tile = { R: gemvVecRows(M), C: GEMV_C, WG: gpu.isSoftware ? 8 : GEMV_WG };
      return build(gpu, "gemvNT", gemvRegisterTileCode(tile), args, regTileBlock(tile));
    }
    const tile = { R, C: GEMV_C, WG: GEMV_WG };
    return registerTile(gpu, "NT", "gemvNT", args, tile, tile);
  }
  if (variant === "splitK") {
    return build(gpu, "gemvNT", gemvSplitKCode(R), args, { rows: R, cols: 4 });
  }
  throw new Error(`specdec: gemvNT: unknown variant ${variant} (registerTile or splitK)`);
}

/**
 * A linear layer's forward with {@link matmulNT} semantics, `c = a·bᵀ (+ bias)`: the GEMV for
 * M ≤ 16 rows (decode steps), the tiled GEMM otherwise.
 *
 * @param gpu the runtime
 * @param args `a (M, K)` inputs, `b (N, K)` weights `[out, in]`, `c (M, N)`, optional
 *   `bias (N)`, `accumulate`
 * @returns the dispatch, to encode any number of times
 * @example
 * ```ts
 * import { linear, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (1, 2)", new Float32Array([1, 2]));
 * const w = gpu.upload("w (1, 2)", new Float32Array([3, 4]));
 * const bias = gpu.upload("bias (1)", new Float32Array([0.5]));
 * const y = gpu.buffer("y (1, 1)", 4);
 * gpu.run("linear", [linear(gpu, { a: x, b: w, bias, c: y, M: 1, N: 1, K: 2 })]);
 * console.log(await gpu.readF32(y)); // Float32Array [11.5]
 * ```
 */
export function linear(gpu: Gpu, args: MatmulArgs): Dispatch {
  const { variant: _, ...rest } = args;
  return args.M <= GEMV_MAX_M ? gemvNT(gpu, rest) : matmulNT(gpu, rest);
}
