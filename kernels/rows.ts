/**
 * Shared pieces of the one-workgroup-per-row kernels (RMSNorm, cross-entropy): the workgroup size
 * for a row length and the WGSL tree reduction over workgroup memory.
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

/**
 * WGSL that tree-reduces `red[0..WG)` into `red[0]` with `combine` (an expression of `red[lid]`
 * and `red[lid + s]`), in uniform control flow. Every invocation may read `red[0]` afterwards:
 * the last barrier publishes it. Needs `WG`, `red` and `lid` in scope.
 *
 * @param combine the WGSL expression combining two partial results
 * @returns WGSL statements
 */
export function treeReduce(combine: string): string {
  return `
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = ${combine}; }
    workgroupBarrier();
  }`;
}
