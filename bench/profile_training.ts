/**
 * Where a training step's GPU time goes: times one {@link Trainer} step (forward, loss,
 * backward, gradient clipping, Adam) of a preset's target and draft with timestamp queries, on
 * the very dispatches `Trainer.step` encodes.
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/profile_training.ts [--preset tiny|small|seed]
 * [--model target|draft|both] [--batch B] [--seqLen n] [--reps 3] [--repeat 3] [--json out.json]`
 *
 * `--batch` and `--seqLen` default to the preset's training batch and seqLen + 1 (a window of
 * seqLen + 1 bytes gives seqLen predictions, as train.ts feeds them); one micro-batch. Three
 * measurements, each the best of `reps` rounds (a busy machine then biases every row alike):
 * - **whole step**: `Trainer.step` as train.ts runs it (one pass for forward + loss + backward,
 *   one for clip + Adam), timed by a {@link GpuTimer};
 * - **phases**: the same dispatches, one pass per phase (forward, loss, backward, clip, Adam);
 * - **dispatches**: each dispatch `repeat` times in a pass of its own (all passes of a round in
 *   one submission), grouped by kind: matmuls by layout (NT: x·Wᵀ, NN: dY·W, TN: dYᵀ·X), attention
 *   forward/backward, norms, embedding, loss, elementwise, clipping, Adam. The pass's fixed cost
 *   (an empty pass, printed) is not subtracted.
 *
 * @module
 */
