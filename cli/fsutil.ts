/**
 * Small Deno-only file helpers for the CLI scripts: atomic writes, JSON lines, and a checkpoint
 * folder that survives a kill at any moment of its save.
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
    throw new Error(`specdec: could not write "${path}": ${(e as Error).message}`);
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
 * The file of a checkpoint set written last: a folder that holds it holds every file of the set
 * complete (each file is written and flushed to disk before the next).
 */
export const CHECKPOINT_MARKER = "state.json";

/**
 * Called at each step of a checkpoint save or recovery, after the step (tests copy the run folder
 * there: the copy is exactly what a kill at that moment leaves).
 */
export type CheckpointHook = (step: string) => void | Promise<void>;

/** Whether a checkpoint folder is complete: its marker file, written last, is there. */
async function complete(dir: string): Promise<boolean> {
  return await exists(`${dir}/${CHECKPOINT_MARKER}`);
}

/** Writes a file and flushes it to disk, so that a later rename never publishes a torn file. */
async function writeSynced(path: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let at = 0; at < bytes.length;) at += await f.write(bytes.subarray(at));
  await f.syncData();
}

/** Flushes a folder's entries (renames) to disk where the platform allows. */
async function syncDir(dir: string): Promise<void> {
  try {
    using f = await Deno.open(dir, { read: true });
    await f.sync();
  } catch { /* not possible on every platform; renames stay atomic, only less durable */ }
}

/** The `checkpoint.tmp-*` folders of a run folder, the newest complete first. */
async function tmpFolders(runDir: string): Promise<{ path: string; complete: boolean }[]> {
  const found: { path: string; complete: boolean; time: number }[] = [];
  try {
    for await (const e of Deno.readDir(runDir)) {
      if (!e.name.startsWith("checkpoint.tmp-")) continue;
      const path = `${runDir}/${e.name}`;
      const marker = await Deno.stat(`${path}/${CHECKPOINT_MARKER}`).catch(() => undefined);
      found.push({ path, complete: !!marker, time: marker?.mtime?.getTime() ?? 0 });
    }
  } catch { /* no run folder yet */ }
  return found.sort((a, b) => Number(b.complete) - Number(a.complete) || b.time - a.time);
}

/**
 * The newest complete checkpoint set of a run folder. A save writes `checkpoint.tmp-<pid>` (its
 * marker last), then renames `checkpoint` → `checkpoint.old` and the temporary folder →
 * `checkpoint`, then removes `checkpoint.old`; and {@link recoverCheckpoint} leaves at most the one
 * temporary folder of the save under way. So a complete temporary folder is always the newest
 * set, then `checkpoint`, then `checkpoint.old`. Reads only: nothing is moved or removed.
 *
 * @param runDir the run folder
 * @returns the folder, or undefined when the run has no complete checkpoint
 */
export async function findCheckpoint(runDir: string): Promise<string | undefined> {
  const tmp = (await tmpFolders(runDir)).find((t) => t.complete);
  if (tmp) return tmp.path;
  for (const d of [`${runDir}/checkpoint`, `${runDir}/checkpoint.old`]) {
    if (await complete(d)) return d;
  }
}

/**
 * Puts a run folder's newest complete checkpoint set (see {@link findCheckpoint}) at
 * `<runDir>/checkpoint`, and removes the temporary folders of saves cut off (by a kill). A
 * complete set is only ever removed once a newer complete set is in place, so a kill at any
 * step of the recovery leaves the newest set for the next one to find.
 *
 * @param runDir the run folder
 * @param hook called after each step (tests)
 * @returns the checkpoint folder, or undefined when there is no complete set
 */
