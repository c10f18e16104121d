/**
 * Wall-clock timing of dispatch lists, for the cost ratio c of speculative decoding.
 *
 * Why not GPU timestamps: on Mesa's lavapipe a compute pass's beginning timestamp is written late
 * in command buffers that touch textures (the decode path's weights and KV cache live in textures
 * there; see bench/profile_decoding.ts), so a pass holding one forward can miss much of its work,
 * more of a short draft forward's than of a long target forward's. Wall time over many runs per
 * submit, less the completion of an empty submit, has no such bias.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../kernels/gpu.ts";

/**
 * Wall milliseconds of one submit of `dispatches`, waited for (the completion included: ~11 ms
 * on the software adapter, so callers subtract the wall time of an empty submit).
 *
 * @param gpu the runtime
 * @param dispatches what to run, in one pass
 * @returns the milliseconds from submit to completion
 * @example
 * ```ts ignore
 * const ms = (await wallMs(gpu, list)) - (await wallMs(gpu, []));
 * ```
 */
export async function wallMs(gpu: Gpu, dispatches: Dispatch[]): Promise<number> {
  const t0 = performance.now();
  gpu.run("wall timing", dispatches);
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/**
 * Milliseconds per run of each dispatch list: `reps` runs of a list in one submit, waited for,
 * less the wait of an empty submit measured in the same round; lists alternated over `rounds`
 * rounds after a warm-up round, and the fastest round kept for each (a busy machine only slows).
 *
 * @param gpu the runtime
 * @param lists dispatch lists to time (each run `reps` times in a row; they must be repeatable)
 * @param reps runs per submit (default 20)
 * @param rounds timed rounds (default 5)
 * @returns ms per run, one per list
 * @example
 * ```ts ignore
 * const [draftMs, targetMs] = await wallMsPerRun(gpu, [draftPlan.dispatches, targetPlan.dispatches]);
 * const c = draftMs / targetMs;
 * ```
 */
export async function wallMsPerRun(
  gpu: Gpu,
  lists: Dispatch[][],
  reps = 20,
  rounds = 5,
): Promise<number[]> {
  const wait = (ds: Dispatch[]) => wallMs(gpu, ds);
  const best = lists.map(() => Infinity);
  for (let r = 0; r <= rounds; r++) {
    const empty = await wait([]);
    for (const [i, list] of lists.entries()) {
      const ms = (await wait(new Array(reps).fill(list).flat()) - empty) / reps;
      if (r > 0) best[i] = Math.min(best[i], ms); // round 0 warms up
    }
  }
  return best;
}

/**
 * The median of timed rounds: the upper of the two middle values for an even count (a value that
 * was measured, not an average of two).
 *
 * @param values the rounds' times (not empty)
 * @returns the median
 * @example
 * ```ts ignore
 * console.log(median([3, 1, 2])); // 2
 * ```
 */
export function median(values: number[]): number {
  return [...values].sort((x, y) => x - y)[Math.floor(values.length / 2)];
}

/**
 * The machine's 1, 5 and 15 minute load averages, as the benchmarks print them beside their
 * times (a shared machine's load changes what they measure); `["?"]` where unreadable.
 *
 * @returns the three averages as written in /proc/loadavg
 * @example
 * ```ts ignore
 * console.log(`load ${(await loadAverage()).join(" ")}`);
 * ```
 */
export async function loadAverage(): Promise<string[]> {
  return (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ").slice(0, 3);
}
