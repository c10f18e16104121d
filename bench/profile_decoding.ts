/**
 * Where a decode step's GPU time goes: times each part of one base decoding step and one
 * speculative decoding step with timestamp queries, on the engines {@link baseDecodingEngine}
 * and {@link speculativeDecodingEngine} build (the very dispatches the decoders run).
 *
 * `XDG_RUNTIME_DIR=/tmp deno run -A bench/profile_decoding.ts [--gamma 5] [--batch 1]
 * [--prompt 32] [--seqLen 128] [--reps 3] [--target t.safetensors --draft d.safetensors]
 * [--json out.json]`
 *
 * Three measurements of each decode (prefill, then steps until every row finished):
 * - **whole step**: each step in one pass, as the decoders encode it (the timer is read after
 *   every step): the real GPU time per step. Base and speculative decodes alternate, `reps`
 *   times each, and the fastest of each is kept, so a busy machine biases both alike;
 * - **parts**: one pass per part of the step (draft forwards, draft sampling, the target's
 *   verification forward, acceptance; base: the forward and sampling);
 * - **dispatches**: in the middle of a decode, each dispatch of a step encoded 10 times in one
 *   timed pass (the best of `reps` rounds over the whole step, the state restored before
 *   each), grouped by part and, inside forwards, by kind (matmuls, attention, norms, logits…):
 *   the steady cost of each dispatch, fixed cost included, without the cost of a pass per
 *   dispatch. The per-dispatch sums give a second, more repeatable estimate of the ratio.
 *
 * Then one-pass forwards of the target (n = 1 and n = γ + 1) and the draft (n = 1), alternated,
 * give Leviathan's cost ratio c, and the measured speedup is compared with the predicted one.
 * With α from the measured acceptance, Leviathan's expected tokens per step equal the measured
 * ones, so their ratio is `t_base · (γ·c + 1) / t_spec` whatever the acceptance: randomly
 * initialised models (the default; target dim 128, depth 4, heads 4, dimHead 32, draft depth 1,
 * V = 256) profile the step as well as trained ones.
 *
 * @module
 */
import { type Dispatch, type Gpu, requestGpu } from "../kernels/gpu.ts";
import { Decoder } from "../model/decoder.ts";
import type { DecoderConfig } from "../model/config.ts";
import {
  baseDecoding,
  baseDecodingEngine,
  type DecodingEngine,
  speculativeDecoding,
  speculativeDecodingEngine,
} from "../model/decoding.ts";
import { stateOffsets } from "../kernels/decode_state.ts";
import { type ProfileRow, profileTable } from "./profile_table.ts";

/** The profile of one decode. */
export interface DecodeProfile {
  /** Steps run until every row finished. */
  steps: number;
  /** Generated tokens per row per step. */
  tokensPerStep: number;
  /** Mean GPU ms per step, each step in one pass (the real cost). */
  stepMs: number;
  /** Mean GPU ms per step as the sum of one pass per part. */
  partsMs: number;
  /** Dispatches per step. */
  dispatches: number;
  /** Per part, one pass per part. */
  parts: ProfileRow[];
  /** Per part and kind of dispatch, one pass per dispatch. */
  detail: ProfileRow[];
}

/** Command-line flags: `--name value`. */
function flag(name: string, fallback: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
}

/** The kind of a dispatch inside a forward, from its label and its place (logits come last). */
function kind(d: Dispatch, last: boolean): string {
  const l = d.label;
  if (l.startsWith("gemv") || l.startsWith("matmul")) return last ? "logits" : "matmuls";
  if (l.startsWith("rmsNorm")) return "norms";
  if (l.startsWith("rotary") || l.startsWith("kvWrite")) return "rotary + kvWrite";
  if (l.startsWith("attention")) return "attention";
  if (l.startsWith("gelu")) return "gelu";
  if (l.startsWith("embedding")) return "embedding";
  if (l.startsWith("fusedLinear norm none")) return "logits";
  if (l.includes("rotaryKv") && l.endsWith(" embed")) {
    return "embedding + norm + qkv + rotary + kvWrite";
  }
  if (l.includes("rotaryKv")) return "norm + qkv + rotary + kvWrite";
  if (l.includes("biasGelu")) return "norm + ffIn + gelu";
  if (l.startsWith("fusedLinear accumulate")) return "matmuls";
  return l;
}

