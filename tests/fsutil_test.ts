import { deepStrictEqual, ok } from "node:assert/strict";
import { atomicWrite, findCheckpoint, writeCheckpoint } from "../cli/fsutil.ts";

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
  ok(msg.includes(`could not write ${dir}/missing/f.txt`), msg);
  await Deno.remove(dir, { recursive: true });
});
