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
 * @returns the metrics kept
 */
export async function openMetrics(path: string, step: number): Promise<Metrics> {
  const records: MetricRecord[] = [];
  if (await exists(path)) {
    for (const line of (await Deno.readTextFile(path)).split("\n")) {
      if (!line.trim()) continue;
      const m = JSON.parse(line);
      if (m.step < step || (m.step === step && m.type !== "train")) records.push(m);
    }
    await atomicWrite(path, records.map((m) => JSON.stringify(m) + "\n").join(""));
  }
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
