/**
 * The training steps of a run: one optimizer step of both models on the same batches, reading its
 * losses one step late (so the GPU never waits for the CPU), and a validation loss.
 *
 * @module
 */
import type { StepResult } from "../model/trainer.ts";
import { log, record, type Run, tokensPerStep } from "./run.ts";

/**
 * Runs step `run.step`: draws `accumulate` micro-batches and submits one step of the target and
 * then one of the draft on them (with `--distill` the draft's step reads the logits of the
 * target's), then records the previous step's losses while this one runs.
 * Afterwards `run.step` counts this step as done and `run.pending` holds it.
 *
 * @param run the run
 * @throws Error when the previous step's loss or gradient norm is not finite (unless
 *   `--skip-nonfinite`)
 */
export async function trainStep(run: Run): Promise<void> {
  const { config: c, trainers } = run;
  const microBatches = Array.from(
    { length: c.accumulate },
    () => run.samplers.train.sample(c.batch),
  );
  const submitted = {
    step: run.step,
    target: trainers.target.step(microBatches),
    draft: trainers.draft.step(microBatches),
  };
  run.step++;
  await recordLosses(run); // read the previous step's losses while this one runs
  run.pending = submitted;
}

/**
 * Reads the pending step's losses and gradient norms (both models' readbacks in flight at once),
 * appends them to metrics.jsonl and updates the progress bar. Does nothing when no step is
 * pending.
 *
 * @param run the run
 * @throws Error when a loss or gradient norm is not finite (unless `--skip-nonfinite`: then one
 *   line says so)
 */
export async function recordLosses(run: Run): Promise<void> {
  if (!run.pending) return;
  const { step, target, draft } = run.pending;
  run.pending = undefined;
  const [rt, rd] = await Promise.all([
    run.trainers.target.result(target),
    run.trainers.draft.result(draft),
  ]);
  const bad = ([["target", rt], ["draft", rd]] as [string, StepResult][]).flatMap(([name, r]) => {
    const what = [
      ...(Number.isFinite(r.loss) ? [] : [`loss ${r.loss}`]),
      ...(Number.isFinite(r.gradNorm) ? [] : [`gradient norm ${r.gradNorm}`]),
    ];
    return what.length ? [`${name} ${what.join(", ")}${r.skipped ? " (update skipped)" : ""}`] : [];
  });
  if (bad.length) {
    const msg = `training step ${step}: ${bad.join("; ")}`;
    if (!run.config.skipNonFinite) throw new Error(`${msg}; --skip-nonfinite skips such updates`);
    log(run, msg);
  }
  const secs = (performance.now() - run.startTime) / 1000;
  const tps = ((step + 1 - run.startStep) * tokensPerStep(run.config) * 2) / secs;
  await record(run, {
    type: "train",
    step,
    loss: rt.loss,
    smallLoss: rd.loss,
    gradNorm: rt.gradNorm,
    smallGradNorm: rd.gradNorm,
    // --distill: smallLoss is (1 − w)·CE + w·KL; its parts apart (validation stays plain CE)
    ...(rd.distill ? { smallCe: rd.distill.ce, smallKl: rd.distill.kl } : {}),
    seconds: +secs.toFixed(3),
  });
  run.progress.update(
    step + 1,
    `loss ${rt.loss.toFixed(3)} draft ${rd.loss.toFixed(3)}` +
      (rd.distill ? ` (ce ${rd.distill.ce.toFixed(3)}, kl ${rd.distill.kl.toFixed(3)})` : "") +
      ` ${Math.round(tps)} tok/s`,
  );
}

/**
 * Both models' loss on one batch of validation windows, after step `step`; logged and recorded.
 *
 * @param run the run
 * @param step the step just run
 */
export async function validate(run: Run, step: number): Promise<void> {
  await recordLosses(run); // metrics stay in step order
  const val = run.samplers.val.sample(run.config.batch);
  const loss = await run.target.loss(val), smallLoss = await run.draft.loss(val);
  log(run, `step ${step}: validation loss ${loss.toFixed(3)}, draft ${smallLoss.toFixed(3)}`);
  await record(run, { type: "val", step, loss, smallLoss });
}
