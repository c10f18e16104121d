/**
 * The run record, one plain object that every step of train.ts reads and updates, and the steps
 * around the training loop: open or resume a run, save a checkpoint, write the plot, stop on
 * Ctrl-C, and the closing summary.
 *
 * A run folder holds metrics.jsonl, loss.svg and checkpoint/ (target and draft weights, their
 * optimizer states, and state.json: the steps done, the flags and the samplers' states), so that a
 * resumed run continues exactly: the same batches and the same losses as one that never stopped.
 *
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import { PRESETS } from "../model/config.ts";
import { Trainer } from "../model/trainer.ts";
import { splitCorpus, WindowSampler } from "../data/corpus.ts";
import { atomicWrite, type CheckpointHook, findCheckpoint, writeCheckpoint } from "./fsutil.ts";
import { appendMetric, type MetricRecord, type Metrics, openMetrics } from "./metrics.ts";
import { Progress } from "./progress.ts";
import { trainingChart } from "./plot.ts";
import { loadCorpus } from "./train_data.ts";
import { type RunConfig, type SavedArgs, savedArgs } from "./train_options.ts";

/** A training step submitted to the GPU whose losses are not read yet. */
export interface PendingStep {
  /** The step's index. */
  step: number;
  /** The target trainer's result index. */
  target: number;
  /** The draft trainer's result index. */
  draft: number;
}

/** Everything a run is: its config, models, trainers, samplers, metrics and where it stands. */
export interface Run {
  /** The device. */
  gpu: Gpu;
  /** The parsed flags. */
  config: RunConfig;
  /** The target (large) model. */
  target: Decoder;
  /** The draft (small) model. */
  draft: Decoder;
  /** One trainer (Adam, accumulation, clipping) per model. */
  trainers: { target: Trainer; draft: Trainer };
  /** Training windows, validation windows, and the primes of the decoding comparisons. */
  samplers: { train: WindowSampler; val: WindowSampler; gen: WindowSampler };
  /** metrics.jsonl. */
  metrics: Metrics;
  /** The progress bar; {@link log} prints above it. */
  progress: Progress;
  /** Steps done: the index of the next step to run (a checkpoint saves this). */
  step: number;
  /** The step this process started at (0, or the resumed checkpoint's). */
  startStep: number;
  /** When this process started training (performance.now(), ms). */
  startTime: number;
  /** The last step submitted, until its losses are read and recorded. */
  pending?: PendingStep;
  /** Ctrl-C was pressed: stop after the current step. */
  stopping: boolean;
  /** A checkpoint is being written (a second Ctrl-C must not cut it). */
  saving: boolean;
}

/** checkpoint/state.json. */
export interface RunState {
  /** Steps done. */
  step: number;
  /** The run's flags, by flag name. */
  args: SavedArgs;
  /** The samplers' generator states. */
  samplers: { train: number[]; val: number[]; gen: number[] };
}

/** A run folder's saved checkpoint, to resume. */
export interface Checkpoint {
  /** The checkpoint folder. */
  dir: string;
  /** Its state.json. */
  state: RunState;
}

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A value as an error message shows it: JSON, cut short. */
function shown(v: unknown): string {
  const s = v === undefined ? "nothing (the field is missing)" : JSON.stringify(v);
  return s.length > 80 ? s.slice(0, 77) + "..." : s;
}

/**
 * Parses and validates a checkpoint's state.json: an object with a non-negative integer `step`,
 * an object `args` of the saved flags (their values are checked by `runConfig`), and `samplers`
 * `train`, `val` and `gen`, each four unsigned 32-bit words not all zero (xorshift128's all-zero
 * state is a fixed point: it would give the same window forever).
 *
 * @param text the file's contents
 * @param path the file, named in errors
 * @returns the state
 * @throws Error naming the file and the field when the JSON is damaged or a field is missing or
 *   wrong: a damaged state is refused, never trusted or replaced by a fresh start
 */
