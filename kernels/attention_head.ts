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

// ---------------------------------------------------------------------------------------------
// texture operands (software adapters)
//
// On lavapipe a storage load is a per-lane loop (~5–15 ns per 32-bit word) while `textureLoad`
// of an rgba32float texel is a vectorised gather (~1.1 ns per word; kernels/attention_decode.ts).
// The training kernels' inner loops load a head vector (or two) per iteration; their texture
// variants read those from scratch textures holding a row-major f32 matrix `(rows, cols)` as
// `(rows, cols/4 texels)`: texel x of row y = columns 4x..4x+3 of row y. Only the loads change,
// the arithmetic and its order stay: the same bits as the storage kernels.

/** GPUTextureUsage: STORAGE_BINDING (written by a kernel) | TEXTURE_BINDING (read). */
const SCRATCH_USAGE = 0x08 | 0x04;

/**
 * Scratch textures per device and slot, replaced by a bigger one (the envelope of every size
 * asked for) when a kernel needs more. Every store into a slot directly precedes the kernels
 * that read it in any dispatch list, so no two uses overlap; a replaced texture stays with the
 * dispatches already built on it.
 */
const scratch = new WeakMap<GPUDevice, Map<string, GPUTexture>>();

/**
 * Whether a `(rows, texels)` rgba32float texture fits the device's 2-D texture limit.
 *
 * @param limit the device's maxTextureDimension2D
 * @param rows texture rows
 * @param texels texels per row
 * @returns true when both sides are 1..limit
 */
export function textureFits(limit: number, rows: number, texels: number): boolean {
  return rows > 0 && texels > 0 && rows <= limit && texels <= limit;
}

/**
 * The scratch texture of a slot, at least `texels` wide and `rows` high.
 *
 * @param device the device
 * @param slot its name (one per operand kind: "qkv", "dout", "stats")
 * @param texels texels per row needed
 * @param rows rows needed
 * @returns an rgba32float texture, STORAGE_BINDING | TEXTURE_BINDING
 */
export function scratchTexture(
  device: GPUDevice,
  slot: string,
  texels: number,
  rows: number,
): GPUTexture {
  let slots = scratch.get(device);
  if (!slots) scratch.set(device, slots = new Map());
  const old = slots.get(slot);
  if (old && old.width >= texels && old.height >= rows) return old;
  const t = device.createTexture({
    label: `attention scratch ${slot}`,
    size: [Math.max(texels, old?.width ?? 0), Math.max(rows, old?.height ?? 0)],
    format: "rgba32float",
    usage: SCRATCH_USAGE,
  });
  slots.set(slot, t);
  return t;
}

/**
 * Copies `src (rows, 4·texels)` f32 (bound as vec4: one storage load per texel, a quarter of
 * the per-lane loops of a scalar copy) into texture rows 0..rows−1, texels 0..texels−1. One
 * invocation per texel.
 */
export const ROWS_TEXTURE_STORE: string = /* wgsl */ `
struct Params { texels: u32, count: u32 } // texels per row; rows · texels
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4f>;            // (rows, texels)
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>; // (rows, texels) texels

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nw: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let i = (wg.x + wg.y * nw.x) * 64u + li;
  if (i >= params.count) { return; }
  textureStore(dst, vec2u(i % params.texels, i / params.texels), src[i]);
}`;
