/**
 * GPU time of compute passes from timestamp queries, with a wall-clock fallback.
 *
 * @module
 */
import type { Gpu } from "./gpu.ts";

/**
 * Measures GPU time of compute passes with timestamp queries, or wall time where the device has
 * no `timestamp-query`. Pass it to {@link Gpu.run}; each pass adds to the total.
 *
 * @example
 * ```ts
 * import { GpuTimer, requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const timer = new GpuTimer(gpu);
 * gpu.run("nothing", [], timer);
 * console.log(await timer.read()); // milliseconds
 * ```
 */
export class GpuTimer {
  /** Whether GPU timestamps are used (false: wall clock). */
  readonly gpuTimed: boolean;
  #gpu: Gpu;
  #capacity: number;
  #querySet?: GPUQuerySet;
  #resolveBuf?: GPUBuffer;
  #used = 0;
  #overflow = 0; // passes that found no free query slot since the last read
  #pending: { start: number; end: number }[] = [];
  #wallStart = 0;

  /**
   * Creates a timer (a query set of `2 × capacity` timestamps when the device has them).
   *
   * @param gpu the runtime
   * @param capacity how many passes it can time between reads, 1 to 2048 (WebGPU caps a query
   *   set at 4096 queries, two per pass)
   * @throws Error when capacity is not an integer from 1 to 2048
   */
  constructor(gpu: Gpu, capacity = 1024) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 2048) {
      throw new Error(
        `specdec: GpuTimer capacity must be an integer from 1 to 2048 (two timestamps per pass, ` +
          `at most 4096 queries in a WebGPU query set), got ${capacity}`,
      );
    }
    this.#gpu = gpu;
    this.#capacity = capacity;
    this.gpuTimed = gpu.hasTimestamps;
    if (this.gpuTimed) {
      this.#querySet = gpu.device.createQuerySet({
        label: "specdec timer",
        type: "timestamp",
        count: 2 * capacity,
      });
      this.#resolveBuf = gpu.buffer("timer resolve", 16 * capacity, 0x200 | 0x4); // QUERY_RESOLVE|COPY_SRC
    }
    this.#wallStart = performance.now();
  }

  /**
   * Timestamp writes for the next pass (undefined when not GPU-timed or full).
   *
   * @returns the pass's timestampWrites
   */
  writes(): GPUComputePassTimestampWrites | undefined {
    if (!this.#querySet) return undefined;
    if (this.#used >= this.#capacity) {
      this.#overflow++;
      return undefined;
    }
    const i = this.#used++;
    this.#pending.push({ start: 2 * i, end: 2 * i + 1 });
    return {
      querySet: this.#querySet,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
  }

  /**
   * Resolves the queries written so far into the resolve buffer (called by {@link Gpu.run}).
   *
   * @param enc the command encoder of the timed pass
   */
  resolve(enc: GPUCommandEncoder): void {
    if (!this.#querySet || this.#used === 0) return;
    enc.resolveQuerySet(this.#querySet, 0, 2 * this.#used, this.#resolveBuf!, 0);
  }

  /**
   * Waits for the timed work and returns its time in milliseconds: the sum of GPU pass times
   * (0 when no pass was timed), or the wall time since construction (or the last read) without
   * timestamps. Resets the timer.
   *
   * @returns milliseconds
   */
  async read(): Promise<number> {
    if (this.#overflow > 0) {
      const n = this.#overflow;
      this.#overflow = 0;
      this.#used = 0;
      this.#pending = [];
      throw new Error(
        `specdec: GpuTimer timed ${n} passes more than its capacity ${this.#capacity} between reads; ` +
          `read it more often or create it with a larger capacity`,
      );
    }
    if (this.gpuTimed && this.#used === 0) return 0; // nothing was timed on the GPU
    if (!this.gpuTimed) {
      await this.#gpu.device.queue.onSubmittedWorkDone();
      const now = performance.now();
      const ms = now - this.#wallStart;
      this.#wallStart = now;
      return ms;
    }
    const raw = new BigUint64Array(await this.#gpu.read(this.#resolveBuf!, 16 * this.#used));
    let ns = 0n;
    for (const p of this.#pending) if (raw[p.end] > raw[p.start]) ns += raw[p.end] - raw[p.start];
    this.#used = 0;
    this.#pending = [];
    this.#wallStart = performance.now();
    return Number(ns) / 1e6;
  }

  /** Releases the query set and buffer. */
  destroy(): void {
    this.#querySet?.destroy();
    this.#resolveBuf?.destroy();
  }
}
