/**
 * A deliberately WRONG acceptance kernel, for the tests that prove the law tests can fail: the
 * library's acceptance WGSL with one expression changed, so the correction after a rejection is
 * sampled from p instead of norm(max(0, p − q)). Everything else (acceptance, bonus, bookkeeping,
 * feeds) is the library's own code.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../../kernels/gpu.ts";
import { type AcceptArgs, acceptSpec } from "../../kernels/speculative.ts";

/** The residual weight in the acceptance kernel's WGSL, and what the broken copy returns. */
const EXACT = "return max(0.0, pv - q[qRow + j]);";
const BROKEN = "return pv;";

/**
 * The acceptance dispatch with corrections from p, not max(0, p − q).
 *
 * @param gpu the runtime
 * @param args as the library's acceptKernel
 * @returns the dispatch
 * @throws Error when the library's WGSL no longer has the residual expression to break
 */
export function brokenAcceptKernel(gpu: Gpu, args: AcceptArgs): Dispatch {
  const spec = acceptSpec(gpu, args);
  if (spec.code.split(EXACT).length !== 2) {
    throw new Error(`the acceptance WGSL must contain "${EXACT}" exactly once to break it`);
  }
  return gpu.kernel({
    ...spec,
    label: `broken ${spec.label}`,
    code: spec.code.replace(EXACT, BROKEN),
  });
}
