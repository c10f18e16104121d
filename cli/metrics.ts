/**
 * A run's metrics.jsonl: one JSON object per line (`type` "train", "val" or "generate", and the
 * `step`), kept in memory too for the plot.
 *
 * @module
 */
import { appendJsonl, atomicWrite, exists } from "./fsutil.ts";

/** One line of metrics.jsonl. */
export type MetricRecord = Record<string, number | string>;

/** The metrics file and every record in it. */
export interface Metrics {
  /** The .jsonl file. */
  path: string;
  /** Its records, in order. */
  records: MetricRecord[];
}

/**
 * Opens a run's metrics file at `step` steps done: on resume, the records of later steps (written
 * after the checkpoint that is resumed) are dropped from the file, as the resumed run writes them
 * again.
 *
 * @param path the .jsonl file (need not exist)
 * @param step steps done (the checkpoint's step)
 * @param statePath resuming: the checkpoint's state.json, whose `step` the file must reach (the
 *   losses of every step the checkpoint holds were recorded before it was saved)
 * @returns the metrics kept
 * @throws Error naming the file and line of a damaged record, or both files when the checkpoint's
 *   step is beyond the recorded training steps (nothing is rewritten then)
 */
export async function openMetrics(
  path: string,
  step: number,
  statePath?: string,
): Promise<Metrics> {
  const records: MetricRecord[] = [];
  let lastTrain = -1;
  const present = await exists(path);
  if (present) {
    const lines = (await Deno.readTextFile(path)).split("\n");
    for (const [i, line] of lines.entries()) {
      if (!line.trim()) continue;
      let m: MetricRecord;
      try {
        m = JSON.parse(line);
      } catch (e) {
        throw new Error(
          `specdec: "${path}" line ${i + 1} is not valid JSON: ${(e as Error).message}`,
        );
      }
      if (m === null || typeof m !== "object" || typeof m.step !== "number") {
        throw new Error(`specdec: "${path}" line ${i + 1} is not a record with a "step"`);
      }
      if (m.type === "train" && m.step < step) lastTrain = Math.max(lastTrain, m.step);
      if (m.step < step || (m.step === step && m.type !== "train")) records.push(m);
    }
  }
  if (statePath !== undefined && step > 0 && lastTrain !== step - 1) {
    throw new Error(
      `specdec: field "step" of "${statePath}" is ${step}, beyond the training steps recorded in ` +
        `"${path}" (${
          lastTrain < 0 ? "none" : `up to step ${lastTrain}`
        }); the two do not belong ` +
        `together`,
    );
  }
  if (present) await atomicWrite(path, records.map((m) => JSON.stringify(m) + "\n").join(""));
  return { path, records };
}

/**
 * Appends one record to the file and to memory.
 *
 * @param metrics the open metrics
 * @param record the record
 */
export async function appendMetric(metrics: Metrics, record: MetricRecord): Promise<void> {
  metrics.records.push(record);
  await appendJsonl(metrics.path, record);
}
