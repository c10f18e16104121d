/**
 * train.ts's corpus: `--data`, else `data/enwik8.gz`, else (with one line saying so) this
 * project's own source text, so a fresh clone trains without a network.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { decodeCorpus } from "../data/corpus.ts";
import { exists } from "./fsutil.ts";

/** Loads the corpus, or falls back to the project's own text files (one line says so). */
export async function loadCorpus(
  path: string | undefined,
  log: (s: string) => void,
): Promise<{ bytes: Uint8Array; name: string }> {
  if (path !== undefined) {
    let raw: Uint8Array;
    try {
      raw = await Deno.readFile(path);
    } catch (e) {
      throw new Error(`specdec: cannot read data file ${path}: ${(e as Error).message}`);
    }
    return { bytes: await decodeCorpus(raw, path), name: path };
  }
  // in the project's data/ folder, where `deno task data` puts it, whatever the working directory
  const def = fileURLToPath(new URL("../data/enwik8.gz", import.meta.url));
  if (await exists(def)) {
    return { bytes: await decodeCorpus(await Deno.readFile(def), def), name: def };
  }
  const dir = fileURLToPath(new URL("../", import.meta.url));
  const chunks: Uint8Array[] = [];
  for (const sub of ["", "kernels/", "model/", "data/", "cli/", "tests/", "tests/reference/"]) {
    try {
      for await (const e of Deno.readDir(dir + sub)) {
        if (e.isFile && /\.(ts|md)$/.test(e.name)) {
          chunks.push(await Deno.readFile(dir + sub + e.name));
        }
      }
    } catch { /* a folder may be missing in a published copy */ }
  }
  const bytes = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) bytes.set(c, at), at += c.length;
  log(
    `no data/enwik8.gz (run \`deno task data\` to fetch enwik8): training on this project's own source text (${bytes.length} bytes) instead`,
  );
  return { bytes, name: "project sources" };
}
