/**
 * Moving KV textures (kernels/attention_decode.ts) between the host and the GPU in the storage
 * cache's layout `(2, B, H, maxLen, D)`, which is the texture's (layer, y, x) order: layer
 * `(s·B + b)·H + h`, y the position, x the vec4 of D. For the tests that compare a texture with
 * the storage cache or a float64 reference.
 *
 * @module
 */
import type { Gpu } from "../../kernels/gpu.ts";

/**
 * Fills a KV texture with `data (2, B, H, maxLen, D)`.
 *
 * @param gpu the runtime
 * @param tex the texture (`D/4` wide, `maxLen` high, `2·B·H` layers)
 * @param data the values
 */
export function writeKvTexture(gpu: Gpu, tex: GPUTexture, data: Float32Array<ArrayBuffer>): void {
  const [w, h, layers] = [tex.width, tex.height, tex.depthOrArrayLayers];
  gpu.device.queue.writeTexture({ texture: tex }, data, { bytesPerRow: w * 16, rowsPerImage: h }, [
    w,
    h,
    layers,
  ]);
}

/**
 * Reads a KV texture back as `(2, B, H, maxLen, D)` (rows padded to 256 bytes for the copy, so
 * D ≤ 64).
 *
 * @param gpu the runtime
 * @param tex the texture
 * @returns its values
 */
export async function readKvTexture(gpu: Gpu, tex: GPUTexture): Promise<Float32Array> {
  const [w, h, layers] = [tex.width, tex.height, tex.depthOrArrayLayers];
  if (w * 16 > 256) throw new Error(`readKvTexture: rows of ${w} texels are over 256 bytes`);
  const buf = gpu.buffer("texture readback", 256 * h * layers);
  const enc = gpu.device.createCommandEncoder();
  enc.copyTextureToBuffer({ texture: tex }, { buffer: buf, bytesPerRow: 256, rowsPerImage: h }, [
    w,
    h,
    layers,
  ]);
  gpu.device.queue.submit([enc.finish()]);
  const padded = await gpu.readF32(buf);
  buf.destroy();
  const out = new Float32Array(w * 4 * h * layers);
  for (let r = 0; r < h * layers; r++) out.set(padded.subarray(r * 64, r * 64 + w * 4), r * w * 4);
  return out;
}