import { type Dispatch, type Gpu, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { Decoder } from "../model/decoder.ts";
import { type DecoderConfig, PRESETS } from "../model/config.ts";
import { Trainer } from "../model/trainer.ts";
import { type ProfileRow, profileTable } from "./profile_table.ts";

/** The profile of one model's training step. */
export interface TrainingProfile {
  /** Which model (`target depth 2`…). */
  model: string;
  /** GPU ms of the whole step as Trainer.step encodes it (best of reps). */
  stepMs: number;
  /** Dispatches per step. */
  dispatches: number;
  /** Per phase, one pass per phase. */
  phases: ProfileRow[];
  /** Per kind of dispatch, one pass per dispatch (× repeat), sorted by time. */
  kinds: ProfileRow[];
  /** The most expensive single dispatches. */
  top: ProfileRow[];
}

/** Command-line flags: `--name value`. */
function flag(name: string): string | undefined {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

/** The kind of a dispatch, from its label and its phase. */
export function kind(label: string, phase: string): string {
  const m = /^matmul(NT|NN|TN)/.exec(label) ?? /^gemv(NT)/.exec(label);
  if (m) return `matmul ${m[1]}`;
  if (label.startsWith("attentionBackward")) return "attention backward";
  if (label.startsWith("attention") || label.startsWith("kvWrite")) return "attention forward";
  if (label.startsWith("rotary")) return phase === "backward" ? "rotary backward" : "rotary";
  if (label.startsWith("rmsNormBackward")) return "norm backward";
  if (label.startsWith("rmsNorm")) return "norm forward";
  if (label.startsWith("embeddingBackward")) return "embedding backward";
  if (label.startsWith("embedding")) return "embedding forward";
  if (label.startsWith("crossEntropy") || label.startsWith("sumLoss")) return "loss";
  if (label.startsWith("geluBackward")) return "gelu backward";
  if (label.startsWith("sumRows")) return "bias grad (sumRows)";
  if (/^(gelu|add)\b/.test(label)) return "elementwise";
  if (phase === "clip") return "clipping";
  if (phase === "adam") return "adam";
  return label;
}

/** The step's dispatches split into phases, in order. */
function phases(trainer: Trainer): { name: string; dispatches: Dispatch[] }[] {
  const lp = trainer.model.trainingPlan(trainer.batch, trainer.seqLen);
  const fwd = lp.plan.dispatches.length;
  const opt = trainer.optimizer.stepDispatches();
  const firstUpdate = opt.findIndex((d) => d.label.startsWith("adam update"));
  return [
    { name: "forward", dispatches: lp.dispatches.slice(0, fwd) },
    { name: "loss", dispatches: lp.dispatches.slice(fwd) },
    { name: "backward", dispatches: lp.backward! },
    { name: "clip", dispatches: opt.slice(0, firstUpdate) },
    { name: "adam", dispatches: opt.slice(firstUpdate) },
  ];
}

/**
 * Times each group in a pass of its own, all in one submission, and returns each pass's ms:
 * from the previous pass's end timestamp to its own (an empty pass opens the list). Not its own
 * end − begin: on lavapipe a pass whose dispatches bind a storage texture (the textured GEMMs of
 * kernels/gemm_texture.ts) runs them before its beginning timestamp is written (measured: each
 * such pass spans ~0.02 ms, the work falls between it and the pass before), so only the ends
 * bracket the work on both kinds of passes.
 */
async function timePasses(gpu: Gpu, groups: Dispatch[][]): Promise<number[]> {
  const all = [[], ...groups];
  const set = gpu.device.createQuerySet({ type: "timestamp", count: 2 * all.length });
  const buf = gpu.buffer("profile timestamps", 16 * all.length, 0x200 | 0x4);
  const enc = gpu.device.createCommandEncoder({ label: "profile" });
  all.forEach((g, i) => {
    const pass = enc.beginComputePass({
      label: "profile",
      timestampWrites: {
        querySet: set,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    });
    gpu.encode(pass, g);
    pass.end();
  });
  enc.resolveQuerySet(set, 0, 2 * all.length, buf, 0);
  gpu.device.queue.submit([enc.finish()]);
  const raw = new BigUint64Array(await gpu.read(buf, 16 * all.length));
  set.destroy();
  buf.destroy();
  return groups.map((_, i) => {
    const d = raw[2 * i + 3] - raw[2 * i + 1];
    return d > 0n ? Number(d) / 1e6 : 0;
  });
}

/** Profiles one model's training step. */
async function profileModel(
  gpu: Gpu,
  name: string,
  cfg: DecoderConfig,
  B: number,
  n: number,
  reps: number,
  repeat: number,
): Promise<TrainingProfile> {
  const model = Decoder.create(gpu, { ...cfg, maxSeqLen: n }, { seed: 1 });
  try {
    const trainer = new Trainer(model, { batch: B, seqLen: n, lr: 1e-4, clipNorm: 0.5 });
    const rows = Array.from(
      { length: B },
      (_, b) => Array.from({ length: n }, (_, i) => (b * 31 + i * 7) % cfg.numTokens),
    );
    const timer = new GpuTimer(gpu, 4);
    let stepMs = Infinity;
    for (let r = 0; r <= reps; r++) { // round 0 warms up (pipelines, caches)
      await trainer.result(trainer.step([rows], timer));
      const ms = await timer.read();
      if (r > 0) stepMs = Math.min(stepMs, ms);
    }
    timer.destroy();
    const ph = phases(trainer);
    const phaseMs = ph.map(() => Infinity);
    const flat = ph.flatMap((p) => p.dispatches.map((d) => ({ d, phase: p.name })));
    const each = flat.map(() => Infinity);
    for (let r = 0; r < reps; r++) {
      trainer.optimizer.prepareStep();
      (await timePasses(gpu, ph.map((p) => p.dispatches)))
        .forEach((ms, i) => phaseMs[i] = Math.min(phaseMs[i], ms));
      trainer.optimizer.prepareStep();
      const groups = flat.map(({ d }) => new Array<Dispatch>(repeat).fill(d));
      (await timePasses(gpu, groups))
        .forEach((ms, i) => each[i] = Math.min(each[i], ms / repeat));
    }
    const kinds = new Map<string, ProfileRow>();
    const singles = new Map<string, ProfileRow>();
    flat.forEach(({ d, phase }, i) => {
      const k = kind(d.label, phase);
      const row = kinds.get(k) ?? { name: k, ms: 0, dispatches: 0 };
      row.ms += each[i];
      row.dispatches++;
      kinds.set(k, row);
      const [x, y, z] = d.workgroups;
      const single = `${phase}: ${d.label} (${x * y * z} wg)`;
      const s = singles.get(single) ?? { name: single, ms: 0, dispatches: 0 };
      s.ms += each[i];
      s.dispatches++;
      singles.set(s.name, s);
    });
    const byTime = (a: ProfileRow, b: ProfileRow) => b.ms - a.ms;
    return {
      model: name,
      stepMs,
      dispatches: flat.length,
      phases: ph.map((p, i) => ({ name: p.name, ms: phaseMs[i], dispatches: p.dispatches.length })),
      kinds: [...kinds.values()].sort(byTime),
      top: [...singles.values()].sort(byTime).slice(0, 12),
    };
  } finally {
    model.destroy();
  }
}

if (import.meta.main) {
  const presetName = flag("preset") ?? "tiny";
  const preset = PRESETS[presetName];
  if (!preset) {
    throw new Error(
      `profile_training: unknown --preset "${presetName}" (${Object.keys(PRESETS).join(", ")})`,
    );
  }
  const B = Number(flag("batch") ?? preset.training.batch);
  const n = Number(flag("seqLen") ?? preset.training.seqLen + 1);
  const reps = Number(flag("reps") ?? 3), repeat = Number(flag("repeat") ?? 3);
  for (const [k, v] of [["batch", B], ["seqLen", n], ["reps", reps], ["repeat", repeat]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`profile_training: --${k} must be a positive integer, got ${v}`);
    }
  }
  const which = flag("model") ?? "both";
  if (!["target", "draft", "both"].includes(which)) {
    throw new Error(
      `profile_training: --model must be "target", "draft" or "both", got "${which}"`,
    );
  }
  const gpu = await requestGpu();
  if (!gpu.hasTimestamps) throw new Error("profile_training: the adapter has no timestamp-query");
  console.log(
    `adapter: ${gpu.adapterName}; preset ${presetName}, batch ${B} × seqLen ${n} (one ` +
      `micro-batch), clip 0.5, Adam; best of ${reps} rounds, each dispatch ×${repeat} per pass`,
  );
  const empty = await timePasses(gpu, Array.from({ length: 16 }, () => []));
  console.log(`empty pass: ${(empty.reduce((a, b) => a + b, 0) / 16).toFixed(3)} ms\n`);
  const out: TrainingProfile[] = [];
  for (const role of ["target", "draft"] as const) {
    if (which !== "both" && which !== role) continue;
    const cfg = preset[role];
    const name =
      `${role} dim ${cfg.dim} depth ${cfg.depth} heads ${cfg.heads} dimHead ${cfg.dimHead}`;
    const p = await profileModel(gpu, name, cfg, B, n, reps, repeat);
    out.push(p);
    console.log(
      `== ${name}: whole step (Trainer.step) ${p.stepMs.toFixed(3)} ms GPU, ` +
        `${p.dispatches} dispatches, ${(B * (n - 1) / p.stepMs * 1000).toFixed(0)} tokens/s`,
    );
    console.log(profileTable("phases (one pass each)", p.phases, ""));
    console.log(profileTable("kinds (each dispatch in its own pass), by time", p.kinds, ""));
    console.log(profileTable("costliest dispatches", p.top, ""));
    console.log("");
  }
  const json = flag("json");
  if (json) await Deno.writeTextFile(json, JSON.stringify(out, null, 2));
}
