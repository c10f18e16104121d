/**
 * An opt-in NT GEMM reading its operands from rgba32float textures (issue 14, a measurement; not
 * used by training): `c (M, N) = a (M, K) · b (N, K)ᵀ`, the torch Linear layout, with `a` a
 * texture `(M rows, K/4 texels)` and `b` a texture `(N rows, K/4 texels)` (the layout of
 * ModelState.weightTexture). `c` stays a storage buffer.
 *
 * Why: on lavapipe a storage load is a per-lane loop (13–17 ns per 32-bit word) while a
 * `textureLoad` of an rgba32float texel is a vectorised gather (~1.1 ns per word; see
 * kernels/fused_linear.ts). The register tile is the one of kernels/gemm.ts's `"registerTile"`
 * NT (16×8 per invocation, narrowed to N the same way) and the k-step is {@link NT_VEC4_STEP}
 * with the loads swapped for `textureLoad`, so every output is summed in the same order and the
 * result has the same bits as `matmulNT` (tests/gemm_texture_test.ts checks it).
 *
 * Measured (bench/gemm_texture_bench.ts, lavapipe on 2 shared cores, load average ~1): 4.6–6.2×
 * the storage kernel's speed at the training shapes and 1024³ (12–18 GFLOP/s against 2.6–2.9);
 * copying an operand into its texture costs ~0.1–0.5 ms, under 1 % of the GEMM. With only `b`
 * in a texture (`a` a storage buffer, as activations are) the gain is 1.3–1.4×: both operands
 * must be textures. Numbers in that file's header.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";
import { NT_VEC4_STEP, type RegisterTile, STORE4 } from "./gemm.ts";
import type { MatmulArgs } from "./matmul.ts";
import { scratchTexture, textureFits } from "./texture_scratch.ts";
import { unrollLoops } from "./unroll.ts";

/** The register tile of kernels/matmul.ts's vec4 GEMMs (GEMM_TILE there), before narrowing. */
const TILE: RegisterTile = { R: 16, C: 8, WG: 16 };

/** Arguments of {@link matmulNTTexture}. */
export interface TextureGemmArgs {
  /**
   * `a (M, K)` as an rgba32float texture K/4 texels wide, M high (TEXTURE_BINDING usage), or as
   * an f32 storage buffer (read as vec4, as `matmulNT` does): the layout of a weight texture `b`
   * with activations left in storage.
   */
  a: GPUTexture | GPUBuffer;
  /**
   * `b (N, K)` as an rgba32float texture K/4 texels wide, N high (TEXTURE_BINDING usage); a
   * bigger texture (a, too) is read only in its first rows and texels.
   */
  b: GPUTexture;
  /** `c (M, N)` f32 storage buffer, written (or added into with `accumulate`). */
  c: GPUBuffer;
  /** Rows of c. */
  M: number;
  /** Columns of c. */
  N: number;
  /** Reduction length, a multiple of 4. */
  K: number;
  /** Optional `bias (N)`, added to every row. */
  bias?: GPUBuffer;
  /** Add into c instead of overwriting it. */
  accumulate?: boolean;
  /** Label of the dispatch (default `"matmulNTTexture"`). */
  label?: string;
}

/**
 * The WGSL of the texture NT GEMM: kernels/gemm.ts's register-tile NT with the operands read by
 * `textureLoad(aT, vec2u(k, row), 0)` (texel k of a row holds columns 4k..4k+4). Rows are clamped
 * into range for the loads as there, so the inner loop has no branches.
 *
 * @param tile the register tile (C a multiple of 4)
 * @param aTexture whether `a` is a texture too (else a storage `array<vec4f>`, loaded as in
 *   kernels/gemm.ts)
 * @returns the WGSL, unrolled
 */
