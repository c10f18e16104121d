/**
 * The workgroup size of the one-workgroup-per-row kernels (RMSNorm, cross-entropy).
 *
 * @module
 */

/**
 * Workgroup size for a one-workgroup-per-row kernel: a power of two from 32 to 256 covering
 * the row, so short rows don't leave most invocations idle.
 *
 * @param n the row's length
 * @returns the workgroup size
 */
export function rowWorkgroupSize(n: number): number {
  let wg = 32;
  while (wg < n && wg < 256) wg *= 2;
  return wg;
}
