import { deepStrictEqual, ok } from "node:assert/strict";
import { atomicWrite, findCheckpoint, recoverCheckpoint, writeCheckpoint } from "../cli/fsutil.ts";

Deno.test("writeCheckpoint() replaces the whole set; findCheckpoint() survives a cut-off save", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-ckpt-" });
  deepStrictEqual(await findCheckpoint(dir), undefined);
  await writeCheckpoint(dir, { "a.bin": new Uint8Array([1]), "state.json": '{"step":1}' });
  await writeCheckpoint(dir, { "a.bin": new Uint8Array([2]), "state.json": '{"step":2}' });
  const found = await findCheckpoint(dir);
  deepStrictEqual(found, `${dir}/checkpoint`);
  deepStrictEqual(await Deno.readFile(`${found}/a.bin`), new Uint8Array([2]));
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  deepStrictEqual(names, ["checkpoint"], "no temporary or old folder left behind");
  // a save cut off between its renames leaves only checkpoint.old: that set is used
  await Deno.rename(`${dir}/checkpoint`, `${dir}/checkpoint.old`);
  deepStrictEqual(await findCheckpoint(dir), `${dir}/checkpoint.old`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("atomicWrite() leaves no temporary file and names the path on failure", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-atomic-" });
  await atomicWrite(`${dir}/f.txt`, "hello");
  deepStrictEqual(await Deno.readTextFile(`${dir}/f.txt`), "hello");
  deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["f.txt"]);
  let msg = "";
  await atomicWrite(`${dir}/missing/f.txt`, "x").catch((e) => msg = e.message);
  ok(msg.includes(`could not write "${dir}/missing/f.txt"`), msg);
  await Deno.remove(dir, { recursive: true });
});

/** Copies a folder tree; a killed process's `checkpoint.tmp-<pid>` gets another pid's name. */
async function copyTree(src: string, dst: string, pid = Deno.pid + 1): Promise<void> {
  await Deno.mkdir(dst, { recursive: true });
  for await (const e of Deno.readDir(src)) {
    const to = `${dst}/${e.name.replace(`tmp-${Deno.pid}`, `tmp-${pid}`)}`;
    if (e.isDirectory) await copyTree(`${src}/${e.name}`, to, pid);
    else await Deno.copyFile(`${src}/${e.name}`, to);
  }
}

/** A checkpoint set of version v: three files that must agree. */
const set = (v: number) => ({
  "target.bin": new Uint8Array(1000).fill(v),
  "draft.bin": new Uint8Array([v, v, v]),
  "state.json": JSON.stringify({ step: v }),
});

/** The version of a run folder's newest complete set (its files agreeing), or undefined. */
async function version(runDir: string): Promise<number | undefined> {
  const dir = await findCheckpoint(runDir);
  if (!dir) return undefined;
  const v = JSON.parse(await Deno.readTextFile(`${dir}/state.json`)).step;
  deepStrictEqual(await Deno.readFile(`${dir}/target.bin`), set(v)["target.bin"], dir);
  deepStrictEqual(await Deno.readFile(`${dir}/draft.bin`), set(v)["draft.bin"], dir);
  return v;
}

/**
 * Saves version v into a copy of `from` (after an optional recovery step, as a resume's first
 * save), snapshotting the folder after every step: each snapshot is what a kill right after
 * that step leaves on disk.
 */
async function saveWithKills(
  from: string,
  v: number,
  work: string,
): Promise<{ step: string; dir: string }[]> {
  const run = `${work}/run`;
  await copyTree(from, run);
  const kills = [{ step: "before the save", dir: `${work}/kill-0` }];
  await copyTree(run, kills[0].dir, 7);
  await writeCheckpoint(run, set(v), async (step) => {
    const dir = `${work}/kill-${kills.length}`;
    await copyTree(run, dir, 7);
    kills.push({ step, dir });
  });
  kills.push({ step: "after the save", dir: run });
  return kills;
}

