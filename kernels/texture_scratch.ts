/**
 * Scratch textures for the software adapters' texture paths (kernels/gemm_texture.ts, the
 * training attention in kernels/attention_forward.ts and kernels/attention_backward.ts), and
 * a copy kernel into them.
 *
 * On lavapipe a storage load is a per-lane loop (~5–15 ns per 32-bit word) while `textureLoad`
 * of an rgba32float texel is a vectorised gather (~1.1 ns per word; kernels/attention_decode.ts).
 * Kernels whose inner loops reload their operands first copy them into a scratch texture holding
 * a row-major f32 matrix `(rows, cols)` as `(rows, cols/4 texels)`: texel x of row y = columns
 * 4x..4x+3 of row y. Only the loads change, the arithmetic and its order stay.
 *
 * @module
 */

/** GPUTextureUsage: STORAGE_BINDING (written by a kernel) | TEXTURE_BINDING (read). */
const SCRATCH_USAGE = 0x08 | 0x04;

/**
 * Scratch textures per device and slot, replaced by a bigger one (the envelope of every size
 * asked for) when a kernel needs more. Every store into a slot directly precedes the kernels
 * that read it in any dispatch list, so no two uses overlap; a replaced texture stays with the
 * dispatches already built on it. Shared by the textured GEMM (kernels/gemm_texture.ts) and the
 * training attention (kernels/attention_forward.ts, kernels/attention_backward.ts).
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
 * @param slot its name, one per operand kind (attention: "qkv", "dout", "stats"; the textured
 *   GEMM: "GEMM a", "GEMM b", "GEMM aT", "GEMM bT")
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
    label: `scratch texture ${slot}`,
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
