import { fileURLToPath } from "node:url";
import { deepStrictEqual, ok, rejects, throws } from "node:assert/strict";
import { zipSync } from "fflate";
import { decodeCorpus, splitCorpus, WindowSampler } from "../data/corpus.ts";

const text = new TextEncoder().encode("the quick brown fox jumps over the lazy dog. ".repeat(50));

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const s = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(s).arrayBuffer());
}

Deno.test("decodeCorpus() reads gzip, zip and plain text", async () => {
  deepStrictEqual(await decodeCorpus(await gzip(text), "a.gz"), text);
  deepStrictEqual(await decodeCorpus(zipSync({ enwik8: text }), "a.zip"), text);
  deepStrictEqual(await decodeCorpus(text, "a.txt"), text);
});

Deno.test("decodeCorpus() names empty and corrupt files", async () => {
  await rejects(
    () => decodeCorpus(new Uint8Array(0), "empty.txt"),
    /data file empty\.txt is empty/,
  );
  const gz = await gzip(text);
  await rejects(
    () => decodeCorpus(gz.subarray(0, 20), "cut.gz"),
    /cut\.gz is not a valid gzip file/,
  );
  const bad = gz.slice();
  bad.fill(0x55, 12, 40);
  await rejects(() => decodeCorpus(bad, "bad.gz"), /bad\.gz is not a valid gzip file/);
  const zip = zipSync({ a: text });
  await rejects(
    () => decodeCorpus(zip.subarray(0, 30), "cut.zip"),
    /cut\.zip is not a valid zip file/,
  );
  const empty = await gzip(new Uint8Array(0));
  await rejects(() => decodeCorpus(empty, "nothing.gz"), /decompresses to nothing/);
});

Deno.test("splitCorpus() splits 90:5 and rejects a too-short corpus", () => {
  const data = new Uint8Array(9500);
  const { train, val } = splitCorpus(data, 100);
  deepStrictEqual([train.length, val.length], [9000, 500]);
  throws(
    () => splitCorpus(new Uint8Array(500), 100, "tiny.txt"),
    /tiny\.txt is too short: 500 bytes .* validation split of 27 bytes/,
  );
});

Deno.test("WindowSampler draws seeded windows and restores its state", () => {
  const data = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
  const a = new WindowSampler(data, 17, 5), b = new WindowSampler(data, 17, 5);
  const first = a.sample(3);
  deepStrictEqual(first, b.sample(3));
  ok(first.every((r) => r.length === 17));
  ok(
    first.every((r) => r.every((v, i) => i === 0 || v === (r[i - 1] + 1) % 251)),
    "contiguous windows",
  );
  const saved = a.state;
  const next = a.sample(2);
  const c = new WindowSampler(data, 17, 99);
  c.state = saved;
  deepStrictEqual(c.sample(2), next);
  ok(
    JSON.stringify(new WindowSampler(data, 17, 6).sample(3)) !== JSON.stringify(first),
    "another seed differs",
  );
  throws(() => new WindowSampler(new Uint8Array(10), 17, 0), /10 bytes cannot give windows of 18/);
});

Deno.test({
  name: "deno task data downloads a zip, unzips it and stores it gzipped (local server)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const body = zipSync({ enwik8: text });
    const ac = new AbortController();
    const server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
      () =>
        new Response(body as Uint8Array<ArrayBuffer>, {
          headers: { "content-length": String(body.length) },
        }),
    );
    const dir = await Deno.makeTempDir({ prefix: "specdec-fetch-" });
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        fileURLToPath(new URL("../cli/fetch_enwik8.ts", import.meta.url)),
        "--url",
        `http://127.0.0.1:${server.addr.port}/enwik8.zip`,
        "--out",
        `${dir}/enwik8.gz`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    ac.abort();
    await server.finished;
    ok(r.success, new TextDecoder().decode(r.stderr));
    deepStrictEqual(await decodeCorpus(await Deno.readFile(`${dir}/enwik8.gz`), "enwik8.gz"), text);
    const bad = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        fileURLToPath(new URL("../cli/fetch_enwik8.ts", import.meta.url)),
        "--url",
        "http://127.0.0.1:9/x.zip",
        "--out",
        `${dir}/x.gz`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    ok(
      !bad.success &&
        /cannot reach http:\/\/127\.0\.0\.1:9\/x\.zip/.test(new TextDecoder().decode(bad.stderr)),
    );
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("WindowSampler's generator is Marsaglia's xorshift128", () => {
  // the paper's code (Marsaglia 2003, "Xorshift RNGs"), on its example seeds
  let [x, y, z, w] = [123456789, 362436069, 521288629, 88675123];
  const xorshift128 = () => {
    const t = (x ^ (x << 11)) >>> 0;
    [x, y, z] = [y, z, w];
    w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return w;
  };
  const expected = Array.from({ length: 8 }, xorshift128);
  deepStrictEqual(expected[0], 3701687786); // the sequence's well-known first value
  const s = new WindowSampler(text, 16, 0);
  s.state = [88675123, 521288629, 362436069, 123456789]; // newest word first: w, z, y, x
  // randInt(2^32) is the first of its two draws
  const got = Array.from({ length: 4 }, () => s.randInt(2 ** 32));
  deepStrictEqual(got, [expected[0], expected[2], expected[4], expected[6]]);
});