export async function recoverCheckpoint(
  runDir: string,
  hook: CheckpointHook = () => {},
): Promise<string | undefined> {
  const final = `${runDir}/checkpoint`, old = `${runDir}/checkpoint.old`;
  const tmps = await tmpFolders(runDir);
  const best = tmps.find((t) => t.complete)?.path ??
    (await complete(final) ? final : await complete(old) ? old : undefined);
  // older or cut-off temporary folders: never the newest complete set, which is `best`
  for (const t of tmps) {
    if (t.path !== best) {
      await Deno.remove(t.path, { recursive: true });
      await hook(`recover: removed ${t.path.slice(runDir.length + 1)}`);
    }
  }
  if (best === undefined || best === final) return best;
  if (await complete(final)) { // best is a temporary folder, newer than `checkpoint`
    await Deno.remove(old, { recursive: true }).catch(() => {});
    await hook("recover: removed checkpoint.old");
    await Deno.rename(final, old);
    await hook("recover: renamed checkpoint to checkpoint.old");
  } else if (await exists(final)) { // not a set (the marker written last is missing)
    await Deno.remove(final, { recursive: true });
    await hook("recover: removed an incomplete checkpoint");
  }
  await Deno.rename(best, final);
  await syncDir(runDir);
  await hook(`recover: renamed ${best.slice(runDir.length + 1)} to checkpoint`);
  return final;
}

/**
 * Writes a set of files as one checkpoint that replaces `<runDir>/checkpoint`, so that a kill at
 * any moment leaves a complete set that {@link findCheckpoint} finds (the newest complete one):
 *
 * 1. {@link recoverCheckpoint}: the newest complete set becomes `checkpoint`; other temporary
 *    folders (a killed save's) are removed;
 * 2. every file is written into `checkpoint.tmp-<pid>` and flushed, the marker `state.json` last;
 * 3. `checkpoint.old` is removed and `checkpoint` renamed to `checkpoint.old`;
 * 4. the temporary folder is renamed to `checkpoint`;
 * 5. `checkpoint.old` is removed.
 *
 * @param runDir the run folder
 * @param files file name → contents; must include {@link CHECKPOINT_MARKER}
 * @param hook called after each step (tests copy the folder there to simulate a kill)
 * @returns the checkpoint folder
 * @throws Error naming the run folder when a write or rename fails (a complete temporary folder
 *   is then kept for the next recovery)
 */
export async function writeCheckpoint(
  runDir: string,
  files: Record<string, Uint8Array | string>,
  hook: CheckpointHook = () => {},
): Promise<string> {
  if (!(CHECKPOINT_MARKER in files)) {
    throw new Error(`specdec: a checkpoint set needs its "${CHECKPOINT_MARKER}"`);
  }
  const final = `${runDir}/checkpoint`, old = `${runDir}/checkpoint.old`;
  const tmp = `${runDir}/checkpoint.tmp-${Deno.pid}`;
  try {
    await recoverCheckpoint(runDir, hook);
    await hook("recovered");
    await Deno.mkdir(tmp, { recursive: true });
    await hook("created the temporary folder");
    const names = Object.keys(files).filter((n) => n !== CHECKPOINT_MARKER);
    for (const name of [...names, CHECKPOINT_MARKER]) {
      await writeSynced(`${tmp}/${name}`, files[name]);
      await hook(`wrote ${name}`);
    }
    await syncDir(tmp);
    if (await complete(final)) {
      await Deno.remove(old, { recursive: true }).catch(() => {});
      await hook("removed checkpoint.old");
      await Deno.rename(final, old);
      await hook("renamed checkpoint to checkpoint.old");
    }
    await Deno.rename(tmp, final);
    await syncDir(runDir);
    await hook("renamed the temporary folder to checkpoint");
    await Deno.remove(old, { recursive: true }).catch(() => {});
    await hook("removed checkpoint.old (done)");
  } catch (e) {
    // a complete temporary folder may be the newest (or only) complete set: the next recovery
    // uses it; a cut-off one is removed
    if (!(await complete(tmp))) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw new Error(
      `specdec: could not write the checkpoint in "${runDir}": ${(e as Error).message}`,
    );
  }
  return final;
}