Deno.test("checkpoint sets: a kill after any step of a save, then after any step of the next save, loses nothing", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "specdec-kill-" });
  await writeCheckpoint(`${tmp}/base`, set(1));
  const first = await saveWithKills(`${tmp}/base`, 2, `${tmp}/a`);
  const steps = first.map((k) => k.step);
  // every step of a save is a kill point
  for (
    const s of [
      "recovered",
      "created the temporary folder",
      "wrote target.bin",
      "wrote draft.bin",
      "wrote state.json",
      "removed checkpoint.old",
      "renamed checkpoint to checkpoint.old",
      "renamed the temporary folder to checkpoint",
      "removed checkpoint.old (done)",
    ]
  ) ok(steps.includes(s), `kill point "${s}" in ${steps.join(", ")}`);
  const complete = steps.indexOf("wrote state.json"); // the new set is complete from here on
  const tried: string[] = [];
  for (const [i, k1] of first.entries()) {
    const v1 = await version(k1.dir);
    deepStrictEqual(v1, i >= complete ? 2 : 1, `kill after "${k1.step}": newest complete set`);
    // resume from there, and kill the next save at each of its steps (recovery steps included)
    const second = await saveWithKills(k1.dir, 3, `${tmp}/b${i}`);
    const complete2 = second.findIndex((k) => k.step === "wrote state.json");
    for (const [j, k2] of second.entries()) {
      tried.push(`${k1.step} → ${k2.step}`);
      const v2 = await version(k2.dir);
      deepStrictEqual(
        v2,
        j >= complete2 ? 3 : v1,
        `kill after "${k1.step}", resume, kill after "${k2.step}": newest complete set`,
      );
      // and a third, uninterrupted save tidies everything up
      await writeCheckpoint(k2.dir, set(4));
      deepStrictEqual(await version(k2.dir), 4);
      deepStrictEqual([...Deno.readDirSync(k2.dir)].map((e) => e.name), ["checkpoint"]);
    }
    await Deno.remove(`${tmp}/b${i}`, { recursive: true });
  }
  ok(tried.length > 90, `${tried.length} kill pairs`);
  console.log(`${first.length} kill points per save, ${tried.length} kill pairs tried`);
  if (Deno.env.get("SPECDEC_LIST_KILLS")) console.log(tried.join("\n"));
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("recoverCheckpoint() promotes the newest complete set and removes stale temporary folders", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-recover-" });
  const write = async (sub: string, v: number, marker = true) => {
    await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
    for (const [name, data] of Object.entries(set(v))) {
      if (name === "state.json" && !marker) continue;
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      await Deno.writeFile(`${dir}/${sub}/${name}`, bytes);
    }
  };
  // the issue's state: only checkpoint.old complete, the newer set complete in a killed
  // process's temporary folder, and a cut-off one of another
  await write("checkpoint.old", 1);
  await write("checkpoint.tmp-11", 2);
  await write("checkpoint.tmp-12", 3, false);
  deepStrictEqual(await findCheckpoint(dir), `${dir}/checkpoint.tmp-11`);
  deepStrictEqual(await version(dir), 2);
  deepStrictEqual(await recoverCheckpoint(dir), `${dir}/checkpoint`);
  deepStrictEqual(await version(dir), 2);
  deepStrictEqual(
    [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
    ["checkpoint", "checkpoint.old"],
    "stale temporary folders removed; the older set stays until a save replaces it",
  );
  // a checkpoint folder without its marker is not a set: the complete old one is used
  await Deno.remove(`${dir}/checkpoint/state.json`);
  deepStrictEqual(await version(dir), 1);
  deepStrictEqual(await recoverCheckpoint(dir), `${dir}/checkpoint`);
  deepStrictEqual(await version(dir), 1);
  // only cut-off folders: no checkpoint, and they are removed
  await Deno.remove(dir, { recursive: true });
  await write("checkpoint.tmp-13", 5, false);
  deepStrictEqual(await findCheckpoint(dir), undefined);
  deepStrictEqual(await recoverCheckpoint(dir), undefined);
  deepStrictEqual([...Deno.readDirSync(dir)], []);
  await Deno.remove(dir, { recursive: true });
});
