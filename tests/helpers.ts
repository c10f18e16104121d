/**
 * Test helpers: a shared GPU, a seeded RNG, and a closeness check that reports the worst
 * element and the first mismatches.
 */
import { Gpu, requestGpu } from "../kernels/gpu.ts";
import { seededRandom } from "../model/params.ts";

let gpuPromise: Promise<Gpu | null> | undefined;

/**
 * The shared test device, or null when no WebGPU adapter exists (tests then skip, unless
 * SPECDEC_REQUIRE_GPU=1, as in CI, makes that an error).
 */
export function testGpu(): Promise<Gpu | null> {
  gpuPromise ??= requestGpu().then((g) =>
    // SPECDEC_AS_HARDWARE=1: the software adapter runs the hardware paths (storage bindings,
    // wider workgroups, no texture copies), to check them where no GPU is at hand
    Deno.env.get("SPECDEC_AS_HARDWARE") === "1" ? new Gpu(g.device, g.adapterName, false) : g
  ).catch((e) => {
    // CI sets SPECDEC_REQUIRE_GPU=1: there a missing adapter must fail, not skip everything
    if (Deno.env.get("SPECDEC_REQUIRE_GPU") === "1") {
      throw new Error(`SPECDEC_REQUIRE_GPU=1 but ${(e as Error).message}`);
    }
    console.warn(`skipping GPU tests: ${(e as Error).message}`);
    return null;
  });
  return gpuPromise;
}

/**
 * Registers a Deno test that runs with the shared GPU inside a validation error scope (the test
 * fails on any WebGPU validation error) and is ignored when no adapter is available.
 */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({
    name,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async (t) => {
      const gpu = await testGpu();
      if (!gpu) {
        console.warn(`ignored (no WebGPU adapter): ${t.name}`);
        return;
      }
      await gpu.scoped(name, () => fn(gpu));
    },
  });
}

/** Mulberry32: a small seeded PRNG returning floats in [0, 1) (the model's initialiser's). */
export const rng: (seed: number) => () => number = seededRandom;

/** `n` uniform values in [lo, hi) from a seeded generator, as float32. */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** `n` standard normal values (Box–Muller) from a seeded generator, as float32. */
export function randomNormal(n: number, seed: number, std = 1): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12), v = r();
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** `n` random integers in [0, max) from a seeded generator. */
export function randomInts(n: number, max: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * max));
}

/** A batch of `B` rows of `n` random tokens in [0, V) from a seeded generator. */
export function randomRows(B: number, n: number, V: number, seed: number): number[][] {
  const flat = randomInts(B * n, V, seed);
  return Array.from({ length: B }, (_, b) => flat.slice(b * n, (b + 1) * n));
}

/**
 * Asserts `|actual − expected| ≤ atol + rtol·|expected|` elementwise; on failure the message
 * names the label, the worst element and the first few mismatches.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4, label = "values" }: { atol?: number; rtol?: number; label?: string } =
    {},
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length}, expected ${expected.length}`);
  }
  let worst = -1, worstDiff = 0;
  const bad: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    const diff = Math.abs(a - e);
    const ok = diff <= atol + rtol * Math.abs(e) || (Number.isNaN(a) && Number.isNaN(e)) ||
      (a === e);
    if (!ok) {
      if (bad.length < 5) bad.push(`[${i}] ${a} vs ${e}`);
      if (!(diff <= worstDiff)) {
        worstDiff = diff;
        worst = i;
      }
    }
  }
  if (bad.length > 0) {
    throw new Error(
      `${label}: max abs diff ${worstDiff} at [${worst}] (atol ${atol}, rtol ${rtol}); ` +
        `first mismatches: ${bad.join(", ")}`,
    );
  }
}

/** Max absolute difference between two arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
