/**
 * Distillation loss: the KL divergence KL(p_t ‖ p_s) per row from a teacher's logits to a
 * student's, at a softmax temperature, with its gradient w.r.t. the student's logits fused in
 * (the teacher is detached: it gets no gradient).
 *
 * Two variants, one whole shader each, as cross-entropy in loss.ts: loss only (evaluation), and
 * loss and gradient written or added into `dStudent` (training: added after cross-entropy wrote
 * its share into the same buffer).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/**
 * Invocations per row, as cross-entropy's: 32 whatever V (fewer barrier levels and idle
 * invocations per row on lavapipe; a byte vocabulary gives each invocation 8 logits).
 */
const KL_WG = 32;

/**
 * One workgroup per row r. With zs = (s − max s)/τ and zt = (t − max t)/τ (both ≤ 0, so exp
 * never overflows), Ss = Σ exp(zs), St = Σ exp(zt):
 * KL = Σ_v p_t (log p_t − log p_s) = (1/St) Σ_v exp(zt)(zt − zs) + log Ss − log St.
 * Terms where p_t underflows to 0 are skipped (0 · ∞ would be NaN for a −∞-like student logit).
 * The max and the three sums each take one tree reduction over vec2/vec4 lanes. With `grad`,
 * also dStudent (+)= scale/τ · (p_s − p_t), every element of the row written.
 */
const klCode = (wg: number, grad: boolean): string => /* wgsl */ `
struct Params { T: u32, V: u32, invTau: f32, teacherOffset: u32${
  grad ? ", scale: f32, accumulate: u32" : ""
} }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> student: array<f32>;      // (T, V)
@group(0) @binding(2) var<storage, read> teacher: array<f32>;      // (…, V): T rows from teacherOffset
@group(0) @binding(3) var<storage, read_write> losses: array<f32>; // (T)${
  grad ? "\n@group(0) @binding(4) var<storage, read_write> dStudent: array<f32>; // (T, V)" : ""
}
const WG: u32 = ${wg}u;
var<workgroup> redMax: array<vec2f, WG>;
var<workgroup> redSum: array<vec3f, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x; // the grid may be split over x and y
  if (row >= params.T) { return; }
  let sBase = row * params.V;
  let tBase = params.teacherOffset + row * params.V;

  var m = vec2f(-3.4028234663852886e38); // (student, teacher)
  for (var v = lid; v < params.V; v += WG) {
    m = max(m, vec2f(student[sBase + v], teacher[tBase + v]));
  }
  redMax[lid] = m;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { redMax[lid] = max(redMax[lid], redMax[lid + s]); }
    workgroupBarrier();
  }
  m = redMax[0];

  var acc = vec3f(0.0); // (Σ exp(zs), Σ exp(zt), Σ exp(zt)·(zt − zs))
  for (var v = lid; v < params.V; v += WG) {
    let zs = (student[sBase + v] - m.x) * params.invTau;
    let zt = (teacher[tBase + v] - m.y) * params.invTau;
    let et = exp(zt);
    acc += vec3f(exp(zs), et, select(0.0, et * (zt - zs), et > 0.0));
  }
  redSum[lid] = acc;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { redSum[lid] = redSum[lid] + redSum[lid + s]; }
    workgroupBarrier();
  }
  let sum = redSum[0];
  if (lid == 0u) { losses[row] = sum.z / sum.y + log(sum.x) - log(sum.y); }
${
  !grad ? "" : `
  let k = params.scale * params.invTau;
  let ks = k / sum.x;
  let kt = k / sum.y;
  for (var v = lid; v < params.V; v += WG) {
    let zs = (student[sBase + v] - m.x) * params.invTau;
    let zt = (teacher[tBase + v] - m.y) * params.invTau;
    var g = exp(zs) * ks - exp(zt) * kt;
    if (params.accumulate != 0u) { g = g + dStudent[sBase + v]; }
    dStudent[sBase + v] = g;
  }`
}
}`;