export function textureGemmCode(tile: RegisterTile, aTexture = true): string {
  // The k-step of the storage NT, word for word, with its two loads swapped: same FMA order.
  const step = NT_VEC4_STEP
    .replace("b[bj[j] + k]", "textureLoad(bT, vec2u(k, bj[j]), 0)")
    .replace(
      "a[ai[i] + k]",
      aTexture ? "textureLoad(aT, vec2u(k, ai[i]), 0)" : "a[ai[i] * K4 + k]",
    );
  if (step.includes("b[bj") || step.includes("a[ai[i] +")) {
    throw new Error("specdec: textureGemmCode: NT_VEC4_STEP changed; update the texture loads");
  }
  return unrollLoops(/* wgsl */ `
struct Params { M: u32, N: u32, K: u32, tilesN: u32, tiles: u32, hasBias: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;   // (N), or unused words
@group(0) @binding(2) var<storage, read_write> c: array<f32>; // (M, N)
@group(0) @binding(3) var bT: texture_2d<f32>;                // (N, K/4) texels: b
${
    aTexture
      ? "@group(0) @binding(4) var aT: texture_2d<f32>;                // (M, K/4) texels: a"
      : "@group(0) @binding(4) var<storage, read> a: array<vec4f>;    // (M, K), as vec4 along rows"
  }

const R: u32 = ${tile.R}u;   // rows per invocation
const C: u32 = ${tile.C}u;    // columns per invocation
const C4: u32 = ${tile.C / 4}u;   // vec4 columns per invocation
const WG: u32 = ${tile.WG}u; // invocations per workgroup, side by side along N
${STORE4}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let K4 = params.K / 4u;
  let m0 = (t / params.tilesN) * R;
  let n0 = (t % params.tilesN) * WG * C + lid * C;
  var ai: array<u32, R>; // texture rows of A(m0 + i, ·), clamped
  var bj: array<u32, C>; // texture rows of B(·, n0 + j), clamped
  for (var i = 0u; i < R; i++) { /* unroll */ ai[i] = min(m0 + i, params.M - 1u); }
  for (var j = 0u; j < C; j++) { /* unroll */ bj[j] = min(n0 + j, params.N - 1u); }
  var acc: array<vec4f, R * C4>; // c(m0 + i, n0 + 4q..4q+4) at acc[i * C4 + q]
  for (var k = 0u; k < K4; k++) {${step}
  }
  var out: array<vec4f, R * C4>; // acc stays in registers only while every index is constant
  for (var q = 0u; q < R * C4; q++) { /* unroll */ out[q] = acc[q]; }
  for (var q = 0u; q < R * C4; q++) { store4(m0 + q / C4, n0 + (q % C4) * 4u, out[q]); }
}`);
}

/** The placeholder bias (4 words) per device. */
const noBias = new WeakMap<GPUDevice, GPUBuffer>();

/**
 * Checks the sizes against a texture operand: rgba32float, at least K/4 texels wide and `rows`
 * high (a bigger texture is read only where the sizes say), within the device's 2-D texture
 * limit.
 */
function checkOperand(gpu: Gpu, name: string, t: GPUTexture, rows: number, K: number): void {
  const lim = gpu.device.limits.maxTextureDimension2D;
  if (rows > lim || K / 4 > lim) {
    throw new Error(
      `specdec: matmulNTTexture: "${name}" would be ${K / 4} × ${rows} texels, over the ` +
        `device's maxTextureDimension2D ${lim}; use matmulNT (storage buffers)`,
    );
  }
  if (t.format !== "rgba32float" || t.dimension !== "2d") {
    throw new Error(
      `specdec: matmulNTTexture: "${name}" is a ${t.dimension} ${t.format} texture; it must be ` +
        `a 2d rgba32float texture`,
    );
  }
  if (t.width < K / 4 || t.height < rows) {
    throw new Error(
      `specdec: matmulNTTexture: "${name}" is ${t.width} × ${t.height} texels; K ${K} and ` +
        `${rows} rows need at least ${K / 4} × ${rows}`,
    );
  }
}

/**
 * The NT GEMM with both operands read from rgba32float textures: `c (M, N) = a · bᵀ (+ bias)
 * (+ c)`. Same tile, same summation order and so the same bits as kernels/matmul.ts's
 * `matmulNT` with its `"registerTile"` variant on vec4 sizes.
 *
 * @param gpu the runtime
 * @param args the textures, the output, the sizes and the flags
 * @returns the dispatch
 * @throws Error when K is not a positive multiple of 4, a size is not a non-negative integer, a
 *   texture is not rgba32float of K/4 × rows texels, or a size is over maxTextureDimension2D
 * @example
 * ```ts
 * import { requestGpu } from "../kernels/gpu.ts";
 * import { matmulNTTexture, textureFromBuffer } from "../kernels/gemm_texture.ts";
 * const gpu = await requestGpu();
 * const M = 4, N = 2, K = 64;
 * const x = gpu.upload("x (M, K)", new Float32Array(M * K).fill(1));
 * const w = gpu.upload("w (N, K)", new Float32Array(N * K).fill(2));
 * const enc = gpu.device.createCommandEncoder();
 * const a = textureFromBuffer(gpu, enc, x, M, K), b = textureFromBuffer(gpu, enc, w, N, K);
 * gpu.device.queue.submit([enc.finish()]);
 * const c = gpu.buffer("c (M, N)", M * N * 4);
 * gpu.run("gemm", [matmulNTTexture(gpu, { a, b, c, M, N, K })]);
 * console.log(await gpu.readF32(c)); // 128 everywhere
 * ```
 */
