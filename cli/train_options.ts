/**
 * Step 1 of a run, parse the run config: train.ts's flags (with the reference train.py's
 * defaults), its `--help` text, and the {@link RunConfig} they give, with errors that name the
 * flag. The per-preset defaults come from the one preset table, `PRESETS` in model/config.ts.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { PRESETS, resolveConfig, type TrainingDefaults } from "../model/config.ts";

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
  gamma: {
    type: "string",
    help: "draft tokens per speculative step, at most generate-len − prime-len (reference: 5)",
  },
  "draft-threshold": {
    type: "string",
    help:
      "adaptive draft length in the comparisons: a row stops drafting after a draft token whose draft probability is under P, 0 ≤ P ≤ 0.99 (default 0: always --gamma)",
  },
  "early-exit": {
    type: "string",
    help:
      "train the target with an exit head after layer K (1 ≤ K < target depth), jointly (loss = final + exit); the comparison then also runs self-speculative decoding (default 0: none)",
  },
  "early-exit-extra-blocks": {
    type: "string",
    help: "transformer blocks of the exit branch only, before the exit head (default 0)",
  },
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
    help:
      "seed of initialisation, data sampling and generation, 0 to 2147483647 (default 0; the models' generators take 2·seed + 1 and 2·seed + 2 as 32-bit seeds)",
  },
  distill: {
    type: "string",
    help:
      "distil the draft toward the target: draft loss (1 − W)·CE + W·KL(target ‖ draft), 0 < W ≤ 1 (default off)",
  },
  "distill-temperature": {
    type: "string",
    help: "softmax temperature of both distributions in --distill's KL, 0.01 to 100 (default 1)",
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
  lines.push(
    "",
    "Integer flags take plain decimal digits (no sign, hex or exponent), up to 4294967295 (the",
    "kernels' 32-bit sizes; Adam counts steps in 32 bits); --lr and --clip a decimal number > 0",
    "that a 32-bit float holds (1e-4 is fine). Sizes are also checked against the device's",
    "buffer limits before any work starts.",
  );
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
 * @throws UsageError for an unknown flag, a missing value, a positional argument, a number that
 *   is not plain decimal or is out of its flag's range, or an unknown preset (checked here, before
 *   any GPU work)
 */
