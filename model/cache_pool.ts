/**
 * A model's pool of decode KV caches, so repeated decodes reuse their caches (and the forward plans
 * built over them) instead of allocating anew, with bounded memory: a decode takes the smallest
 * free cache of its batch that is long enough, new caches get a rounded-up length so that nearby
 * lengths share one, and free caches beyond a count are freed, least recently used first.
 *
 * @module
 */
import type { KVCache } from "./kv_cache.ts";
import type { ForwardPlan } from "./forward_plan.ts";

/** A cache taken from a {@link CachePool}; `release()` hands it back for the next decode. */
export interface PooledCache {
  /** The cache, for this holder's exclusive use until released (its maxLen may be larger). */
  cache: KVCache;
  /** Returns the cache to the pool (it stays allocated, for reuse, until evicted). */
  release: () => void;
  /**
   * Ties a forward plan built over this cache to it: when the pool evicts the cache, it frees the
   * plan's activation buffers too (the model keeps plans per cache, so they would otherwise stay
   * allocated until the model is destroyed). Adopting a plan twice is harmless.
   */
  adopt: (plan: ForwardPlan) => void;
}

/** How much a {@link CachePool} keeps. */
export interface CachePoolOptions {
  /**
   * Free caches kept for reuse (default 4, at least 1); when more are free, the least recently
   * used are freed with the plans adopted over them. Caches in use are never freed.
   */
  maxFree?: number;
}

/**
 * The length a new cache gets for a request of `maxLen` positions: rounded up to a quarter
 * octave (a multiple of 2^(⌊log2 maxLen⌋ − 2)), at most 25 % more, so that decodes to nearby
 * lengths share a cache, its plans and its rotary tables (the model keeps one table per cache
 * length), and a pool sees few distinct lengths.
 *
 * @param maxLen positions requested, a positive integer
 * @returns the allocated length, ≥ maxLen
 */
export function roundedCacheLength(maxLen: number): number {
  const step = 2 ** Math.max(0, Math.floor(Math.log2(maxLen)) - 2);
  return Math.ceil(maxLen / step) * step;
}

/** The buffers a forward plan allocated for itself (not the cache, not the shared rotary tables). */
function planBuffers(plan: ForwardPlan): GPUBuffer[] {
  const own = [plan.tokens, plan.start, plan.logits, plan.xFinal, plan.xf, plan.rstdF];
  for (const layer of plan.layers) own.push(...Object.values(layer));
  return [...new Set(own)];
}

interface Entry {
  cache: KVCache;
  busy: boolean;
  /** When it was last acquired or released (a counter). */
  used: number;
  /** Plans adopted over the cache. */
  plans: Set<ForwardPlan>;
}

/**
 * KV caches by batch and length, created on first need and freed by {@link CachePool.destroy}.
 * Each model holds one (`model.caches`), freed with the model.
 *
 * Memory stays bounded however many distinct lengths are decoded: `acquire(batch, maxLen)` hands
 * out the smallest free cache of that batch with at least maxLen positions (a longer cache gives
 * the same results: attention reads only the positions below each row's length), creates one of
 * {@link roundedCacheLength} positions when none is free, and after each release frees the least
 * recently used free caches beyond `maxFree` (default 4), with the forward plans adopted over them.
 * {@link CachePool.bytes} reports what the pool holds.
 *
 * @example
 * ```ts
 * import { Decoder, requestGpu } from "@x/specdec";
 * const model = Decoder.create(await requestGpu(), { numTokens: 256, dim: 64, depth: 2 });
 * const { cache, release } = model.caches.acquire(4, 128); // 4 rows of up to 128 positions
 * const step = model.forwardPlan(cache, 1); // plans are cached per cache: reuse pays off
 * release(); // the next acquire(4, ≤ 128) gets the same cache (and its plans)
 * model.destroy(); // frees the pooled caches too
 * ```
 */
export class CachePool {
  readonly #create: (batch: number, maxLen: number) => KVCache;
  readonly #maxFree: number;
  readonly #entries: Entry[] = [];
  #clock = 0;

  /**
   * An empty pool.
   *
   * @param create allocates a cache of (batch, maxLen) (the model's `createCache`)
   * @param options how many free caches to keep
   * @throws Error when maxFree is not an integer ≥ 1
   */
  constructor(
    create: (batch: number, maxLen: number) => KVCache,
    options: CachePoolOptions = {},
  ) {
    const maxFree = options.maxFree ?? 4;
    if (!Number.isInteger(maxFree) || maxFree < 1) {
      throw new Error(`specdec: CachePool maxFree must be an integer ≥ 1, got ${maxFree}`);
    }
    this.#create = create;
    this.#maxFree = maxFree;
  }

  /**
   * A free cache of `batch` rows and at least `maxLen` positions: the shortest free one, or a new
   * one of {@link roundedCacheLength}(maxLen) positions when none is free.
   *
   * @param batch rows
   * @param maxLen positions per row needed
   * @returns the cache, its release, and `adopt` for plans built over it
   */
  acquire(batch: number, maxLen: number): PooledCache {
    let entry: Entry | undefined;
    for (const e of this.#entries) {
      if (e.busy || e.cache.batch !== batch || e.cache.maxLen < maxLen) continue;
      if (
        !entry || e.cache.maxLen < entry.cache.maxLen ||
        (e.cache.maxLen === entry.cache.maxLen && e.used > entry.used)
      ) entry = e;
    }
    if (!entry) {
      const rounded = roundedCacheLength(maxLen);
      let cache: KVCache;
      try {
        cache = this.#create(batch, rounded);
      } catch (e) {
        if (rounded === maxLen) throw e;
        cache = this.#create(batch, maxLen); // the rounding alone went over a device limit
      }
      this.#entries.push(entry = { cache, busy: false, used: 0, plans: new Set() });
    }
    const e = entry;
    e.busy = true;
    e.used = ++this.#clock;
    let released = false;
    return {
      cache: e.cache,
      release: () => {
        if (released) return; // a second release must not free a cache another holder has
        released = true;
        e.busy = false;
        e.used = ++this.#clock;
        this.#evict();
      },
      adopt: (plan) => void e.plans.add(plan),
    };
  }

  /** Frees the least recently used free caches beyond maxFree. */
  #evict(): void {
    const free = this.#entries.filter((e) => !e.busy).sort((a, b) => b.used - a.used);
    for (const e of free.slice(this.#maxFree)) {
      this.#entries.splice(this.#entries.indexOf(e), 1);
      this.#free(e);
    }
  }

  #free(e: Entry): void {
    e.cache.destroy();
    for (const plan of e.plans) for (const b of planBuffers(plan)) b.destroy();
    e.plans.clear();
  }

  /** Caches the pool holds, in use or not. */
  get size(): number {
    return this.#entries.length;
  }

  /** GPU bytes the pool holds: its caches and the activations of the plans adopted over them. */
  get bytes(): number {
    let total = 0;
    for (const e of this.#entries) {
      for (const b of e.cache.layers) total += b.size;
      for (const plan of e.plans) for (const b of planBuffers(plan)) total += b.size;
    }
    return total;
  }

  /** Frees every pooled cache (in use or not) and the plans adopted over them; empties the pool. */
  destroy(): void {
    for (const e of this.#entries.splice(0)) this.#free(e);
  }
}
