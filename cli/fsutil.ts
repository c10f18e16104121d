/**
 * Small Deno-only file helpers for the CLI scripts: atomic writes and JSON lines.
 *
 * @module
 */

/**
 * Writes a file atomically: into a temporary file beside it, then renamed over the target, so a
 * crash or Ctrl-C never leaves a half-written checkpoint.
 *
 * @param path destination
 * @param data contents
 */
export async function atomicWrite(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`specdec: could not write ${path}: ${(e as Error).message}`);
  }
}

/**
 * Appends one JSON object as a line to a file.
 *
 * @param path the .jsonl file
 * @param record what to append
 */
export async function appendJsonl(path: string, record: unknown): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(record) + "\n", { append: true });
}

/** Whether a path exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