export function parseFlags(args: string[]): Flags {
  let flags: Flags;
  try {
    flags = parseArgs({ args, options: FLAGS as never, strict: true, allowPositionals: false })
      .values as Flags;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  for (const name of Object.keys(NUMBER_FLAGS)) {
    const raw = flags[name];
    if (typeof raw === "string") num(name, raw, 0);
  }
  if (typeof flags.preset === "string") checkPreset(flags.preset, `--preset`, UsageError);
  for (const name of ["resume", "run-dir", "data"]) {
    if (flags[name] === "") throw new UsageError(`--${name} needs a path, got ""`);
  }
  return flags;
}

/** Throws unless `preset` names a preset. */
function checkPreset(preset: string, what: string, E: new (m: string) => Error): void {
  if (!Object.hasOwn(PRESETS, preset)) {
    throw new E(
      `${what} must be one of ${Object.keys(PRESETS).map((p) => `"${p}"`).join(", ")}, got ${
        JSON.stringify(preset)
      }`,
    );
  }
}

/** The largest value of the kernels' u32 sizes and of Adam's u32 step counter. */
export const U32_MAX = 4294967295;

/** Smallest positive normal and largest finite 32-bit float: --lr and --clip go to the GPU as f32. */
const F32_MIN = 1.1754943508222875e-38, F32_MAX = 3.4028234663852886e38;

/** A numeric flag's kind and range, and why the range is what it is. */
export interface NumberFlag {
  /** An integer flag (plain decimal digits), else a decimal number. */
  int: boolean;
  /** Smallest value. */
  min: number;
  /** Largest value. */
  max: number;
  /** The limit's reason, said in the error. */
  why: string;
}

const size = (min: number): NumberFlag => ({
  int: true,
  min,
  max: U32_MAX,
  why: "sizes go to the kernels as 32-bit integers",
});
const every: NumberFlag = { ...size(1), why: "a step number is a 32-bit integer" };
const f32: NumberFlag = {
  int: false,
  min: F32_MIN,
  max: F32_MAX,
  why: "it goes to the GPU as a 32-bit float",
};

/** Every numeric flag's range (cross-flag and device limits are checked in {@link runConfig}). */
export const NUMBER_FLAGS: Record<string, NumberFlag> = {
  steps: { ...size(1), why: "Adam counts steps in 32 bits" },
  batch: size(1),
  accumulate: size(1),
  lr: f32,
  clip: f32,
  "seq-len": size(2),
  "validate-every": every,
  "generate-every": every,
  "prime-len": size(1),
  "generate-len": size(2),
  gamma: size(1),
  "checkpoint-every": every,
  "early-exit": { ...size(0), why: "a layer index" },
  "early-exit-extra-blocks": { ...size(0), why: "a block count" },
  distill: { int: false, min: F32_MIN, max: 1, why: "the KL's weight in (1 − W)·CE + W·KL" },
  "draft-threshold": {
    int: false,
    min: 0,
    max: 0.99,
    why: "a draft probability; at 1 every row would stop after one draft",
  },
  "distill-temperature": {
    int: false,
    min: 0.01,
    max: 100,
    why: "beyond, 32-bit softmaxes are one-hot or flat",
  },
  seed: {
    int: true,
    min: 0,
    max: 2147483647,
    why: "the models' generators take 2·seed + 1 and 2·seed + 2 as distinct 32-bit seeds",
  },
};

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
  /** The target's exit head after this many layers (0: none); see `DecoderConfig.earlyExitLayer`. */
  earlyExit: number;
  /** The exit branch's extra blocks (`DecoderConfig.earlyExitExtraBlocks`). */
  earlyExitExtraBlocks: number;
  /**
   * Distil the draft toward the target: the KL's weight (0 < weight ≤ 1) and softmax temperature
   * (default 1); absent: off.
   */
  distill?: { weight: number; temperature: number };
  /**
   * The comparisons' adaptive draft length (`SpeculativeOptions.draftThreshold`); absent: 0, a
   * fixed gamma.
   */
  draftThreshold?: number;
  /** The run folder: metrics, plot and checkpoints. */
  runDir: string;
}

/** The flag of a config field: `seqLen` → `seq-len`. */
const flagName = (key: string) => key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

/** What runConfig needs of the device: whether it is software, its name, its binding limit. */
export interface AdapterInfo {
  /** A software adapter (default preset tiny). */
  isSoftware: boolean;
  /** Its name, said in a line. */
  adapterName: string;
  /** Largest storage buffer binding in bytes; when given, sizes are checked against it. */
  maxBinding?: number;
}

/**
 * The run config: each flag given now, else (resuming) the value the run was saved with, else the
 * preset's default. Without `--preset`, a software adapter gets `tiny` (one line says so) and a
 * GPU `seed`. Every value is checked against its flag's range ({@link NUMBER_FLAGS}), the flags
 * against each other, and (with `adapter.maxBinding`) the buffers they size against the device's
 * binding limit, before any GPU work.
 *
 * @param flags the command line
 * @param saved the resumed run's saved flags (state.json `args`), if resuming
 * @param adapter the GPU, to pick the default preset and check buffer sizes
 * @param savedFrom the state.json path the saved flags come from, named in errors
 * @returns the validated config
 * @throws UsageError naming the flag, its value and the limit; Error naming the state.json
 *   field when a saved value is bad
 */