/**
 * KL divergence from a teacher's distribution to a student's, per row of raw logits:
 * `losses[r] = KL(p_t ‖ p_s) = Σ_v p_t(v) (log p_t(v) − log p_s(v))` with
 * `p = softmax(logits / temperature)` (numerically stable: each row's max is subtracted before
 * the exp). With `dStudent`, also writes (or with `accumulate`, adds) the gradient of
 * `scale · Σ_r losses[r]` w.r.t. the student's logits: `scale / temperature · (p_s − p_t)`. The
 * teacher is detached: nothing is written for it. (No temperature² factor: multiply `scale` by
 * it for Hinton's gradient magnitudes.)
 *
 * Where the teacher gives a token probability 0 in f32 (a −∞-like logit) its term is 0; a
 * student logit that is −∞-like where the teacher is not gives a huge but finite loss as long as
 * the logit differences stay within f32.
 *
 * @param gpu the runtime
 * @param a `student (T, V)` logits, `teacher` logits with T rows of V starting at element
 *   `teacherOffset` (default 0: a `(T, V)` buffer; an offset picks one micro-batch of a
 *   `(N, T, V)` store), out `losses (T)`, optional out `dStudent (T, V)` (may not alias the
 *   inputs), sizes, `temperature` > 0 (default 1), the gradient's `scale` (e.g. weight/T for a
 *   weighted mean; default 1) and `accumulate` (add the gradient to `dStudent`, e.g. after
 *   cross-entropy wrote its share)
 * @returns one dispatch (one workgroup per row)
 * @throws Error when the temperature is not a finite number > 0, or `dStudent` aliases an input
 * @example
 * ```ts
 * import { klDivergence, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const student = gpu.upload("student (1, 2)", new Float32Array([0, 0]));
 * const teacher = gpu.upload("teacher (1, 2)", new Float32Array([0, Math.log(3)]));
 * const losses = gpu.buffer("kl (1)", 4), dStudent = gpu.buffer("dStudent (1, 2)", 8);
 * gpu.run("kl", [klDivergence(gpu, { student, teacher, losses, dStudent, T: 1, V: 2 })]);
 * console.log(await gpu.readF32(losses)); // [0.1308]: KL([¼, ¾] ‖ [½, ½])
 * console.log(await gpu.readF32(dStudent)); // [0.25, -0.25]: p_s − p_t
 * ```
 */
export function klDivergence(
  gpu: Gpu,
  a: {
    student: GPUBuffer;
    teacher: GPUBuffer;
    losses: GPUBuffer;
    dStudent?: GPUBuffer;
    T: number;
    V: number;
    teacherOffset?: number;
    temperature?: number;
    scale?: number;
    accumulate?: boolean;
  },
): Dispatch {
  const { student, teacher, losses, dStudent, T, V } = a;
  const teacherOffset = a.teacherOffset ?? 0, temperature = a.temperature ?? 1;
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature <= 0) {
    throw new Error(
      `specdec: klDivergence temperature must be a finite number > 0, got ${temperature}`,
    );
  }
  if (dStudent !== undefined && (dStudent === student || dStudent === teacher)) {
    throw new Error(
      "specdec: klDivergence dStudent must not alias the student's or teacher's logits",
    );
  }
  const invTau = 1 / temperature;
  if (dStudent === undefined) {
    return gpu.kernel({
      label: `klDivergence T=${T} V=${V}`,
      code: klCode(KL_WG, false),
      params: { T, V, invTau, teacherOffset },
      buffers: { student, teacher, losses },
      workgroups: T,
    });
  }
  return gpu.kernel({
    label: `klDivergence+grad T=${T} V=${V}`,
    code: klCode(KL_WG, true),
    params: { T, V, invTau, teacherOffset, scale: a.scale ?? 1, accumulate: a.accumulate ? 1 : 0 },
    buffers: { student, teacher, losses, dStudent },
    workgroups: T,
  });
}