export function matmulNTTexture(gpu: Gpu, args: TextureGemmArgs): Dispatch {
  const { M, N, K } = args;
  for (const [k, v] of [["M", M], ["N", N], ["K", K]] as const) {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** 31) {
      throw new Error(`specdec: matmulNTTexture: ${k} must be a non-negative integer, got ${v}`);
    }
  }
  if (K === 0 || K % 4 !== 0) {
    throw new Error(
      `specdec: matmulNTTexture: K ${K} must be a positive multiple of 4 (rows of rgba32float ` +
        `texels); use matmulNT (storage buffers)`,
    );
  }
  const aTexture = !(args.a instanceof GPUBuffer);
  if (args.a instanceof GPUBuffer) {
    if (args.a.size < M * K * 4) {
      throw new Error(
        `specdec: matmulNTTexture: "a" has ${args.a.size} bytes, (M ${M}, K ${K}) needs ${
          M * K * 4
        }`,
      );
    }
  } else checkOperand(gpu, "a", args.a, M, K);
  checkOperand(gpu, "b", args.b, N, K);
  if (args.c.size < M * N * 4) {
    throw new Error(
      `specdec: matmulNTTexture: "c" has ${args.c.size} bytes, (M ${M}, N ${N}) needs ${M * N * 4}`,
    );
  }
  // narrowed to N as kernels/matmul.ts's fitTile (the bits do not depend on WG)
  let WG = TILE.WG;
  while (WG > 4 && (WG / 2) * TILE.C >= N) WG /= 2;
  const tile = { ...TILE, WG };
  const tilesN = Math.ceil(N / (WG * tile.C));
  const tiles = tilesN * Math.ceil(M / tile.R);
  const label = args.label ?? "matmulNTTexture";
  let bias = args.bias;
  if (!bias) {
    bias = noBias.get(gpu.device);
    if (!bias) noBias.set(gpu.device, bias = gpu.buffer("matmulNTTexture no-bias (4) f32", 16));
  }
  const d = gpu.kernel({
    label,
    code: textureGemmCode(tile, aTexture),
    params: {
      M,
      N,
      K,
      tilesN,
      tiles,
      hasBias: args.bias ? 1 : 0,
      accumulate: args.accumulate ? 1 : 0,
    },
    buffers: args.a instanceof GPUBuffer ? { a: args.a, bias, c: args.c } : { bias, c: args.c },
    textures: args.a instanceof GPUBuffer ? { bT: args.b } : { aT: args.a, bT: args.b },
    workgroups: Math.max(tiles, 1),
  });
  return tiles === 0 ? { ...d, workgroups: [0, 1, 1] } : d;
}

/**
 * Creates an rgba32float texture `(rows, K/4 texels)` and encodes the copy of `buffer (rows, K)`
 * into it (`copyBufferToTexture` needs rows of a multiple of 256 bytes, so K % 64 == 0).
 *
 * @param gpu the runtime
 * @param enc the command encoder the copy goes into
 * @param buffer the source `(rows, K)` f32, COPY_SRC usage
 * @param rows its rows
 * @param K its row length, a positive multiple of 64
 * @returns the texture (TEXTURE_BINDING | COPY_DST); the caller destroys it
 * @throws Error when K is not a positive multiple of 64, the buffer is too small, or the texture
 *   would be over maxTextureDimension2D
 */