export function runConfig(
  flags: Flags,
  saved: SavedArgs | undefined,
  adapter: AdapterInfo,
  savedFrom = "state.json",
): RunConfig {
  /** The value of a flag, and how an error names it. */
  const pick = (name: string): { raw?: string; what: string; E: new (m: string) => Error } => {
    const given = flags[name];
    if (typeof given === "string") return { raw: given, what: `--${name}`, E: UsageError };
    const what = `args.${JSON.stringify(name)} of "${savedFrom}"`;
    const v = saved?.[name];
    if (v === undefined) return { what, E: UsageError };
    const want = name in NUMBER_FLAGS ? "number" : "string";
    if ((want === "number" ? typeof v !== "number" : typeof v !== "string")) {
      throw new Error(`specdec: ${what} must be a ${want}, got ${JSON.stringify(v)}`);
    }
    return { raw: String(v), what, E: Error };
  };
  const p = pick("preset");
  let preset = p.raw;
  if (preset === undefined) {
    preset = adapter.isSoftware ? "tiny" : "seed";
    if (adapter.isSoftware) {
      console.log(
        `software adapter (${adapter.adapterName}): using --preset tiny so progress shows within minutes; --preset seed forces the reference's full run`,
      );
    }
  }
  checkPreset(preset, p.what, p.E);
  const d = PRESETS[preset].training;
  const value = (key: string, fallback: number) => {
    const { raw, what, E } = pick(flagName(key));
    return raw === undefined ? fallback : num(flagName(key), raw, fallback, what, E);
  };
  const data = pick("data");
  const distill = pick("distill"), temperature = pick("distill-temperature");
  const threshold = pick("draft-threshold");
  if (distill.raw === undefined && temperature.raw !== undefined) {
    throw new temperature.E(
      `${temperature.what} "${temperature.raw}" needs --distill (the temperature of its KL)`,
    );
  }
  const skip = flags["skip-nonfinite"] ?? saved?.["skip-nonfinite"];
  if (skip !== undefined && typeof skip !== "boolean") {
    throw new Error(
      `specdec: args."skip-nonfinite" of "${savedFrom}" must be true or false, got ${
        JSON.stringify(skip)
      }`,
    );
  }
  const config: RunConfig = {
    steps: value("steps", d.steps),
    batch: value("batch", d.batch),
    accumulate: value("accumulate", d.accumulate),
    lr: value("lr", d.lr),
    clip: value("clip", d.clip),
    seqLen: value("seqLen", d.seqLen),
    validateEvery: value("validateEvery", d.validateEvery),
    generateEvery: value("generateEvery", d.generateEvery),
    primeLen: value("primeLen", d.primeLen),
    generateLen: value("generateLen", d.generateLen),
    gamma: value("gamma", d.gamma),
    checkpointEvery: value("checkpointEvery", 500),
    earlyExit: value("earlyExit", 0),
    earlyExitExtraBlocks: value("earlyExitExtraBlocks", 0),
    seed: value("seed", 0),
    preset,
    data: data.raw,
    skipNonFinite: Boolean(skip),
    ...(distill.raw === undefined ? {} : {
      distill: {
        weight: num("distill", distill.raw, 0, distill.what, distill.E),
        temperature: num(
          "distill-temperature",
          temperature.raw,
          1,
          temperature.what,
          temperature.E,
        ),
      },
    }),
    ...(threshold.raw === undefined ? {} : {
      draftThreshold: num("draft-threshold", threshold.raw, 0, threshold.what, threshold.E),
    }),
    runDir: (flags.resume as string | undefined) ?? (flags["run-dir"] as string | undefined) ??
      `runs/${new Date().toISOString().replace(/[:]/g, "-").replace(/\..*/, "")}`,
  };
  const given = (name: string) => typeof flags[name] === "string";
  const E = (...names: string[]) => names.some(given) || !saved ? UsageError : Error;
  const q = (name: string, v: number) => `--${name} "${v}"`;
  if (config.primeLen >= config.generateLen) {
    throw new (E("prime-len", "generate-len"))(
      `${q("prime-len", config.primeLen)} must be shorter than ${
        q("generate-len", config.generateLen)
      } (the generated length counts the prime)`,
    );
  }
  const toGenerate = config.generateLen - config.primeLen;
  if (config.gamma > toGenerate) {
    throw new (E("gamma", "prime-len", "generate-len"))(
      `${q("gamma", config.gamma)} must be at most --generate-len − --prime-len = ${toGenerate}: ` +
        `a speculative step never needs more draft tokens than the tokens it generates`,
    );
  }
  checkEarlyExit(config, E);
  if (adapter.maxBinding !== undefined) checkBuffers(config, adapter.maxBinding, E);
  return config;
}

