/**
 * Step 1 of a run, parse the run config: train.ts's flags (with the reference train.py's
 * defaults), its `--help` text, and the {@link RunConfig} they give, with errors that name the
 * flag. The per-preset defaults come from the one preset table, `PRESETS` in model/config.ts.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { PRESETS, type TrainingDefaults } from "../model/config.ts";

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

/** The `--help` text: every flag and the presets. */
export function usage(): string {
  const lines = ["Usage: deno run -A train.ts [options]", "", "Options:"];
  for (const [name, f] of Object.entries(FLAGS)) {
    const flag = `--${name}${f.type === "string" ? " VALUE" : ""}`;
    lines.push(`  ${flag.padEnd(26)} ${f.help}`);
  }
  lines.push("", "Presets (per-preset defaults; any flag overrides):");
  for (const [p, { target, draft, training: v }] of Object.entries(PRESETS)) {
    lines.push(
      `  ${
        p.padEnd(6)
      } target dim ${target.dim} depth ${target.depth}, draft depth ${draft.depth}; ` +
        `batch ${v.batch}×${v.accumulate}, seq ${v.seqLen}, lr ${v.lr}, ${v.steps} steps`,
    );
  }
  return lines.join("\n");
}

/** A bad command line: train.ts prints the message and the `--help` text, and exits with 2. */
export class UsageError extends Error {}

/** The parsed flags, by flag name (`"seq-len"`); absent flags are undefined. */
export type Flags = Record<string, string | boolean | undefined>;

/** The flags saved with a checkpoint (state.json `args`), by flag name, read back on resume. */
export type SavedArgs = Record<string, number | string | boolean>;

/**
 * Reads the command line.
 *
 * @param args the arguments (Deno.args)
 * @returns the flags by name
 * @throws UsageError for an unknown flag, a missing value or a positional argument
 */
export function parseFlags(args: string[]): Flags {
  try {
    return parseArgs({ args, options: FLAGS as never, strict: true, allowPositionals: false })
      .values as Flags;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Everything a run is configured by: the preset's training settings after the flags, and where. */
export interface RunConfig extends TrainingDefaults {
  /** The preset's name: a key of `PRESETS`. */
  preset: string;
  /** Save a checkpoint every this many steps (also on Ctrl-C and at the end). */
  checkpointEvery: number;
  /** Seed of initialisation, data sampling and generation. */
  seed: number;
  /** The corpus file; undefined: data/enwik8.gz, else the project's own text. */
  data?: string;
  /** Skip an optimizer step whose gradient norm is NaN/Inf instead of stopping. */
  skipNonFinite: boolean;
  /** The run folder: metrics, plot and checkpoints. */
  runDir: string;
}

/** The flag of a config field: `seqLen` → `seq-len`. */
const flagName = (key: string) => key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

/**
 * The run config: each flag given now, else (resuming) the value the run was saved with, else the
 * preset's default. Without `--preset`, a software adapter gets `tiny` (one line says so) and a
 * GPU `seed`.
 *
 * @param flags the command line
 * @param saved the resumed run's saved flags (state.json `args`), if resuming
 * @param adapter the GPU, to pick the default preset
 * @returns the validated config
 * @throws Error naming the flag whose value is out of range
 */
export function runConfig(
  flags: Flags,
  saved: SavedArgs | undefined,
  adapter: { isSoftware: boolean; adapterName: string },
): RunConfig {
  const pick = (name: string) =>
    (flags[name] as string | undefined) ??
      (saved?.[name] !== undefined ? String(saved[name]) : undefined);
  let preset = pick("preset");
  if (preset === undefined) {
    preset = adapter.isSoftware ? "tiny" : "seed";
    if (adapter.isSoftware) {
      console.log(
        `software adapter (${adapter.adapterName}): using --preset tiny so progress shows within minutes; --preset seed forces the reference's full run`,
      );
    }
  }
  if (!(preset in PRESETS)) {
    throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(", ")}, got "${preset}"`);
  }
  const d = PRESETS[preset].training;
  const int = (key: string, fallback: number, min: number) =>
    num(flagName(key), pick(flagName(key)), fallback, { int: true, min });
  const config: RunConfig = {
    steps: int("steps", d.steps, 1),
    batch: int("batch", d.batch, 1),
    accumulate: int("accumulate", d.accumulate, 1),
    lr: num("lr", pick("lr"), d.lr),
    clip: num("clip", pick("clip"), d.clip),
    seqLen: int("seqLen", d.seqLen, 2),
    validateEvery: int("validateEvery", d.validateEvery, 1),
    generateEvery: int("generateEvery", d.generateEvery, 1),
    primeLen: int("primeLen", d.primeLen, 1),
    generateLen: int("generateLen", d.generateLen, 2),
    gamma: int("gamma", d.gamma, 1),
    checkpointEvery: int("checkpointEvery", 500, 1),
    seed: int("seed", 0, 0),
    preset,
    data: pick("data"),
    skipNonFinite: Boolean(flags["skip-nonfinite"] ?? saved?.["skip-nonfinite"]),
    runDir: (flags.resume as string | undefined) ?? (flags["run-dir"] as string | undefined) ??
      `runs/${new Date().toISOString().replace(/[:]/g, "-").replace(/\..*/, "")}`,
  };
  if (!(config.lr > 0)) throw new Error(`--lr must be > 0, got ${config.lr}`);
  if (!(config.clip > 0)) throw new Error(`--clip must be > 0, got ${config.clip}`);
  if (config.primeLen >= config.generateLen) {
    throw new Error(
      `--prime-len (${config.primeLen}) must be shorter than --generate-len (${config.generateLen})`,
    );
  }
  return config;
}

/**
 * The flags to save with a checkpoint, under the flags' own names, so that a resumed run reads
 * them back like a command line ({@link runConfig}'s `saved`). The run folder is not among them:
 * `--resume` names it.
 *
 * @param config the run config
 * @returns flag name → value
 */
export function savedArgs(config: RunConfig): SavedArgs {
  const { preset, data, skipNonFinite, runDir: _, ...numbers } = config;
  return {
    ...Object.fromEntries(Object.entries(numbers).map(([k, x]) => [flagName(k), x])),
    preset,
    ...(data !== undefined ? { data } : {}),
    "skip-nonfinite": skipNonFinite,
  };
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
