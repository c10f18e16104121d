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

/**
 * Writes a set of files as one checkpoint, atomically as a set: all files go into a fresh
 * temporary folder, which then replaces `<runDir>/checkpoint` by renames. A crash at any moment
 * leaves either the old or the new set complete (see {@link findCheckpoint}).
 *
 * @param runDir the run folder
 * @param files file name → contents
 * @returns the checkpoint folder
 */
export async function writeCheckpoint(
  runDir: string,
  files: Record<string, Uint8Array | string>,
): Promise<string> {
  const final = `${runDir}/checkpoint`, old = `${runDir}/checkpoint.old`;
  const tmp = `${runDir}/checkpoint.tmp-${Deno.pid}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp, { recursive: true });
  try {
    for (const [name, data] of Object.entries(files)) {
      if (typeof data === "string") await Deno.writeTextFile(`${tmp}/${name}`, data);
      else await Deno.writeFile(`${tmp}/${name}`, data);
    }
    await Deno.remove(old, { recursive: true }).catch(() => {});
    if (await exists(final)) await Deno.rename(final, old);
    await Deno.rename(tmp, final);
    await Deno.remove(old, { recursive: true }).catch(() => {});
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw new Error(
      `specdec: could not write the checkpoint in ${runDir}: ${(e as Error).message}`,
    );
  }
  return final;
}

/**
 * The complete checkpoint folder of a run: `checkpoint`, or `checkpoint.old` when a save was cut
 * off between its two renames.
 *
 * @param runDir the run folder
 * @returns the folder, or undefined when the run has none
 */
export async function findCheckpoint(runDir: string): Promise<string | undefined> {
  for (const d of [`${runDir}/checkpoint`, `${runDir}/checkpoint.old`]) {
    if (await exists(`${d}/state.json`)) return d;
  }
}