/**
 * Checks the largest buffers a run allocates against the device's storage binding limit, so that
 * a size too big for the device is refused before any GPU work, naming the flags that set it:
 * a micro-batch's activations `(batch × (seq-len + 1), max(vocabulary, ffMult·dim, 3·heads·
 * dimHead))` f32 and its training KV cache, the tokens of `accumulate` micro-batches, and the
 * decoding KV cache `(2, heads, generate-len + gamma + 2, dimHead)` f32 and draft
 * probabilities `(gamma, vocabulary)` f32; with `--distill` and `accumulate` > 1, the target's
 * kept logits `(accumulate, batch × (seq-len + 1), vocabulary)` f32.
 */
function checkBuffers(
  c: RunConfig,
  maxBinding: number,
  E: (...names: string[]) => new (m: string) => Error,
): void {
  const models = [PRESETS[c.preset].target, PRESETS[c.preset].draft].map(resolveConfig);
  const over = (bytes: number) => bytes > maxBinding;
  const vocabOf = () => Math.max(...models.map((m) => m.numTokens));
  const limit = `this device's storage binding limit of ${maxBinding} bytes`;
  const T = c.batch * (c.seqLen + 1);
  const perToken = Math.max(
    ...models.map((m) =>
      Math.max(m.numTokens, m.ffMult * m.dim, 3 * m.heads * m.dimHead, 2 * m.heads * m.dimHead)
    ),
  );
  if (over(4 * T * perToken)) {
    const most = Math.floor(maxBinding / (4 * perToken * (c.seqLen + 1)));
    throw new (E("batch", "seq-len"))(
      `--batch "${c.batch}" × (--seq-len "${c.seqLen}" + 1) = ${T} tokens per micro-batch need ` +
        `${4 * T * perToken}-byte activation buffers, over ${limit}; ` +
        (most >= 1
          ? `at most --batch ${most} at this --seq-len`
          : `at most --seq-len ${Math.floor(maxBinding / (4 * perToken)) - 1} at --batch 1`),
    );
  }
  if (c.distill !== undefined && c.accumulate > 1 && over(4 * T * c.accumulate * vocabOf())) {
    throw new (E("distill", "accumulate", "batch", "seq-len"))(
      `--distill keeps the target's logits of --accumulate "${c.accumulate}" micro-batches of ` +
        `${T} tokens, ${4 * T * c.accumulate * vocabOf()} bytes, over ${limit}; at most ` +
        `--accumulate ${Math.floor(maxBinding / (4 * T * vocabOf()))}`,
    );
  }
  if (over(4 * T * c.accumulate)) {
    throw new (E("batch", "seq-len", "accumulate"))(
      `--accumulate "${c.accumulate}" micro-batches of ${T} tokens need a ` +
        `${4 * T * c.accumulate}-byte token buffer, over ${limit}; at most --accumulate ${
          Math.floor(maxBinding / (4 * T))
        }`,
    );
  }
  const positions = Math.max(c.seqLen + 1, c.generateLen) + c.gamma + 2; // openRun's maxSeqLen
  const perPosition = Math.max(...models.map((m) => 2 * m.heads * m.dimHead * 4));
  const vocab = Math.max(...models.map((m) => m.numTokens));
  if (over(positions * perPosition)) {
    throw new (E("generate-len", "gamma", "seq-len"))(
      `--generate-len "${c.generateLen}" + --gamma "${c.gamma}" (and --seq-len "${c.seqLen}"): ` +
        `decoding needs a KV cache of ${positions} positions, ${positions * perPosition} bytes ` +
        `per layer, over ${limit}; at most ${Math.floor(maxBinding / perPosition)} positions`,
    );
  }
  if (over(4 * (c.gamma + 1) * vocab)) {
    throw new (E("gamma"))(
      `--gamma "${c.gamma}": the target's verification logits (gamma + 1, ${vocab}) need ` +
        `${4 * (c.gamma + 1) * vocab} bytes, over ${limit}`,
    );
  }
}

