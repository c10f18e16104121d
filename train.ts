/**
 * Trains a target Decoder (depth 10) and a draft Decoder (depth 2) side by side on enwik8, like the
 * reference's train.py, and periodically compares base and speculative decoding, timed on the GPU.
 *
 *   deno run -A train.ts [--preset seed|small|tiny] [--data PATH] [--steps N] … (--help lists all)
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requestGpu } from "./kernels/gpu.ts";
import { GpuTimer } from "./kernels/timer.ts";
import { Decoder } from "./model/decoder.ts";
import { type DecoderConfig, PRESETS } from "./model/config.ts";
import { type StepResult, Trainer } from "./model/trainer.ts";
import { splitCorpus, WindowSampler } from "./data/corpus.ts";
import { baseDecoding, speculativeDecoding } from "./model/decoding.ts";
import { appendJsonl, atomicWrite, exists, findCheckpoint, writeCheckpoint } from "./cli/fsutil.ts";
import { Progress } from "./cli/progress.ts";
import { trainingChart } from "./cli/plot.ts";
import { decodeTokens, FLAGS, num, TRAIN_PRESETS, usage } from "./cli/train_options.ts";
import { loadCorpus } from "./cli/train_data.ts";

interface RunState {
  step: number;
  args: Record<string, number | string | boolean>;
  samplers: { train: number[]; val: number[]; gen: number[] };
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: FLAGS as never,
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${usage()}`);
    Deno.exit(2);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  if (v.help) {
    console.log(usage());
    return;
  }
  const gpu = await requestGpu();
  const resumeDir = v.resume as string | undefined;
  let resumed: RunState | undefined;
  let ckDir = "";
  if (resumeDir) {
    const found = await findCheckpoint(resumeDir);
    if (!found) {
      throw new Error(
        `specdec: --resume ${resumeDir}: no checkpoint/state.json there (not a run folder, or no checkpoint saved yet)`,
      );
    }
    ckDir = found;
    resumed = JSON.parse(await Deno.readTextFile(`${ckDir}/state.json`)) as RunState;
  }
  // flags given now override; otherwise a resumed run keeps its own settings
  const saved = resumed?.args ?? {};
  const pick = (k: string) =>
    (v[k] as string | undefined) ?? (saved[k] !== undefined ? String(saved[k]) : undefined);
  let preset = pick("preset");
  if (preset === undefined) {
    preset = gpu.isSoftware ? "tiny" : "seed";
    if (gpu.isSoftware) {
      console.log(
        `software adapter (${gpu.adapterName}): using --preset tiny so progress shows within minutes; --preset seed forces the reference's full run`,
      );
    }
  }
  if (!(preset in TRAIN_PRESETS)) {
    throw new Error(
      `--preset must be one of ${Object.keys(TRAIN_PRESETS).join(", ")}, got "${preset}"`,
    );
  }
  const P = TRAIN_PRESETS[preset];
  const cfg = {
    steps: num("steps", pick("steps"), P.steps, { int: true, min: 1 }),
    batch: num("batch", pick("batch"), P.batch, { int: true, min: 1 }),
    accumulate: num("accumulate", pick("accumulate"), P.accumulate, { int: true, min: 1 }),
    lr: num("lr", pick("lr"), P.lr),
    clip: num("clip", pick("clip"), P.clip),
    seqLen: num("seq-len", pick("seq-len"), P.seqLen, { int: true, min: 2 }),
    validateEvery: num("validate-every", pick("validate-every"), P.validateEvery, {
      int: true,
      min: 1,
    }),
    generateEvery: num("generate-every", pick("generate-every"), P.generateEvery, {
      int: true,
      min: 1,
    }),
    primeLen: num("prime-len", pick("prime-len"), P.primeLen, { int: true, min: 1 }),
    generateLen: num("generate-len", pick("generate-len"), P.generateLen, { int: true, min: 2 }),
    gamma: num("gamma", pick("gamma"), P.gamma, { int: true, min: 1 }),
    checkpointEvery: num("checkpoint-every", pick("checkpoint-every"), 500, { int: true, min: 1 }),
    seed: num("seed", pick("seed"), 0, { int: true, min: 0 }),
  };
  if (!(cfg.lr > 0)) throw new Error(`--lr must be > 0, got ${cfg.lr}`);
  if (!(cfg.clip > 0)) throw new Error(`--clip must be > 0, got ${cfg.clip}`);
  if (cfg.primeLen >= cfg.generateLen) {
    throw new Error(
      `--prime-len (${cfg.primeLen}) must be shorter than --generate-len (${cfg.generateLen})`,
    );
  }
  const dataPath = pick("data");
  const skipNonFinite = Boolean(v["skip-nonfinite"] ?? saved["skip-nonfinite"]);
  const runDir = resumeDir ?? (v["run-dir"] as string | undefined) ??
    `runs/${new Date().toISOString().replace(/[:]/g, "-").replace(/\..*/, "")}`;
  await Deno.mkdir(runDir, { recursive: true });

  const ui: { progress?: Progress } = {};
  const log = (s: string) => ui.progress ? ui.progress.log(s) : console.log(s);
  const corpus = await loadCorpus(dataPath, console.log);
  const window = cfg.seqLen + 1; // seqLen + 1 bytes give seqLen next-token predictions
  const split = splitCorpus(corpus.bytes, Math.max(window, cfg.generateLen), corpus.name);

  const maxSeqLen = Math.max(window, cfg.generateLen) + cfg.gamma + 2;
  const mk = (c: DecoderConfig, label: string, seed: number) =>
    Decoder.create(gpu, { ...c, maxSeqLen }, { seed, label });
  let target = mk(PRESETS[preset].target, "target", cfg.seed * 2 + 1);
  let draft = mk(PRESETS[preset].draft, "draft", cfg.seed * 2 + 2);
  if (resumed) {
    const load = async (name: string) =>
      await Decoder.fromSafetensors(gpu, await Deno.readFile(`${ckDir}/${name}.safetensors`), {
        maxSeqLen,
        label: name,
        source: `${ckDir}/${name}.safetensors`,
      });
    target = await load("target");
    draft = await load("draft");
  }
  const opts = {
    batch: cfg.batch,
    seqLen: window,
    accumulate: cfg.accumulate,
    lr: cfg.lr,
    clipNorm: cfg.clip,
    skipNonFinite,
  };
  const tTrain = new Trainer(target, opts), dTrain = new Trainer(draft, opts);
  const trainSampler = new WindowSampler(split.train, window, cfg.seed * 3 + 1);
  const valSampler = new WindowSampler(split.val, window, cfg.seed * 3 + 2);
  const genSampler = new WindowSampler(split.val, cfg.primeLen, cfg.seed * 3 + 3);
  let step = 0;
  if (resumed) {
    step = resumed.step;
    trainSampler.state = resumed.samplers.train;
    valSampler.state = resumed.samplers.val;
    genSampler.state = resumed.samplers.gen;
    for (const [t, name] of [[tTrain, "target"], [dTrain, "draft"]] as const) {
      const path = `${ckDir}/${name}.optim.safetensors`;
      t.loadState(await Deno.readFile(path), path);
    }
    console.log(`resuming ${runDir} at step ${step}`);
  }
  // saved with the flags' own names, so a resumed run reads them back like command-line flags
  const flagName = (k: string) => k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
  const args: Record<string, number | string | boolean> = {
    ...Object.fromEntries(Object.entries(cfg).map(([k, x]) => [flagName(k), x])),
    preset,
    ...(dataPath !== undefined ? { data: dataPath } : {}),
    "skip-nonfinite": skipNonFinite,
  };
  const nParams = (m: Decoder) => [...m.params.values()].reduce((a, b) => a + b.size / 4, 0);
  console.log(
    `specdec train: ${gpu.adapterName}; preset ${preset}; target ${
      (nParams(target) / 1e6).toFixed(2)
    }M params (depth ${target.config.depth}), ` +
      `draft ${
        (nParams(draft) / 1e6).toFixed(2)
      }M (depth ${draft.config.depth}); data ${corpus.name}: ` +
      `${split.train.length} train / ${split.val.length} val bytes; run folder ${runDir}`,
  );

  const metricsPath = `${runDir}/metrics.jsonl`;
  const metrics: Record<string, number | string>[] = [];
  if (await exists(metricsPath)) {
    for (const line of (await Deno.readTextFile(metricsPath)).split("\n")) {
      if (!line.trim()) continue;
      const m = JSON.parse(line);
      if (m.step < step || (m.step === step && m.type !== "train")) metrics.push(m);
    }
    await atomicWrite(metricsPath, metrics.map((m) => JSON.stringify(m) + "\n").join(""));
  }
  const record = async (m: Record<string, number | string>) => {
    metrics.push(m);
    await appendJsonl(metricsPath, m);
  };

  let saving = false;
  const save = async (why: string) => {
    saving = true;
    try {
      const state: RunState = {
        step,
        args,
        samplers: { train: trainSampler.state, val: valSampler.state, gen: genSampler.state },
      };
      const dir = await writeCheckpoint(runDir, {
        "target.safetensors": await target.toSafetensors(),
        "draft.safetensors": await draft.toSafetensors(),
        "target.optim.safetensors": await tTrain.saveState(),
        "draft.optim.safetensors": await dTrain.saveState(),
        "state.json": JSON.stringify(state, null, 2),
      });
      log(`checkpoint (${why}) at step ${step} → ${dir}`);
    } finally {
      saving = false;
    }
  };

  const writePlot = async () => {
    await atomicWrite(`${runDir}/loss.svg`, trainingChart(metrics, preset, cfg.gamma));
  };

  let interrupted = false;
  const onSigint = () => {
    if (saving) { // never cut a save short: stop right after it
      interrupted = true;
      return log("saving a checkpoint; stopping right after");
    }
    if (interrupted) Deno.exit(130);
    interrupted = true;
  };
  try {
    Deno.addSignalListener("SIGINT", onSigint);
  } catch { /* not supported here */ }

  const tokensPerStep = cfg.batch * cfg.accumulate * cfg.seqLen;
  const progress = ui.progress = new Progress(cfg.steps, step, 1); // both losses every step, like train.py
  const t0 = performance.now();
  const startStep = step;
  let pending: { step: number; t: number; d: number } | undefined;
  let lastStatus = "";
  const flush = async () => {
    if (!pending) return;
    const { step: s, t, d } = pending;
    pending = undefined;
    // both models' results at once: two readbacks in flight, none waiting for later steps
    const [rt, rd] = await Promise.all([tTrain.result(t), dTrain.result(d)]);
    const bad = [["target", rt], ["draft", rd]].flatMap(([name, r]) => {
      const x = r as StepResult;
      const what = [
        ...(Number.isFinite(x.loss) ? [] : [`loss ${x.loss}`]),
        ...(Number.isFinite(x.gradNorm) ? [] : [`gradient norm ${x.gradNorm}`]),
      ];
      return what.length
        ? [`${name} ${what.join(", ")}${x.skipped ? " (update skipped)" : ""}`]
        : [];
    });
    if (bad.length) {
      const msg = `training step ${s}: ${bad.join("; ")}`;
      if (!skipNonFinite) throw new Error(`${msg}; --skip-nonfinite skips such updates`);
      log(msg);
    }
    const [loss, smallLoss] = [rt.loss, rd.loss];
    const secs = (performance.now() - t0) / 1000;
    const tps = ((s + 1 - startStep) * tokensPerStep * 2) / secs;
    lastStatus = `loss ${loss.toFixed(3)} draft ${smallLoss.toFixed(3)} ${Math.round(tps)} tok/s`;
    await record({
      type: "train",
      step: s,
      loss,
      smallLoss,
      gradNorm: rt.gradNorm,
      smallGradNorm: rd.gradNorm,
      seconds: +secs.toFixed(3),
    });
    progress.update(s + 1, lastStatus);
  };

  for (; step < cfg.steps && !interrupted; step++) {
    const mbs = Array.from({ length: cfg.accumulate }, () => trainSampler.sample(cfg.batch));
    const t = tTrain.step(mbs), d = dTrain.step(mbs);
    await flush(); // read the previous step's losses while this one runs
    pending = { step, t, d };
    if (
      step % cfg.validateEvery === 0 || step % cfg.generateEvery === 0 ||
      (step + 1) % cfg.checkpointEvery === 0
    ) {
      await flush();
    }
    if (step % cfg.validateEvery === 0) {
      const val = valSampler.sample(cfg.batch);
      const loss = await target.loss(val), smallLoss = await draft.loss(val);
      log(`step ${step}: validation loss ${loss.toFixed(3)}, draft ${smallLoss.toFixed(3)}`);
      await record({ type: "val", step, loss, smallLoss });
    }
    if (step % cfg.generateEvery === 0) {
      const prime = genSampler.sample(1);
      const seed = cfg.seed * 1000003 + step;
      const timer = new GpuTimer(gpu);
      const base = await baseDecoding(target, prime, cfg.generateLen, { seed, timer });
      const spec = await speculativeDecoding(target, draft, prime, cfg.generateLen, {
        gamma: cfg.gamma,
        seed,
        timer,
      });
      timer.destroy();
      const [baseMs, specMs] = [base.gpuMs ?? base.wallMs, spec.gpuMs ?? spec.wallMs];
      const [baseWall, specWall] = [base.wallMs, spec.wallMs];
      const unit = timer.gpuTimed ? "GPU" : "wall";
      log(
        [
          "",
          `prime (${cfg.primeLen} bytes):`,
          decodeTokens(prime[0]),
          "*".repeat(100),
          "base decoding:",
          decodeTokens(base.tokens[0]),
          "",
          "spec decoding:",
          decodeTokens(spec.tokens[0]),
          "",
          `base decoding in: ${baseMs.toFixed(1)} ms ${unit} (${baseWall.toFixed(0)} ms wall)`,
          `spec decoding in: ${specMs.toFixed(1)} ms ${unit} (${specWall.toFixed(0)} ms wall)`,
          `speedup: ${(baseMs / specMs).toFixed(2)}x ${unit} time, ${
            (baseWall / specWall).toFixed(2)
          }x wall`,
          `average num accepted: ${spec.acceptedMean.toFixed(2)} / ${cfg.gamma}`,
          "",
        ].join("\n"),
      );
      await record({
        type: "generate",
        step,
        baseMs,
        specMs,
        baseWallMs: baseWall,
        specWallMs: specWall,
        speedup: baseMs / specMs,
        acceptedMean: spec.acceptedMean,
        gamma: cfg.gamma,
      });
    }
    if ((step + 1) % cfg.checkpointEvery === 0 && step + 1 < cfg.steps) {
      step++; // a checkpoint holds the number of steps done: the next one to run
      await save("periodic");
      step--;
    }
    if (step % 10 === 0) await writePlot();
  }
  await flush();
  progress.done();
  await save(interrupted ? "Ctrl-C" : "end");
  await writePlot();
  const secs = (performance.now() - t0) / 1000;
  const done = step - startStep;
  console.log(
    `${interrupted ? "stopped" : "done"}: ${done} steps in ${secs.toFixed(1)} s ` +
      `(${(secs / Math.max(1, done)).toFixed(2)} s/step, ${
        Math.round((done * tokensPerStep * 2) / secs)
      } tokens/s over both models); ` +
      `metrics ${metricsPath}, plot ${runDir}/loss.svg` +
      (interrupted ? `; continue with --resume ${runDir}` : ""),
  );
  try {
    Deno.removeSignalListener("SIGINT", onSigint);
  } catch { /* ignore */ }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
