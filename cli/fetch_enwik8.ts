/**
 * `deno task data`: downloads enwik8 from its canonical address, unzips it with fflate and stores
 * it gzipped as data/enwik8.gz (what train.ts reads), with a progress bar.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { unzipSync } from "fflate";
import { atomicWrite } from "./fsutil.ts";

const URL_ = "http://mattmahoney.net/dc/enwik8.zip";
const OUT = fileURLToPath(new URL("../data/enwik8.gz", import.meta.url));

/** `deno task data [--url URL] [--out PATH]`. */
function options(): { url: string; out: string } {
  const { values } = parseArgs({
    args: Deno.args,
    options: { url: { type: "string" }, out: { type: "string" } },
  });
  return { url: values.url ?? URL_, out: values.out ?? OUT };
}

async function main(): Promise<void> {
  const { url, out } = options();
  console.log(`downloading ${url}`);
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new Error(
      `cannot reach ${url} (${
        (e as Error).message
      }); without it train.ts falls back to a small built-in corpus`,
    );
  }
  if (!res.ok || !res.body) throw new Error(`${url} answered ${res.status} ${res.statusText}`);
  const total = Number(res.headers.get("content-length") ?? 0);
  const chunks: Uint8Array[] = [];
  let got = 0, last = 0;
  const tty = Deno.stdout.isTerminal();
  const enc = new TextEncoder();
  for await (const c of res.body) {
    chunks.push(c);
    got += c.length;
    const now = performance.now();
    if (now - last > 200) {
      last = now;
      const pct = total ? got / total : 0;
      const bar = total
        ? `${"█".repeat(Math.round(pct * 30))}${"░".repeat(30 - Math.round(pct * 30))} ${
          (pct * 100).toFixed(0)
        }%`
        : "";
      const line = `${bar} ${(got / 1e6).toFixed(1)}${
        total ? "/" + (total / 1e6).toFixed(1) : ""
      } MB`;
      if (tty) Deno.stdout.writeSync(enc.encode(`\r\x1b[2K${line}`));
    }
  }
  if (tty) Deno.stdout.writeSync(enc.encode("\n"));
  const zip = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) zip.set(c, at), at += c.length;
  console.log(`downloaded ${(got / 1e6).toFixed(1)} MB; unzipping`);
  const files = unzipSync(zip);
  const data = files["enwik8"] ?? Object.values(files)[0];
  if (!data || data.length === 0) throw new Error(`${url} holds no enwik8 file`);
  const gz = new Uint8Array(
    await new Response(
      new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
        new CompressionStream("gzip"),
      ),
    ).arrayBuffer(),
  );
  const dir = out.slice(0, out.lastIndexOf("/"));
  if (dir) await Deno.mkdir(dir, { recursive: true });
  await atomicWrite(out, gz);
  console.log(
    `wrote ${out} (${(data.length / 1e6).toFixed(1)} MB of text, ${
      (gz.length / 1e6).toFixed(1)
    } MB gzipped)`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