export function parseRunState(text: string, path: string): RunState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(
      `specdec: "${path}" is not valid JSON (damaged or cut short?): ${(e as Error).message}`,
    );
  }
  const bad = (field: string, want: string, v: unknown) =>
    new Error(`specdec: "${path}": field "${field}" must be ${want}, got ${shown(v)}`);
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw bad("(top level)", "an object { step, args, samplers }", raw);
  }
  const o = raw as Record<string, unknown>;
  if (!Number.isSafeInteger(o.step) || (o.step as number) < 0) {
    throw bad("step", "an integer ≥ 0 (the steps done)", o.step);
  }
  if (o.args === null || typeof o.args !== "object" || Array.isArray(o.args)) {
    throw bad("args", "an object of the run's flags", o.args);
  }
  for (const [k, v] of Object.entries(o.args)) {
    if (!["number", "string", "boolean"].includes(typeof v)) {
      throw bad(`args.${k}`, "a number, a string or true/false", v);
    }
  }
  const s = o.samplers as Record<string, unknown> | null;
  if (s === null || typeof s !== "object" || Array.isArray(s)) {
    throw bad("samplers", "an object { train, val, gen }", s);
  }
  for (const name of ["train", "val", "gen"]) {
    const w = s[name];
    const words = Array.isArray(w) && w.length === 4 &&
      w.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff);
    if (!words) throw bad(`samplers.${name}`, "4 integers from 0 to 4294967295", w);
    if ((w as number[]).every((x) => x === 0)) {
      throw bad(
        `samplers.${name}`,
        "a generator state not all zero (xorshift128 stays at zero forever)",
        w,
      );
    }
  }
  return o as unknown as RunState;
}

/**
 * Reads the checkpoint of a run folder (for `--resume`): its newest complete set (a kill during
 * a save leaves one; see `findCheckpoint`), with state.json validated. Reads only; the next save
 * tidies the folder.
 *
 * @param runDir the run folder
 * @returns the checkpoint folder and its state
 * @throws Error when the folder has no complete checkpoint, or naming state.json and the field
 *   when it is damaged
 */
export async function readCheckpoint(runDir: string): Promise<Checkpoint> {
  const dir = await findCheckpoint(runDir);
  if (!dir) {
    throw new Error(
      `specdec: --resume "${runDir}": no checkpoint/state.json there (not a run folder, or no checkpoint saved yet)`,
    );
  }
  const path = `${dir}/state.json`;
  return { dir, state: parseRunState(await Deno.readTextFile(path), path) };
}

/**
 * Opens a run: loads and splits the corpus, creates the target and draft models (or loads them,
 * their optimizer states and the samplers' states from `resumed`), opens metrics.jsonl and
 * prints a line describing the run.
 *
 * @param gpu the device
 * @param config the run config
 * @param resumed the checkpoint to continue from, if any
 * @returns the run record, at step 0 or the checkpoint's step
 * @throws Error when a new run's folder already holds a run (it is never overwritten)
 */