/** `--early-exit` below the preset's target depth; extra blocks only with an exit head. */
function checkEarlyExit(c: RunConfig, E: (...f: string[]) => new (m: string) => Error): void {
  const depth = PRESETS[c.preset].target.depth;
  if (c.earlyExit >= depth) {
    throw new (E("early-exit", "preset"))(
      `--early-exit "${c.earlyExit}" must be below the target's depth ${depth} (preset ` +
        `${c.preset}): the exit head reads the stream after that many of its layers`,
    );
  }
  if (c.earlyExitExtraBlocks > 0 && c.earlyExit === 0) {
    throw new (E("early-exit-extra-blocks", "early-exit"))(
      `--early-exit-extra-blocks "${c.earlyExitExtraBlocks}" needs --early-exit K (the exit ` +
        `head the blocks lead to)`,
    );
  }
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
  const { preset, data, skipNonFinite, runDir: _, distill, draftThreshold, ...numbers } = config;
  return {
    ...Object.fromEntries(Object.entries(numbers).map(([k, x]) => [flagName(k), x])),
    preset,
    ...(data !== undefined ? { data } : {}),
    // only when on: a run without it saves the same flags as before distillation existed
    ...(distill ? { distill: distill.weight, "distill-temperature": distill.temperature } : {}),
    ...(draftThreshold !== undefined ? { "draft-threshold": draftThreshold } : {}),
    "skip-nonfinite": skipNonFinite,
  };
}

/**
 * Parses a numeric flag's value: plain decimal digits for an integer flag (no sign, hex, octal,
 * exponent or spaces: `0x10`, `1e3`, `+5` are refused), a decimal number (exponent allowed, as
 * `1e-4`) otherwise, within the flag's range ({@link NUMBER_FLAGS}).
 *
 * @param name the flag, without `--`
 * @param raw its value as written; undefined gives `fallback`
 * @param fallback the value when absent
 * @param what how the error names it (default `--name`)
 * @param E the error class (default {@link UsageError})
 * @returns the number
 * @throws UsageError (or `E`) naming the flag, the value (quoted) and the range
 */
export function num(
  name: string,
  raw: string | undefined,
  fallback: number,
  what = `--${name}`,
  E: new (m: string) => Error = UsageError,
): number {
  if (raw === undefined) return fallback;
  const f = NUMBER_FLAGS[name];
  if (!f) throw new Error(`specdec: --${name} is not a numeric flag`);
  const syntax = f.int ? /^[0-9]+$/ : /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/;
  const v = Number(raw), got = `got ${JSON.stringify(raw)}`;
  const form = f.int ? "plain decimal digits: no sign, hex or exponent" : "a decimal number";
  if (!syntax.test(raw) || !(v >= f.min)) {
    throw new E(
      f.int
        ? `${what} must be an integer ≥ ${f.min}, ${got} (${form}; at most ${f.max}: ${f.why})`
        : syntax.test(raw) && v > 0
        ? `${what} must be ≥ ${f.min}, ${got} (${f.why})`
        : `${what} must be > 0, ${got} (${form} such as 1e-4, at most ${f.max}: ${f.why})`,
    );
  }
  if (v > f.max) throw new E(`${what} must be ≤ ${f.max}, ${got} (${f.why})`);
  return v;
}
