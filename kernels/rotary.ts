/**
 * Rotary position embedding (RoPE) on the fused qkv activations, forward and backward.
 *
 * Semantics follow lucidrains/speculative-decoding's `RotaryEmbedding`: for dimHead `D`,
 * `invFreq[i] = 1 / 10000^(2i/D)` (i < D/2, computed in float32 like torch), the angle of absolute
 * position `t` is `float32(t · invFreq[i])` duplicated as `[f, f]` over D, and
 * `out = x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]` (the two halves of x),
 * applied to q and k over the full dimHead. Per pair `(x₁[i], x₂[i])` that is the rotation
 * `[[c, −s], [s, c]]`; the backward applies its transpose `[[c, s], [−s, c]]`.
 *
 * The cos/sin table is computed once on the host ({@link rotaryTable}) in float64 from the float32
 * angle and then rounded: that matches torch's float32 `cos`/`sin` to the last ulp or so, where a
 * GPU `cos` of an angle in the hundreds can be off by far more.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./gpu.ts";

/**
 * The rotary inverse frequencies as torch computes them in float32:
 * `1. / (10000 ** (torch.arange(0, D, 2).float() / D))`, rounding to float32 after each step.
 *
 * A checkpoint stores these as `rotary_emb.inv_freq`; prefer the stored values when loading one.
 *
 * @param D dimHead (even)
 * @returns `invFreq (D/2)` f32
 * @example
 * ```ts
 * import { rotaryInvFreq } from "./rotary.ts";
 * const invFreq = rotaryInvFreq(64); // Float32Array(32), invFreq[0] === 1
 * ```
 */
export function rotaryInvFreq(D: number): Float32Array<ArrayBuffer> {
  if (!Number.isInteger(D) || D <= 0 || D % 2 !== 0) {
    throw new Error(`specdec: rotary dimHead must be a positive even integer, got ${D}`);
  }
  const f = Math.fround;
  const out = new Float32Array(D / 2);
  for (let i = 0; i < D / 2; i++) {
    const exponent = f(f(2 * i) / D); // arange(0, D, 2).float() / D
    out[i] = f(1 / f(Math.pow(10000, exponent))); // 1. / (10000 ** exponent)
  }
  return out;
}

/**
 * The cos and sin tables for positions `0..maxLen−1`: `cos[t, i] = cos(float32(t · invFreq[i]))`,
 * evaluated in float64 and rounded to float32 (the duplicated half `[f, f]` is not stored).
 *
 * @param maxLen number of positions
 * @param invFreq inverse frequencies `(D/2)`, from {@link rotaryInvFreq} or a checkpoint
 * @returns `cos` and `sin`, each `(maxLen, D/2)` f32, to upload for {@link rotary}
 * @example
 * ```ts
 * import { rotaryInvFreq, rotaryTable } from "./rotary.ts";
 * const { cos, sin } = rotaryTable(512, rotaryInvFreq(64)); // each (512, 32)
 * ```
 */