export async function openRun(gpu: Gpu, config: RunConfig, resumed?: Checkpoint): Promise<Run> {
  const c = config;
  if (!resumed) { // a new run never overwrites another's metrics or checkpoint
    const taken = ["metrics.jsonl", "checkpoint", "checkpoint.old"].filter((f) =>
      existsSync(`${c.runDir}/${f}`)
    );
    if (taken.length) {
      throw new Error(
        `specdec: --run-dir "${c.runDir}" already holds a run (${taken.join(", ")}); continue it ` +
          `with --resume "${c.runDir}", or choose another folder`,
      );
    }
  }
  await Deno.mkdir(c.runDir, { recursive: true });
  const corpus = await loadCorpus(c.data, console.log);
  const window = c.seqLen + 1; // seqLen + 1 bytes give seqLen next-token predictions
  const split = splitCorpus(corpus.bytes, Math.max(window, c.generateLen), corpus.name);

  const maxSeqLen = Math.max(window, c.generateLen) + c.gamma + 2;
  const shapes = PRESETS[c.preset];
  const load = async (name: "target" | "draft") => {
    const path = `${resumed!.dir}/${name}.safetensors`;
    return await Decoder.fromSafetensors(gpu, await Deno.readFile(path), {
      maxSeqLen,
      label: name,
      source: path,
    });
  };
  const target = resumed ? await load("target") : Decoder.create(gpu, {
    ...shapes.target,
    maxSeqLen,
    earlyExitLayer: c.earlyExit,
    earlyExitExtraBlocks: c.earlyExitExtraBlocks,
  }, {
    seed: c.seed * 2 + 1,
    label: "target",
  });
  const { earlyExitLayer: k, earlyExitExtraBlocks: e } = target.config;
  if (k !== c.earlyExit || e !== c.earlyExitExtraBlocks) {
    throw new Error(
      `specdec: the resumed target of ${c.runDir} has earlyExitLayer ${k} and ` +
        `earlyExitExtraBlocks ${e}, but the run says --early-exit ${c.earlyExit} and ` +
        `--early-exit-extra-blocks ${c.earlyExitExtraBlocks}: a run keeps its model's shape`,
    );
  }
  const draft = resumed
    ? await load("draft")
    : Decoder.create(gpu, { ...shapes.draft, maxSeqLen }, { seed: c.seed * 2 + 2, label: "draft" });
  const opts = {
    batch: c.batch,
    seqLen: window,
    accumulate: c.accumulate,
    lr: c.lr,
    clipNorm: c.clip,
    skipNonFinite: c.skipNonFinite,
  };
  const teacher = new Trainer(target, opts);
  // --distill: the draft's step reads the target's logits of the same micro-batches (trainStep
  // steps the target first)
  const distill = c.distill && { teacher, ...c.distill };
  const trainers = { target: teacher, draft: new Trainer(draft, { ...opts, distill }) };
  const samplers = {
    train: new WindowSampler(split.train, window, c.seed * 3 + 1),
    val: new WindowSampler(split.val, window, c.seed * 3 + 2),
    gen: new WindowSampler(split.val, c.primeLen, c.seed * 3 + 3),
  };
  let step = 0;
  if (resumed) {
    step = resumed.state.step;
    samplers.train.state = resumed.state.samplers.train;
    samplers.val.state = resumed.state.samplers.val;
    samplers.gen.state = resumed.state.samplers.gen;
    for (const name of ["target", "draft"] as const) {
      const path = `${resumed.dir}/${name}.optim.safetensors`;
      trainers[name].loadState(await Deno.readFile(path), path);
    }
    console.log(`resuming ${c.runDir} at step ${step}`);
  }
  const millions = (m: Decoder) =>
    ([...m.params.values()].reduce((a, b) => a + b.size / 4, 0) / 1e6).toFixed(2);
  console.log(
    `specdec train: ${gpu.adapterName}; preset ${c.preset}; ` +
      `target ${millions(target)}M params (depth ${target.config.depth}), ` +
      `draft ${millions(draft)}M (depth ${draft.config.depth}); data ${corpus.name}: ` +
      `${split.train.length} train / ${split.val.length} val bytes; run folder ${c.runDir}` +
      (c.distill
        ? `; draft distilled toward the target: (1 − ${c.distill.weight})·CE + ` +
          `${c.distill.weight}·KL at temperature ${c.distill.temperature}`
        : ""),
  );
  const metrics = await openMetrics(
    `${c.runDir}/metrics.jsonl`,
    step,
    resumed ? `${resumed.dir}/state.json` : undefined,
  );
  return {
    gpu,
    config,
    target,
    draft,
    trainers,
    samplers,
    metrics,
    progress: new Progress(c.steps, step, 1), // both losses every step, like train.py
    step,
    startStep: step,
    startTime: performance.now(),
    stopping: false,
    saving: false,
  };
}

/** Prints a line above the progress bar. */
export function log(run: Run, message: string): void {
  run.progress.log(message);
}

/** Appends a record to metrics.jsonl. */
export async function record(run: Run, metric: MetricRecord): Promise<void> {
  await appendMetric(run.metrics, metric);
}

