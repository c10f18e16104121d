/**
 * Trains a target Decoder (depth 10) and a draft Decoder (depth 2) side by side on enwik8, like the
 * reference's train.py, and periodically compares base and speculative decoding, timed on the GPU.
 *
 *   deno run -A train.ts [--preset seed|small|tiny] [--data PATH] [--steps N] … (--help lists all)
 *
 * The steps live in cli/: train_options.ts (the run config), run.ts (the run record; open or
 * resume, save), train_step.ts (train step, validate), compare.ts (compare decodings).
 *
 * @module
 */
import { requestGpu } from "./kernels/gpu.ts";
import { parseFlags, runConfig, usage, UsageError } from "./cli/train_options.ts";
import {
  openRun,
  readCheckpoint,
  saveCheckpoint,
  stopOnCtrlC,
  summary,
  writePlot,
} from "./cli/run.ts";
import { recordLosses, trainStep, validate } from "./cli/train_step.ts";
import { compareDecodings } from "./cli/compare.ts";

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args); // every flag's syntax and range, before any GPU work
  if (flags.help) return console.log(usage());
  const resumed = flags.resume ? await readCheckpoint(flags.resume as string) : undefined;
  const gpu = await requestGpu();
  // flags given now override a resumed run's; sizes checked against the device's limits
  const config = runConfig(flags, resumed?.state.args, {
    isSoftware: gpu.isSoftware,
    adapterName: gpu.adapterName,
    maxBinding: gpu.maxBinding,
  }, resumed && `${resumed.dir}/state.json`);
  const run = await openRun(gpu, config, resumed);
  const removeCtrlC = stopOnCtrlC(run); // Ctrl-C: stop after this step and save

  while (run.step < config.steps && !run.stopping) {
    const step = run.step;
    await trainStep(run);
    if (step % config.validateEvery === 0) await validate(run, step);
    if (step % config.generateEvery === 0) await compareDecodings(run, step);
    if (run.step % config.checkpointEvery === 0 && run.step < config.steps) {
      await recordLosses(run); // a checkpoint's metrics cover every step it holds
      await saveCheckpoint(run, "periodic");
    }
    if (step % 10 === 0) await writePlot(run);
  }
  await recordLosses(run);
  run.progress.done();
  await saveCheckpoint(run, run.stopping ? "Ctrl-C" : "end");
  await writePlot(run);
  console.log(summary(run));
  removeCtrlC();
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${e.message}\n\n${usage()}`);
      Deno.exit(2);
    }
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
