/**
 * The rows and the text table both profilers print (bench/profile_decoding.ts,
 * bench/profile_training.ts): GPU milliseconds per step, their share, and dispatch counts.
 *
 * @module
 */

/** One row of a profile: a part, phase or kind of dispatch. */
export interface ProfileRow {
  /** What the row times, e.g. `"target forward n=6"`, or `"  matmuls"` for a kind inside it. */
  name: string;
  /** GPU milliseconds per step. */
  ms: number;
  /** Dispatches per step. */
  dispatches: number;
}

/**
 * Formats rows as a table with ms per step and % of their sum.
 *
 * @param title the line above the table
 * @param rows the rows, in the order to print
 * @param first the header of the name column
 * @returns the table's text
 */
export function profileTable(title: string, rows: ProfileRow[], first = "part"): string {
  const total = rows.reduce((a, r) => a + r.ms, 0);
  const w = Math.max(...rows.map((r) => r.name.length), 10);
  const out = [
    title,
    `  ${first.padEnd(w)}  ${"ms/step".padStart(9)}  ${"%".padStart(5)}  dispatches`,
  ];
  for (const r of rows) {
    out.push(
      `  ${r.name.padEnd(w)}  ${r.ms.toFixed(3).padStart(9)}  ${
        (100 * r.ms / total).toFixed(1).padStart(5)
      }  ${String(r.dispatches).padStart(10)}`,
    );
  }
  out.push(`  ${"total".padEnd(w)}  ${total.toFixed(3).padStart(9)}`);
  return out.join("\n");
}