/**
 * Saves a checkpoint of `run.step` steps done (the models, their optimizer states and state.json)
 * as one set that replaces the previous one. A Ctrl-C during the save waits for it to finish.
 * The caller first records the losses of every step the checkpoint holds (no `run.pending`), so
 * that a resume finds metrics.jsonl complete up to the checkpoint.
 *
 * @param run the run
 * @param why said in the log line ("periodic", "Ctrl-C", "end")
 */
export async function saveCheckpoint(run: Run, why: string): Promise<void> {
  if (run.pending) throw new Error("specdec: saveCheckpoint() with a step's losses unrecorded");
  run.saving = true;
  try {
    const state: RunState = {
      step: run.step,
      args: savedArgs(run.config),
      samplers: {
        train: run.samplers.train.state,
        val: run.samplers.val.state,
        gen: run.samplers.gen.state,
      },
    };
    const dir = await writeCheckpoint(run.config.runDir, {
      "target.safetensors": await run.target.toSafetensors(),
      "draft.safetensors": await run.draft.toSafetensors(),
      "target.optim.safetensors": await run.trainers.target.saveState(),
      "draft.optim.safetensors": await run.trainers.draft.saveState(),
      "state.json": JSON.stringify(state, null, 2),
    }, failpoint());
    log(run, `checkpoint (${why}) at step ${run.step} → ${dir}`);
  } finally {
    run.saving = false;
  }
}

/**
 * The checkpoint save's kill switch for tests: with `SPECDEC_KILL_AT=<step>` (a step name of
 * `writeCheckpoint`, as "renamed checkpoint to checkpoint.old"), the process kills itself with
 * SIGKILL right after that step of a save, as a power cut or `kill -9` would.
 */
function failpoint(): CheckpointHook | undefined {
  let at: string | undefined;
  try {
    at = Deno.env.get("SPECDEC_KILL_AT");
  } catch { /* no env permission: no failpoint */ }
  if (!at) return undefined;
  return (step) => {
    if (step === at) Deno.kill(Deno.pid, "SIGKILL");
  };
}

/** Redraws loss.svg from the metrics. */
export async function writePlot(run: Run): Promise<void> {
  await atomicWrite(
    `${run.config.runDir}/loss.svg`,
    trainingChart(run.metrics.records, run.config.preset, run.config.gamma),
  );
}

/**
 * Makes Ctrl-C stop the run after the current step (the caller then saves a checkpoint). A
 * second Ctrl-C exits at once, except during a save, which is never cut short: then the run stops
 * right after it.
 *
 * @param run the run whose `stopping` Ctrl-C sets
 * @returns a function that removes the handler
 */
export function stopOnCtrlC(run: Run): () => void {
  const onSigint = () => {
    if (run.saving) { // never cut a save short: stop right after it
      run.stopping = true;
      return log(run, "saving a checkpoint; stopping right after");
    }
    if (run.stopping) Deno.exit(130);
    run.stopping = true;
  };
  try {
    Deno.addSignalListener("SIGINT", onSigint);
  } catch { /* not supported here */ }
  return () => {
    try {
      Deno.removeSignalListener("SIGINT", onSigint);
    } catch { /* ignore */ }
  };
}

/** Tokens one training step reads, per model. */
export function tokensPerStep(config: RunConfig): number {
  return config.batch * config.accumulate * config.seqLen;
}

/** The closing line: steps, time, throughput, where the files are, how to continue. */
export function summary(run: Run): string {
  const secs = (performance.now() - run.startTime) / 1000;
  const done = run.step - run.startStep;
  const dir = run.config.runDir;
  return `${run.stopping ? "stopped" : "done"}: ${done} steps in ${secs.toFixed(1)} s ` +
    `(${(secs / Math.max(1, done)).toFixed(2)} s/step, ${
      Math.round((done * tokensPerStep(run.config) * 2) / secs)
    } tokens/s over both models); ` +
    `metrics ${run.metrics.path}, plot ${dir}/loss.svg` +
    (run.stopping ? `; continue with --resume ${dir}` : "");
}