export function textureFromBuffer(
  gpu: Gpu,
  enc: GPUCommandEncoder,
  buffer: GPUBuffer,
  rows: number,
  K: number,
): GPUTexture {
  if (!(K > 0 && K % 64 === 0)) {
    throw new Error(
      `specdec: textureFromBuffer: "${buffer.label}": K ${K} must be a positive multiple of 64 ` +
        `(copyBufferToTexture needs rows of a multiple of 256 bytes)`,
    );
  }
  if (buffer.size < rows * K * 4) {
    throw new Error(
      `specdec: textureFromBuffer: "${buffer.label}" has ${buffer.size} bytes, (${rows}, ${K}) ` +
        `needs ${rows * K * 4}`,
    );
  }
  const lim = gpu.device.limits.maxTextureDimension2D;
  if (rows > lim || K / 4 > lim || rows === 0) {
    throw new Error(
      `specdec: textureFromBuffer: "${buffer.label}" would be ${K / 4} × ${rows} texels; each ` +
        `side must be 1 to maxTextureDimension2D ${lim}`,
    );
  }
  const t = gpu.device.createTexture({
    label: `${buffer.label} texture`,
    size: [K / 4, rows],
    format: "rgba32float",
    usage: 0x04 | 0x02, // TEXTURE_BINDING | COPY_DST
  });
  enc.copyBufferToTexture(
    { buffer, bytesPerRow: K * 4, rowsPerImage: rows },
    { texture: t },
    [K / 4, rows],
  );
  return t;
}

/**
 * Copies an f32 storage matrix `src (rows, cols)` into an rgba32float texture, as is or
 * transposed, padding the last texel of a row with zeros:
 * - `transpose 0`: texture row r, texel t = src(r, 4t..4t+4): `(rows, ⌈cols/4⌉ texels)`;
 * - `transpose 1`: texture row r, texel t = src(4t..4t+4, r): `(cols, ⌈rows/4⌉ texels)`.
 * One invocation per texel, the texture row fastest when transposing (consecutive invocations
 * then read consecutive words of a source row).
 */
export const TEXTURE_STORE: string = /* wgsl */ `
struct Params {
  rows: u32, cols: u32, // src (rows, cols)
  trows: u32,           // texture rows written: rows, or cols when transposing
  texels: u32,          // texels per texture row: ⌈cols/4⌉, or ⌈rows/4⌉ when transposing
  count: u32,           // trows · texels
  transpose: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;          // (rows, cols)
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>; // (trows, texels) texels

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= params.count) { return; }
  var v = vec4f(0.0);
  if (params.transpose == 0u) {
    let r = i / params.texels;
    let t = i % params.texels;
    for (var j = 0u; j < 4u; j++) {
      let c = 4u * t + j;
      if (c < params.cols) { v[j] = src[r * params.cols + c]; }
    }
    textureStore(dst, vec2u(t, r), v);
  } else {
    let r = i % params.trows; // a column of src
    let t = i / params.trows;
    for (var j = 0u; j < 4u; j++) {
      let s = 4u * t + j;
      if (s < params.rows) { v[j] = src[s * params.cols + r]; }
    }
    textureStore(dst, vec2u(t, r), v);
  }
}`;

/** Which operand layouts {@link texturedGemm} takes: those of kernels/matmul.ts. */
export type TexturedLayout = "NT" | "NN" | "TN";

/**
 * Arguments of {@link texturedGemm}: kernels/matmul.ts's (no variant). `a` is (M, K) for NT and
 * NN, (K, M) for TN; `b` is (N, K) for NT, (K, N) for NN and TN; `c` is (M, N); all f32 storage.
 */
export type TexturedGemmArgs = Omit<MatmulArgs, "variant">;

/**
 * Whether {@link texturedGemm} can take these sizes on this device: M, N, K positive and every
 * operand texture within maxTextureDimension2D.
 *
 * @param gpu the runtime
 * @param M rows of c
 * @param N columns of c
 * @param K reduction length
 * @returns true when the textured path applies
 */
export function texturedGemmFits(gpu: Gpu, M: number, N: number, K: number): boolean {
  const texels = Math.ceil(K / 4), lim = gpu.device.limits.maxTextureDimension2D;
  return textureFits(lim, M, texels) && textureFits(lim, N, texels);
}

/** The store of `src` into the scratch `slot`: the texture and the dispatch. */
function store(
  gpu: Gpu,
  label: string,
  slot: string,
  src: GPUBuffer,
  rows: number,
  cols: number,
  transpose: boolean,
): { texture: GPUTexture; dispatch: Dispatch } {
  const trows = transpose ? cols : rows;
  const texels = Math.ceil((transpose ? rows : cols) / 4);
  const texture = scratchTexture(gpu.device, `GEMM ${slot}`, texels, trows);
  const count = trows * texels;
  const dispatch = gpu.kernel({
    label: `${label} store ${slot}`,
    code: TEXTURE_STORE,
    params: { rows, cols, trows, texels, count, transpose: transpose ? 1 : 0 },
    buffers: { src },
    textures: { dst: texture },
    workgroups: Math.ceil(count / 64),
  });
  return { texture, dispatch };
}

