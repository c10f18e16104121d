/**
 * Turns benchmark samples into report rows and a markdown table.
 *
 * @module
 */
import type { BenchCase, Sample } from "./suite.ts";

/** One row of the report. */
export interface ReportRow {
  /** Group. */
  group: string;
  /** Case. */
  name: string;
  /** Median GPU milliseconds. */
  gpuMs: number;
  /** Wall milliseconds of that run. */
  wallMs: number;
  /** Rates and metrics. */
  values: Record<string, number>;
}

/**
 * Builds rows from each case's representative sample, adding speedups of decoding cases over
 * their group's base decoding.
 *
 * @param cases the suite
 * @param sampleOf the representative (median) sample of a case, if it ran
 * @returns report rows
 */
export function summarize(
  cases: BenchCase[],
  sampleOf: (name: string) => Sample | undefined,
): ReportRow[] {
  const rows: ReportRow[] = [];
  for (const c of cases) {
    const s = sampleOf(c.name);
    if (!s) continue;
    rows.push({
      group: c.group,
      name: c.name,
      gpuMs: s.gpuMs,
      wallMs: s.wallMs,
      values: { ...s.metrics, ...c.rates?.(s) },
    });
  }
  for (const r of rows) {
    const base = rows.find((b) => b.group === r.group && b.name.startsWith("base decoding"));
    if (base && r.name.startsWith("speculative")) {
      r.values.speedup = base.gpuMs / r.gpuMs;
      r.values.wallSpeedup = base.wallMs / r.wallMs;
      if (r.values.predictedSpeedup) {
        r.values.ofPredicted = r.values.speedup / r.values.predictedSpeedup;
      }
    }
  }
  return rows;
}

const fmt = (v: number) =>
  !Number.isFinite(v)
    ? String(v)
    : Math.abs(v) >= 100
    ? v.toFixed(0)
    : Math.abs(v) >= 1
    ? v.toFixed(2)
    : v.toPrecision(3);

/**
 * A markdown table of report rows.
 *
 * @param rows report rows
 * @returns markdown
 */
export function formatTable(rows: ReportRow[]): string {
  const lines = ["| group | case | GPU ms | wall ms | rates |", "|---|---|---:|---:|---|"];
  for (const r of rows) {
    const vals = Object.entries(r.values).filter(([k]) => k !== "generated").map(([k, v]) =>
      `${k} ${fmt(v)}`
    ).join(", ");
    lines.push(`| ${r.group} | ${r.name} | ${fmt(r.gpuMs)} | ${fmt(r.wallMs)} | ${vals} |`);
  }
  return lines.join("\n");
}