/**
 * Timestamps of up to `capacity` passes, read back together: GpuTimer only gives their sum, and
 * the profile needs each pass's own time.
 */
class PassTimer {
  readonly #gpu: Gpu;
  readonly #set: GPUQuerySet;
  readonly #buf: GPUBuffer;
  readonly #capacity: number;
  #used = 0;
  /** Whether each pass since the last read is the empty one opening a run. */
  #opens: boolean[] = [];

  constructor(gpu: Gpu, capacity: number) {
    this.#gpu = gpu;
    this.#capacity = 2 * capacity; // each run opens with an empty pass
    this.#set = gpu.device.createQuerySet({ type: "timestamp", count: 2 * this.#capacity });
    this.#buf = gpu.buffer("profile timestamps", 16 * this.#capacity, 0x200 | 0x4); // QUERY_RESOLVE|COPY_SRC
  }

  /**
   * Encodes `groups` as one timed pass each, in one submission, after an empty timed pass: each
   * group's time is from the previous pass's end timestamp to its own. Not its own end − begin:
   * on lavapipe, in a command buffer that touches textures (the texture path of the decode
   * kernels), each pass's work runs before its beginning timestamp is written (measured: passes
   * of ~0.02 ms with the work between them), so only the ends bracket it.
   */
  run(groups: Dispatch[][]): void {
    if (this.#used + groups.length + 1 > this.#capacity) throw new Error("PassTimer is full");
    const enc = this.#gpu.device.createCommandEncoder({ label: "profile" });
    for (const [k, g] of [[], ...groups].entries()) {
      const i = this.#used++;
      this.#opens.push(k === 0);
      const pass = enc.beginComputePass({
        label: "profile",
        timestampWrites: {
          querySet: this.#set,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      this.#gpu.encode(pass, g);
      pass.end();
    }
    enc.resolveQuerySet(this.#set, 0, 2 * this.#used, this.#buf, 0);
    this.#gpu.device.queue.submit([enc.finish()]);
  }

  /** Milliseconds of each group run since the last read, in order; resets. */
  async read(): Promise<number[]> {
    const n = this.#used, opens = this.#opens;
    this.#used = 0;
    this.#opens = [];
    if (n === 0) return [];
    const raw = new BigUint64Array(await this.#gpu.read(this.#buf, 16 * n));
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      if (opens[i]) continue;
      const d = raw[2 * i + 1] - raw[2 * i - 1];
      out.push(d > 0n ? Number(d) / 1e6 : 0);
    }
    return out;
  }

  /** Frees the query set and buffer. */
  destroy(): void {
    this.#set.destroy();
    this.#buf.destroy();
  }
}

type Mode = "whole" | "parts";

/**
 * Runs a whole decode (prefill, then steps until every row finished), each step encoded per
 * `mode`, and returns the GPU ms of each timed group summed over steps, keyed by group index.
 */
async function decode(
  engine: DecodingEngine,
  mode: Mode,
  timer: PassTimer,
): Promise<{ steps: number; ms: number[]; tokens: number }> {
  const { gpu, layout, state } = engine;
  const groups: Dispatch[][] = mode === "whole"
    ? [engine.step]
    : engine.parts.map((p) => p.dispatches);
  const ms = new Array<number>(groups.length).fill(0);
  gpu.run("profile prefill", engine.prefill);
  const off = stateOffsets(layout);
  let steps = 0;
  while (true) {
    timer.run(groups);
    steps++;
    (await timer.read()).forEach((t, i) => ms[i] += t);
    const pos = await gpu.readU32(state, layout.batch, off.pos);
    if (pos.every((p) => p >= layout.seqLen)) break;
  }
  const tokens = layout.batch * (layout.seqLen - engine.promptLen);
  return { steps, ms, tokens };
}

/**
 * Steady-state GPU ms of each dispatch of a step (in step order): the decode runs to its middle,
 * then each dispatch is encoded `reps` times in one timed pass (the best of `rounds` rounds over
 * the step, the fastest try of each dispatch kept), with the state
 * restored before each try so that kernels which advance it (sampling, acceptance) repeat the
 * same work.
 */
async function steadyState(
  engine: DecodingEngine,
  reps: number,
  rounds: number,
): Promise<number[]> {
  const { gpu, layout, state } = engine;
  const off = stateOffsets(layout);
  const timer = new PassTimer(gpu, 4);
  const snapshot = gpu.buffer("profile state snapshot", state.size);
  const copy = (from: GPUBuffer, to: GPUBuffer) => {
    const enc = gpu.device.createCommandEncoder({ label: "profile state copy" });
    enc.copyBufferToBuffer(from, 0, to, 0, state.size);
    gpu.device.queue.submit([enc.finish()]);
  };
  gpu.run("profile prefill", engine.prefill);
  const mid = engine.promptLen + ((layout.seqLen - engine.promptLen) >> 1);
  while (true) {
    gpu.run("profile step", engine.step);
    const pos = await gpu.readU32(state, layout.batch, off.pos);
    if (Math.min(...pos) >= mid) break;
  }
  copy(state, snapshot);
  // rounds over the whole step, keeping each dispatch's best: a busy spell of the machine then
  // hits a different dispatch in each round instead of all tries of one
  const out = new Array<number>(engine.step.length).fill(Infinity);
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < engine.step.length; i++) {
      const d = engine.step[i];
      copy(snapshot, state);
      timer.run([new Array<Dispatch>(reps).fill(d)]);
      out[i] = Math.min(out[i], (await timer.read())[0] / reps);
      copy(snapshot, state);
      gpu.run("profile dispatch", [d]); // the next dispatch sees this one's output once
    }
  }
  snapshot.destroy();
  timer.destroy();
  return out;
}

/** Best of `reps` whole decodes of each engine factory, alternating between them. */
async function wholeSteps(
  gpu: Gpu,
  makers: (() => DecodingEngine)[],
  reps: number,
): Promise<{ steps: number; stepMs: number; tokensPerStep: number }[]> {
  const timer = new PassTimer(gpu, 1);
  const best = makers.map(() => ({ steps: 0, stepMs: Infinity, tokensPerStep: 0 }));
  for (let r = 0; r <= reps; r++) { // round 0 warms up: pipelines, caches
    for (let m = 0; m < makers.length; m++) {
      const e = makers[m]();
      try {
        const d = await decode(e, "whole", timer);
        const stepMs = d.ms[0] / d.steps;
        if (r > 0 && stepMs < best[m].stepMs) {
          best[m] = { steps: d.steps, stepMs, tokensPerStep: d.tokens / e.layout.batch / d.steps };
        }
      } finally {
        e.destroy();
      }
    }
  }
  timer.destroy();
  return best;
}

/** The parts and per-dispatch profile of one engine factory. */
async function profile(
  make: () => DecodingEngine,
  whole: { steps: number; stepMs: number; tokensPerStep: number },
  rounds: number,
): Promise<DecodeProfile> {
  const e = make();
  const timer = new PassTimer(e.gpu, e.parts.length);
  let parts: { steps: number; ms: number[] }, steady: number[];
  try {
    parts = await decode(e, "parts", timer);
  } finally {
    e.destroy();
    timer.destroy();
  }
  const e2 = make();
  try {
    steady = await steadyState(e2, 10, rounds);
  } finally {
    e2.destroy();
  }
  const partRows = new Map<string, ProfileRow>();
  e.parts.forEach((p, i) => {
    const row = partRows.get(p.name) ?? { name: p.name, ms: 0, dispatches: 0 };
    row.ms += parts.ms[i] / parts.steps;
    row.dispatches += p.dispatches.length;
    partRows.set(p.name, row);
  });
  const detail = new Map<string, ProfileRow>();
  let k = 0;
  for (const p of e.parts) {
    const forward = p.name.includes("forward");
    p.dispatches.forEach((d, j) => {
      const name = forward ? `${p.name} / ${kind(d, j === p.dispatches.length - 1)}` : p.name;
      const row = detail.get(name) ?? { name, ms: 0, dispatches: 0 };
      row.ms += steady[k++];
      row.dispatches++;
      detail.set(name, row);
    });
  }
  return {
    ...whole,
    partsMs: parts.ms.reduce((a, b) => a + b, 0) / parts.steps,
    dispatches: e.step.length,
    parts: [...partRows.values()],
    detail: [...detail.values()],
  };
}

/**
 * GPU ms of one-pass forwards (each plan `reps` times in one pass, per forward), alternating
 * between the plans, best of 5 rounds each: `[model, n]` at position `at` for `B` rows.
 */
async function forwardsMs(
  plans: [Decoder, number][],
  B: number,
  at: number,
  reps: number,
): Promise<number[]> {
  const gpu = plans[0][0].gpu;
  const timer = new PassTimer(gpu, 1);
  const built = plans.map(([model, n]) => {
    const cache = model.createCache(B, at + n + 1);
    const plan = model.forwardPlan(cache, n);
    gpu.write(plan.start, new Uint32Array(B).fill(at));
    const all: Dispatch[] = [];
    for (let r = 0; r < reps; r++) all.push(...plan.dispatches);
    return { cache, all };
  });
  const best = plans.map(() => Infinity);
  for (let round = 0; round <= 5; round++) {
    for (let i = 0; i < built.length; i++) {
      timer.run([built[i].all]);
      const ms = (await timer.read())[0] / reps;
      if (round > 0) best[i] = Math.min(best[i], ms);
    }
  }
  for (const b of built) b.cache.destroy();
  timer.destroy();
  return best;
}

/** A command-line string flag, or undefined. */
function textFlag(name: string): string | undefined {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

if (import.meta.main) {
  const gpu = await requestGpu();
  const gamma = flag("gamma", 5), B = flag("batch", 1), P = flag("prompt", 32);
  const L = flag("seqLen", 128), reps = flag("reps", 3);
  const maxSeqLen = L + gamma + 1;
  const [tPath, dPath] = [textFlag("target"), textFlag("draft")];
  let target: Decoder, draft: Decoder;
  if (tPath && dPath) {
    target = await Decoder.fromSafetensors(gpu, await Deno.readFile(tPath), {
      maxSeqLen,
      label: "target",
      source: tPath,
    });
    draft = await Decoder.fromSafetensors(gpu, await Deno.readFile(dPath), {
      maxSeqLen,
      label: "draft",
      source: dPath,
    });
  } else {
    const tcfg: DecoderConfig = { numTokens: 256, dim: 128, depth: 4, heads: 4, dimHead: 32 };
    target = Decoder.create(gpu, { ...tcfg, maxSeqLen }, { seed: 1, label: "target" });
    draft = Decoder.create(gpu, { ...tcfg, depth: 1, maxSeqLen }, { seed: 2, label: "draft" });
  }
  const V = target.config.numTokens;
  const prompt = Array.from(
    { length: B },
    (_, b) => Array.from({ length: P }, (_, i) => (b * 13 + i * 5) % V),
  );
  const shape = (m: Decoder) => {
    const c = m.config;
    return `dim ${c.dim} depth ${c.depth} heads ${c.heads} dimHead ${c.dimHead}`;
  };
  console.log(
    `adapter: ${gpu.adapterName}; target ${shape(target)}, draft ${shape(draft)}, V ${V}; ` +
      `B ${B}, prompt ${P}, seqLen ${L}, gamma ${gamma}\n`,
  );
  // the fixed cost of a timed pass
  const empty = new PassTimer(gpu, 32);
  empty.run(Array.from({ length: 32 }, () => []));
  const emptyMs = (await empty.read()).reduce((a, b) => a + b, 0) / 32;
  empty.destroy();

  const makeBase = () => baseDecodingEngine(target, prompt, L, { seed: 7 });
  const makeSpec = () => speculativeDecodingEngine(target, draft, prompt, L, { seed: 7, gamma });
  const [wBase, wSpec] = await wholeSteps(gpu, [makeBase, makeSpec], reps);
  const base = await profile(makeBase, wBase, reps);
  const spec = await profile(makeSpec, wSpec, reps);
  const mid = P + ((L - P) >> 1);
  const [t1, tG, d1] = await forwardsMs(
    [[target, 1], [target, gamma + 1], [draft, 1]],
    B,
    mid,
    5,
  );
  const c = d1 / t1;

  for (const [name, p] of [["base step", base], ["speculative step", spec]] as const) {
    console.log(profileTable(`${name}: one pass per part (mean over ${p.steps} steps)`, p.parts));
    console.log(
      `  whole step in one pass (best of ${reps}): ${p.stepMs.toFixed(3)} ms, ${p.dispatches} ` +
        `dispatches, ${p.tokensPerStep.toFixed(2)} tokens/step → ${
          (p.stepMs / p.tokensPerStep).toFixed(3)
        } ms/token\n`,
    );
    console.log(
      profileTable(
        `${name}: each dispatch ×10 in one pass, best of ${reps} rounds, mid-decode (empty pass ${
          emptyMs.toFixed(3)
        } ms)`,
        p.detail,
      ),
    );
    console.log("");
  }
  const measured = (base.stepMs / base.tokensPerStep) / (spec.stepMs / spec.tokensPerStep);
  const predicted = spec.tokensPerStep / (gamma * c + 1);
  console.log(
    `forwards at position ${mid} (one pass, best of 5): target n=1 ${t1.toFixed(3)} ms, ` +
      `target n=${gamma + 1} ${tG.toFixed(3)} ms (×${(tG / t1).toFixed(2)}), ` +
      `draft n=1 ${d1.toFixed(3)} ms → c = ${c.toFixed(3)}`,
  );
  console.log(
    `Leviathan step ≈ t_base·(γc + 1) = ${(base.stepMs * (gamma * c + 1)).toFixed(3)} ms; ` +
      `measured ${spec.stepMs.toFixed(3)} ms`,
  );
  console.log(
    `speedup: measured ${measured.toFixed(3)}×, predicted ${predicted.toFixed(3)}× ` +
      `(accepted ${(spec.tokensPerStep - 1).toFixed(2)}/${gamma}) → ${
        (100 * measured / predicted).toFixed(0)
      }% of predicted`,
  );
  // The same comparison from the steady per-dispatch costs (more repeatable on a busy machine)
  const sum = (rows: ProfileRow[], prefix = "") =>
    rows.filter((r) => r.name.startsWith(prefix)).reduce((a, r) => a + r.ms, 0);
  const sBase = sum(base.detail), sTarget1 = sum(base.detail, "target forward");
  const sDraft1 = gamma > 1 ? sum(spec.detail, "draft forward n=1") / (gamma - 1) : NaN;
  const sSpec = sum(spec.detail), sVerify = sum(spec.detail, "target forward");
  const sc = sDraft1 / sTarget1;
  console.log(
    `steady per-dispatch sums: base step ${sBase.toFixed(3)} ms (target forward ` +
      `${sTarget1.toFixed(3)}), draft forward n=1 ${sDraft1.toFixed(3)} → c = ${sc.toFixed(3)}; ` +
      `verification n=${gamma + 1} ${sVerify.toFixed(3)} ms (×${
        (sVerify / sTarget1).toFixed(2)
      }); ` +
      `speculative step ${sSpec.toFixed(3)} ms vs t_base·(γc + 1) = ` +
      `${(sBase * (gamma * sc + 1)).toFixed(3)} ms → ${
        (100 * sBase * (gamma * sc + 1) / sSpec).toFixed(0)
      }% of predicted`,
  );
  // whole decodes: dispatches and readbacks per generated token
  const perToken: Record<string, { dispatches: number; readbacks: number }> = {};
  for (
    const [name, p, run] of [
      ["base", base, () => baseDecoding(target, prompt, L, { seed: 7 })],
      [
        "speculative",
        spec,
        () => speculativeDecoding(target, draft, prompt, L, { seed: 7, gamma }),
      ],
    ] as const
  ) {
    const before = gpu.readbacks;
    const r = await run();
    const tokens = r.tokens.reduce((a, t) => a + t.length, 0) / B;
    perToken[name] = {
      dispatches: p.dispatches / p.tokensPerStep,
      readbacks: (gpu.readbacks - before) / tokens,
    };
    console.log(
      `${name} decoding: ${p.dispatches} dispatches per step, ${
        perToken[name].dispatches.toFixed(1)
      } per generated token, ${perToken[name].readbacks.toFixed(3)} readbacks per token ` +
        `(${tokens} tokens per row), GPU ${(p.stepMs / p.tokensPerStep).toFixed(3)} ms per token`,
    );
  }
  const fused = Deno.env.get("SPECDEC_FUSED") === "0" ? "unfused" : "fused";
  console.log(`path: ${fused} (SPECDEC_FUSED=0 selects the unfused kernels)`);
  const out = textFlag("json");
  if (out) {
    await Deno.writeTextFile(
      out,
      JSON.stringify(
        { path: fused, base, spec, t1, tG, d1, c, measured, predicted, emptyMs, perToken },
        null,
        2,
      ),
    );
  }
}