/**
 * A GEMM of kernels/matmul.ts's layouts through textures: each operand is first stored
 * ({@link TEXTURE_STORE}) into a per-device scratch texture in the `(rows, K/4 texels)` layout
 * of the NT GEMM — transposed where the layout holds it the other way — then
 * {@link matmulNTTexture} runs on both textures. K is padded to a multiple of 4 with zeros
 * (adding 0·0 leaves every sum's bits alone).
 * - NT `c = a·bᵀ` (a linear layer's forward): both stored as they are; same bits as
 *   `matmulNT` with the register tile.
 * - NN `c = a·b` (`dX = dY·W`): b stored transposed.
 * - TN `c = aᵀ·b` (`dW = dYᵀ·X`): both stored transposed.
 * NN and TN sum each output in the same k order as the storage kernels but four k at a time
 * through `dot`, so their last bits can differ from `matmulNN`/`matmulTN`.
 *
 * Why (measured, bench/gemm_texture_bench.ts): on lavapipe a texel fetch is a vectorised
 * gather while a storage load is a per-lane loop; the NT GEMM reading both operands from
 * textures runs 4.5–6.2× faster than the storage kernel, the stores cost a few % of that.
 * Hardware adapters keep the storage kernels (nothing measured there yet).
 *
 * @param gpu the runtime
 * @param layout `"NT"`, `"NN"` or `"TN"`
 * @param args the operands in storage, the output, the sizes and the flags
 * @returns three dispatches (store a, store b, GEMM), to encode in this order, back to back
 * @throws Error when the sizes do not fit ({@link texturedGemmFits}) or a buffer is too small
 * @example
 * ```ts
 * import { requestGpu } from "../kernels/gpu.ts";
 * import { texturedGemm } from "../kernels/gemm_texture.ts";
 * const gpu = await requestGpu();
 * const dy = gpu.upload("dy (K 2, M 1)", new Float32Array([1, 2]));
 * const x = gpu.upload("x (K 2, N 2)", new Float32Array([1, 1, 3, 0]));
 * const dw = gpu.buffer("dw (1, 2)", 2 * 4);
 * gpu.run("dw = dyᵀ·x", texturedGemm(gpu, "TN", { a: dy, b: x, c: dw, M: 1, N: 2, K: 2 }));
 * console.log(await gpu.readF32(dw)); // Float32Array [7, 1]
 * ```
 */
export function texturedGemm(gpu: Gpu, layout: TexturedLayout, args: TexturedGemmArgs): Dispatch[] {
  const { M, N, K } = args;
  const label = args.label ?? `textured GEMM ${layout}`;
  if (!texturedGemmFits(gpu, M, N, K)) {
    throw new Error(
      `specdec: ${label}: M ${M}, N ${N}, K ${K} must be positive and the operand textures ` +
        `within maxTextureDimension2D ${gpu.device.limits.maxTextureDimension2D}`,
    );
  }
  // (rows, cols) of a and b in storage, and whether each is stored transposed
  const aShape = layout === "TN" ? [K, M] : [M, K];
  const bShape = layout === "NT" ? [N, K] : [K, N];
  for (const [name, buf, [r, c]] of [["a", args.a, aShape], ["b", args.b, bShape]] as const) {
    if (buf.size < r * c * 4) {
      throw new Error(
        `specdec: ${label}: "${name}" ("${buf.label}") has ${buf.size} bytes, (${r}, ${c}) ` +
          `needs ${r * c * 4}`,
      );
    }
  }
  const sa = store(
    gpu,
    label,
    layout === "TN" ? "aT" : "a",
    args.a,
    aShape[0],
    aShape[1],
    layout === "TN",
  );
  const sb = store(
    gpu,
    label,
    layout === "NT" ? "b" : "bT",
    args.b,
    bShape[0],
    bShape[1],
    layout !== "NT",
  );
  const gemm = matmulNTTexture(gpu, {
    a: sa.texture,
    b: sb.texture,
    c: args.c,
    M,
    N,
    K: 4 * Math.ceil(K / 4),
    bias: args.bias,
    accumulate: args.accumulate,
    label,
  });
  return [sa.dispatch, sb.dispatch, gemm];
}
