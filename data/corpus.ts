/**
 * Corpus loading on web APIs only: gzip (DecompressionStream), zip (fflate) or plain bytes; the
 * reference's train/validation split; a seeded sampler of random windows, like the reference's
 * `TextSamplerDataset`, whose state can be saved and restored for exact resumes.
 *
 * @module
 */
import { unzipSync } from "fflate";

/** Bytes of the training split in the reference (enwik8: first 90 MB). */
export const TRAIN_BYTES = 90_000_000;
/** Bytes of the validation split in the reference (the next 5 MB). */
export const VAL_BYTES = 5_000_000;

/**
 * Decodes a corpus file's bytes: gzip and zip are detected by their magic numbers (a zip's first
 * file is used), anything else is taken as plain bytes.
 *
 * @param bytes the file's contents
 * @param source the file's name, for errors
 * @returns the corpus bytes
 * @throws Error naming the file when it is empty or cannot be decompressed
 * @example
 * ```ts
 * import { decodeCorpus } from "@x/specdec";
 * const text = await decodeCorpus(new TextEncoder().encode("hello"), "inline");
 * ```
 */
export async function decodeCorpus(bytes: Uint8Array, source: string): Promise<Uint8Array> {
  if (bytes.length === 0) throw new Error(`specdec: data file ${source} is empty`);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
        .pipeThrough(new DecompressionStream("gzip"));
      const out = new Uint8Array(await new Response(stream).arrayBuffer());
      if (out.length === 0) throw new Error(`specdec: data file ${source} decompresses to nothing`);
      return out;
    } catch (e) {
      if ((e as Error).message.startsWith("specdec:")) throw e;
      throw new Error(
        `specdec: data file ${source} is not a valid gzip file (${(e as Error).message})`,
      );
    }
  }
  if (bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 0x03 && bytes[3] === 0x04) {
    let files: Record<string, Uint8Array>;
    try {
      files = unzipSync(bytes);
    } catch (e) {
      throw new Error(
        `specdec: data file ${source} is not a valid zip file (${(e as Error).message})`,
      );
    }
    const names = Object.keys(files).filter((n) => !n.endsWith("/"));
    if (names.length === 0) throw new Error(`specdec: zip file ${source} holds no file`);
    const out = files[names[0]];
    if (out.length === 0) throw new Error(`specdec: ${names[0]} in ${source} is empty`);
    return out;
  }
  return bytes;
}

/** Train and validation bytes. */
export interface Split {
  /** Training bytes. */
  train: Uint8Array;
  /** Validation bytes. */
  val: Uint8Array;
}

/**
 * The reference's split: the first 90 MB train, the next 5 MB validation. A corpus shorter than
 * 95 MB is split in the same 90:5 proportion.
 *
 * @param data the corpus
 * @param minWindow the shortest split allowed (a training window: seqLen + 1)
 * @param source a name for errors
 * @returns the two splits (views, no copy)
 * @throws Error when either split is shorter than `minWindow`
 */
export function splitCorpus(data: Uint8Array, minWindow: number, source = "corpus"): Split {
  let trainEnd = TRAIN_BYTES, valEnd = TRAIN_BYTES + VAL_BYTES;
  if (data.length < valEnd) {
    trainEnd = Math.floor(data.length * TRAIN_BYTES / (TRAIN_BYTES + VAL_BYTES));
    valEnd = data.length;
  }
  const split = { train: data.subarray(0, trainEnd), val: data.subarray(trainEnd, valEnd) };
  if (split.val.length < minWindow + 1) {
    throw new Error(
      `specdec: ${source} is too short: ${data.length} bytes give a validation split of ` +
        `${split.val.length} bytes, and a window needs ${
          minWindow + 1
        }; use more data or a shorter --seq-len`,
    );
  }
  return split;
}

/**
 * Random windows of a byte corpus, like the reference's `TextSamplerDataset`: a start in
 * `[0, len − window − 1)`, `window` bytes. The seeded generator is Marsaglia's xorshift128 (128
 * bits of state in four u32 words, period 2^128 − 1, one u32 per draw); a start takes two draws.
 */
export class WindowSampler {
  #data: Uint8Array;
  #window: number;
  #state: Uint32Array;

  /**
   * Creates a sampler over `data`.
   *
   * @param data the split to sample from
   * @param window bytes per window (seqLen + 1 for training)
   * @param seed generator seed
   */
  constructor(data: Uint8Array, window: number, seed: number) {
    if (data.length < window + 1) {
      throw new Error(`specdec: ${data.length} bytes cannot give windows of ${window + 1}`);
    }
    this.#data = data;
    this.#window = window;
    this.#state = new Uint32Array([
      seed >>> 0 ^ 0x9e3779b9,
      0x85ebca6b ^ (seed * 31 >>> 0),
      0xc2b2ae35,
      0x27d4eb2f,
    ]);
    for (let i = 0; i < 8; i++) this.#next();
  }

  /**
   * xorshift128 (Marsaglia 2003): the next u32. `s[3]` is the oldest word (Marsaglia's x), `s[0]`
   * the newest (w), which is returned.
   */
  #next(): number {
    const s = this.#state;
    let t = s[3];
    const u = s[0];
    s[3] = s[2];
    s[2] = s[1];
    s[1] = u;
    t ^= t << 11;
    t ^= t >>> 8;
    s[0] = (t ^ u ^ (u >>> 19)) >>> 0;
    return s[0];
  }

  /** A uniform integer in [0, n): two u32 draws as a 64-bit fraction of n. */
  randInt(n: number): number {
    return Math.floor((this.#next() * 4294967296 + this.#next()) / 18446744073709552000 * n);
  }

  /**
   * Draws `rows` windows.
   *
   * @param rows how many
   * @returns rows × window tokens
   */
  sample(rows: number): number[][] {
    const out: number[][] = [];
    for (let r = 0; r < rows; r++) {
      const start = this.randInt(this.#data.length - this.#window - 1);
      out.push(Array.from(this.#data.subarray(start, start + this.#window)));
    }
    return out;
  }

  /** The generator state (to save with a checkpoint). */
  get state(): number[] {
    return [...this.#state];
  }

  /** Restores a saved generator state. */
  set state(s: number[]) {
    if (!Array.isArray(s) || s.length !== 4) {
      throw new Error("specdec: sampler state must be 4 numbers");
    }
    this.#state.set(s);
  }
}
