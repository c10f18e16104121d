/**
 * What the attention kernels share: workgroup sizes, key tiles, the mask value, and WGSL access
 * to head vectors of length D (kernels/attention_forward.ts, kernels/attention_backward.ts).
 *
 * q, k, v, accumulators and gradients are held as `array<vec4f, D4>` with D4 = ⌈D/4⌉ (D padded
 * with zero lanes) in loops over c < D4 that {@link "./unroll.ts" | unrollLoops} unrolls, so
 * they live in registers. Each D compiles its own pipelines. When D % 4 = 0 the buffers are
 * bound as `array<vec4f>`, else as `array<f32>`.
 *
 * @module
 */

/** Threads per workgroup of the tiled kernels: one query (or key) per thread. */
export const TILE = 64;

/** −FLT_MAX as WGSL: the reference's mask value, and "no key yet" for a running max. */
export const NEG_MAX = "-3.4028234663852886e+38"; // exactly −FLT_MAX (Tint rejects the rounded-up -3.40282347e+38)

/** Largest power of two ≤ x (at least 1). */
function pow2Floor(x: number): number {
  let p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}

/**
 * Keys (or queries) per shared-memory tile: k and v tiles of this many rows fit in 8 KiB.
 *
 * @param D head size
 * @returns rows per tile
 */
export function tileRows(D: number): number {
  const D4 = Math.ceil(D / 4);
  return Math.min(16, pow2Floor(8192 / (2 * 16 * D4)));
}

/**
 * The element type of head-vector buffers: `vec4f` when D % 4 = 0, else `f32`.
 *
 * @param D head size
 * @returns the WGSL type
 */
export function headElem(D: number): string {
  return D % 4 === 0 ? "vec4f" : "f32";
}

/**
 * WGSL constants `D`, `D4` and, for each named buffer, `ld_<buf>(row, c)`, which loads chunk c
 * (4 floats, zero lanes past D) of head vector `row`, or `st_<buf>(row, c, v)`, which stores it.
 * A "row" is the index of a D-vector in its buffer: every head vector starts at a multiple of D
 * in all the attention layouts.
 *
 * @param D head size
 * @param loads buffers read through `ld_`
 * @param stores buffers written through `st_`
 * @returns the WGSL declarations
 */
export function headVectors(D: number, loads: string[], stores: string[]): string {
  const vec = D % 4 === 0;
  const ld = (buf: string) =>
    vec
      ? /* wgsl */ `fn ld_${buf}(row: u32, c: u32) -> vec4f { return ${buf}[row * D4 + c]; }`
      : /* wgsl */ `fn ld_${buf}(row: u32, c: u32) -> vec4f {
  let e = row * D + 4u * c;
  return vec4f(${buf}[e], select(0.0, ${buf}[e + 1u], 4u * c + 1u < D),
    select(0.0, ${buf}[e + 2u], 4u * c + 2u < D), select(0.0, ${buf}[e + 3u], 4u * c + 3u < D));
}`;
  const st = (buf: string) =>
    vec
      ? /* wgsl */ `fn st_${buf}(row: u32, c: u32, v: vec4f) { ${buf}[row * D4 + c] = v; }`
      : /* wgsl */ `fn st_${buf}(row: u32, c: u32, v: vec4f) {
  let e = row * D + 4u * c;
  ${buf}[e] = v.x;
  if (4u * c + 1u < D) { ${buf}[e + 1u] = v.y; }
  if (4u * c + 2u < D) { ${buf}[e + 2u] = v.z; }
  if (4u * c + 3u < D) { ${buf}[e + 3u] = v.w; }
}`;
  return [
    `const D: u32 = ${D}u;  // head size`,
    `const D4: u32 = ${Math.ceil(D / 4)}u; // vec4 chunks per head vector`,
    ...loads.map(ld),
    ...stores.map(st),
  ].join("\n");
}

/**
 * Queries (or keys) per invocation of the tiled attention kernels on software adapters, for head
 * size D: 8, halved while per · D > 256. Each key or query an invocation loads then serves per of
 * them (lavapipe's storage loads are a per-lane loop, ~5–7 ns a word), but the per × D/4 vec4
 * register arrays are unrolled, and lavapipe's compile time explodes with them: at D = 64, per 8
 * took 55 s (forward) and 330 s (backward) to compile cold, per 4 14 s for the forward, which then
 * runs ~30% slower. A first training step should not wait minutes.
 *
 * With the texture variants of the training kernels (loads ~1 ns a word) the reuse matters less:
 * at B 4, n 513, H 2, D 32 per 4 and per 8 ran within noise of each other, per 2 and per 16
 * slower. Cold compiles (MESA_SHADER_CACHE_DISABLE, first dispatch minus second, load ~3):
 * D = 32 per 8 and D = 64 per 4 take 1.5–1.9 s (forward), 3.4–3.9 s (dq, dk dv) with
 * textures, 1.7–1.9 s and 4.3–4.9 s on storage.
 *
 * @param D head size
 * @returns per, a power of two from 1 to 8
 */
export function softwarePer(D: number): number {
  let per = 8;
  while (per > 1 && per * D > 256) per /= 2;
  return per;
}
