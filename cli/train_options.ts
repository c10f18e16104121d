/**
 * train.ts's command line: its flags (with the reference train.py's defaults), presets, `--help`
 * text, and number parsing with errors that name the flag.
 *
 * @module
 */
import { PRESETS } from "../model/config.ts";

/** Every flag, with the reference's defaults (for the `seed` preset). */
export const FLAGS = {
  preset: {
    type: "string",
    help:
      "seed (the reference: dim 512, depth 10 + 2), small or tiny; default: seed on a GPU, tiny on a software adapter",
  },
  data: {
    type: "string",
    help: "corpus: .gz, .zip or plain text (default data/enwik8.gz; `deno task data` fetches it)",
  },
  steps: { type: "string", help: "training steps (reference NUM_BATCHES: 100000)" },
  batch: { type: "string", help: "rows per micro-batch (reference: 4)" },
  accumulate: { type: "string", help: "micro-batches per step, GRAD_ACCUM_EVERY (reference: 4)" },
  lr: { type: "string", help: "Adam learning rate (reference: 1e-4)" },
  clip: { type: "string", help: "gradient clipping max norm (reference: 0.5)" },
  "seq-len": { type: "string", help: "training sequence length SEQ_LEN (reference: 512)" },
  "validate-every": { type: "string", help: "validation every N steps (reference: 100)" },
  "generate-every": {
    type: "string",
    help: "generation comparison every N steps (reference: 500)",
  },
  "prime-len": { type: "string", help: "prime length PRIME_LENGTH (reference: 128)" },
  "generate-len": {
    type: "string",
    help: "total generated length incl. prime, GENERATE_LENGTH (reference: 512)",
  },
  gamma: { type: "string", help: "draft tokens per speculative step (reference: 5)" },
  "checkpoint-every": {
    type: "string",
    help: "save a checkpoint every N steps (default 500; also on Ctrl-C and at the end)",
  },
  "run-dir": {
    type: "string",
    help: "where metrics, plot and checkpoints go (default runs/<date-time>)",
  },
  resume: {
    type: "string",
    help: "continue the run saved in this folder exactly where it stopped",
  },
  seed: {
    type: "string",
    help: "seed of initialisation, data sampling and generation (default 0)",
  },
  "skip-nonfinite": {
    type: "boolean",
    help: "skip an optimizer step whose gradient norm is NaN/Inf instead of stopping",
  },
  help: { type: "boolean", short: "h", help: "show this help" },
} as const;

/** Preset training settings: the reference's for `seed`, smaller ones for a software adapter. */
export const TRAIN_PRESETS: Record<string, Record<string, number>> = {
  seed: {
    steps: 100000,
    batch: 4,
    accumulate: 4,
    lr: 1e-4,
    clip: 0.5,
    seqLen: 512,
    validateEvery: 100,
    generateEvery: 500,
    primeLen: 128,
    generateLen: 512,
    gamma: 5,
  },
  small: {
    steps: 2000,
    batch: 4,
    accumulate: 2,
    lr: 1e-3,
    clip: 0.5,
    seqLen: 128,
    validateEvery: 50,
    generateEvery: 250,
    primeLen: 32,
    generateLen: 128,
    gamma: 5,
  },
  tiny: {
    steps: 300,
    batch: 4,
    accumulate: 1,
    lr: 2e-3,
    clip: 0.5,
    seqLen: 64,
    validateEvery: 25,
    generateEvery: 100,
    primeLen: 16,
    generateLen: 64,
    gamma: 5,
  },
};

/** The `--help` text: every flag and the presets. */
export function usage(): string {
  const lines = ["Usage: deno run -A train.ts [options]", "", "Options:"];
  for (const [name, f] of Object.entries(FLAGS)) {
    const flag = `--${name}${f.type === "string" ? " VALUE" : ""}`;
    lines.push(`  ${flag.padEnd(26)} ${f.help}`);
  }
  lines.push("", "Presets (per-preset defaults; any flag overrides):");
  for (const [p, v] of Object.entries(TRAIN_PRESETS)) {
    const m = PRESETS[p];
    lines.push(
      `  ${
        p.padEnd(6)
      } target dim ${m.target.dim} depth ${m.target.depth}, draft depth ${m.draft.depth}; ` +
        `batch ${v.batch}×${v.accumulate}, seq ${v.seqLen}, lr ${v.lr}, ${v.steps} steps`,
    );
  }
  return lines.join("\n");
}

/** Parses a numeric flag with a clear error. */
export function num(
  name: string,
  raw: string | undefined,
  fallback: number,
  opts: { int?: boolean; min?: number } = {},
): number {
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (
    raw.trim() === "" || !Number.isFinite(v) || (opts.int && !Number.isInteger(v)) ||
    (opts.min !== undefined && v < opts.min)
  ) {
    throw new Error(
      `--${name} must be ${opts.int ? "an integer" : "a number"}${
        opts.min !== undefined ? ` ≥ ${opts.min}` : ""
      }, got "${raw}"`,
    );
  }
  return v;
}

/** Byte to printable character, as the reference: codes below 32 become a space. */
export const decodeTokens = (t: number[]): string =>
  t.map((c) => String.fromCharCode(Math.max(32, c))).join("");
