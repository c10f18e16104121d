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
import type { Dispatch, Gpu } from "./gpu.ts";

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
      return registerTile(gpu, layout, name, args, GEMM_TILE, GEMM_TILE_SCALAR);
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