export function rotaryTable(
  maxLen: number,
  invFreq: Float32Array,
): { cos: Float32Array<ArrayBuffer>; sin: Float32Array<ArrayBuffer> } {
  const half = invFreq.length;
  const cos = new Float32Array(maxLen * half); // (maxLen, D/2)
  const sin = new Float32Array(maxLen * half); // (maxLen, D/2)
  for (let t = 0; t < maxLen; t++) {
    for (let i = 0; i < half; i++) {
      // torch: einsum('i,j->ij', t.float(), inv_freq) is one float32 product per entry
      const angle = Math.fround(t * invFreq[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * Rotates q and k in place, one invocation per (token t, s ∈ {q, k}, head h, pair i < D/2):
 * forward (SIN_SIGN = 1) or backward (SIN_SIGN = −1: the transpose, the same rotation with −sin).
 */
function rotaryCode(backward: boolean): string {
  return /* wgsl */ `
struct Params { B: u32, n: u32, H: u32, D: u32, maxLen: u32, total: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (T, 3, H, D) qkv or dqkv
@group(0) @binding(2) var<storage, read> cosT: array<f32>;    // (maxLen, D/2)
@group(0) @binding(3) var<storage, read> sinT: array<f32>;    // (maxLen, D/2)
@group(0) @binding(4) var<storage, read> start: array<u32>;   // (B) first position of each row
const WG: u32 = 64u;
const SIN_SIGN: f32 = ${backward ? "-1.0" : "1.0"};

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let id = (wid.x + wid.y * nwg.x) * WG + lid; // the grid may be split over x and y
  if (id >= params.total) { return; }
  let half = params.D / 2u;
  let i = id % half;
  var r = id / half;
  let h = r % params.H;
  r = r / params.H;
  let s = r % 2u;
  let t = r / 2u;
  let pos = start[t / params.n] + t % params.n;
  // Positions past the table have no angle (and no cache slot): leave them as they are.
  if (pos >= params.maxLen) { return; }
  let c = cosT[pos * half + i];
  let sn = SIN_SIGN * sinT[pos * half + i];
  let base = ((t * 3u + s) * params.H + h) * params.D + i;
  let x1 = x[base];
  let x2 = x[base + half];
  // [x1, x2]·cos + [−x2, x1]·sin (backward: the same with −sin, the transpose)
  x[base] = x1 * c - x2 * sn;
  x[base + half] = x2 * c + x1 * sn;
}`;
}

/** Arguments of {@link rotary} and {@link rotaryBackward}. */
export interface RotaryArgs {
  /** Number of rows. */
  B: number;
  /** Tokens per row in this forward (T = B·n). */
  n: number;
  /** Heads. */
  H: number;
  /** dimHead (even). */
  D: number;
  /** Positions in the cos/sin tables; tokens at positions ≥ maxLen are left unchanged. */
  maxLen: number;
  /** `(maxLen, D/2)` f32 cosines from {@link rotaryTable}. */
  cos: GPUBuffer;
  /** `(maxLen, D/2)` f32 sines from {@link rotaryTable}. */
  sin: GPUBuffer;
  /** `(B)` u32: token `(b, i)` sits at absolute position `start[b] + i`. */
  start: GPUBuffer;
}

function rotaryDispatch(gpu: Gpu, x: GPUBuffer, a: RotaryArgs, backward: boolean): Dispatch {
  const { B, n, H, D, maxLen } = a;
  if (D % 2 !== 0) throw new Error(`specdec: rotary needs an even dimHead, got ${D}`);
  const total = B * n * 2 * H * (D / 2);
  return gpu.kernel({
    label: backward ? "rotaryBackward" : "rotary",
    code: rotaryCode(backward),
    params: { B, n, H, D, maxLen, total },
    buffers: { x, cosT: a.cos, sinT: a.sin, start: a.start },
    workgroups: Math.ceil(total / 64),
  });
}

/**
 * Applies the rotary embedding in place to q and k of the fused qkv activations (v untouched).
 * Token `t = b·n + i` is rotated by the angle of position `start[b] + i`, read from the `start`
 * buffer when the dispatch runs (so one dispatch serves every decode step). Tokens whose position
 * is ≥ maxLen are left unchanged (they are not written to the cache either).
 *
 * @param gpu the runtime
 * @param a `qkv (T, 3, H, D)` f32, rotated in place, plus the tables, starts and sizes
 * @returns the dispatch
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * import { rotary, rotaryInvFreq, rotaryTable } from "./rotary.ts";
 * const gpu = await requestGpu();
 * const [B, n, H, D, maxLen] = [1, 4, 2, 8, 16];
 * const t = rotaryTable(maxLen, rotaryInvFreq(D));
 * const qkv = gpu.upload("qkv (T, 3, H, D)", new Float32Array(B * n * 3 * H * D).fill(1));
 * const cos = gpu.upload("cos (maxLen, D/2)", t.cos), sin = gpu.upload("sin (maxLen, D/2)", t.sin);
 * const start = gpu.upload("start (B)", new Uint32Array([0]));
 * gpu.run("rotary", [rotary(gpu, { qkv, cos, sin, start, B, n, H, D, maxLen })]);
 * ```
 */
export function rotary(gpu: Gpu, a: RotaryArgs & { qkv: GPUBuffer }): Dispatch {
  return rotaryDispatch(gpu, a.qkv, a, false);
}

/**
 * The backward of {@link rotary}: applies the transposed rotation in place to dq and dk of the
 * fused gradient `dqkv (T, 3, H, D)` (dv untouched), with the same positions as the forward.
 *
 * @param gpu the runtime
 * @param a `dqkv (T, 3, H, D)` f32, rotated back in place, plus the forward's tables and starts
 * @returns the dispatch
 */
export function rotaryBackward(gpu: Gpu, a: RotaryArgs & { dqkv: GPUBuffer }): Dispatch {
  return rotaryDispatch(gpu, a.dqkv, a, true);
}
