/**
 * A model's pool of decode KV caches, so repeated decodes of one shape reuse their caches (and the
 * forward plans built over them) instead of allocating anew.
 *
 * @module
 */
import type { KVCache } from "./kv_cache.ts";

/** A cache taken from a {@link CachePool}; `release()` hands it back for the next decode. */
export interface PooledCache {
  /** The cache, for this holder's exclusive use until released. */
  cache: KVCache;
  /** Returns the cache to the pool (it stays allocated, for reuse). */
  release: () => void;
}

/**
 * KV caches per (batch, maxLen), created on first need and freed by {@link CachePool.destroy}.
 * Each model holds one (`model.caches`), freed with the model.
 *
 * @example
 * ```ts
 * import { Decoder, requestGpu } from "@x/specdec";
 * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 64, depth: 2 });
 * const { cache, release } = model.caches.acquire(4, 128); // 4 rows of up to 128 positions
 * const step = model.forwardPlan(cache, 1); // plans are cached per cache: reuse pays off
 * release(); // the next acquire(4, 128) gets the same cache (and its plans)
 * model.destroy(); // frees the pooled caches too
 * ```
 */
export class CachePool {
  readonly #create: (batch: number, maxLen: number) => KVCache;
  readonly #entries = new Map<string, { cache: KVCache; busy: boolean }[]>();

  /**
   * An empty pool.
   *
   * @param create allocates a cache of (batch, maxLen) (the model's `createCache`)
   */
  constructor(create: (batch: number, maxLen: number) => KVCache) {
    this.#create = create;
  }

  /**
   * A free cache of (batch, maxLen), created when every pooled one of that shape is in use.
   *
   * @param batch rows
   * @param maxLen positions per row
   * @returns the cache and its release
   */
  acquire(batch: number, maxLen: number): PooledCache {
    const key = `${batch}x${maxLen}`;
    let list = this.#entries.get(key);
    if (!list) this.#entries.set(key, list = []);
    let entry = list.find((e) => !e.busy);
    if (!entry) list.push(entry = { cache: this.#create(batch, maxLen), busy: false });
    entry.busy = true;
    const e = entry;
    return { cache: e.cache, release: () => void (e.busy = false) };
  }

  /** Caches the pool holds, in use or not. */
  get size(): number {
    let count = 0;
    for (const list of this.#entries.values()) count += list.length;
    return count;
  }

  /** Frees every pooled cache (in use or not) and empties the pool. */
  destroy(): void {
    for (const list of this.#entries.values()) for (const e of list) e.cache.destroy();
    this.#entries.clear();
  }
}
