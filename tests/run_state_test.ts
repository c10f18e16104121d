/**
 * A damaged checkpoint state.json, metrics.jsonl or saved flag is refused with the file's name
 * and the field, and nothing is rewritten: never a silent restart from step 0.
 */
import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { openRun, parseRunState, readCheckpoint } from "../cli/run.ts";
import type { Gpu } from "../kernels/gpu.ts";
import { openMetrics } from "../cli/metrics.ts";
import { parseFlags, runConfig, savedArgs } from "../cli/train_options.ts";

const TRAIN = fileURLToPath(new URL("../train.ts", import.meta.url));
const GOOD = {
  step: 4,
  args: { steps: 8, preset: "tiny" },
  samplers: { train: [1, 2, 3, 4], val: [5, 6, 7, 8], gen: [9, 10, 11, 4294967295] },
};
const P = "/runs/x/checkpoint/state.json";

Deno.test("parseRunState() refuses every damaged state.json, naming the file and the field", () => {
  deepStrictEqual(parseRunState(JSON.stringify(GOOD), P), GOOD);
  const s = (patch: Record<string, unknown>) => JSON.stringify({ ...GOOD, ...patch });
  const sampler = (train: unknown) => s({ samplers: { ...GOOD.samplers, train } });
  const cases: [string, string, RegExp][] = [
    ["null", "null", /field "\(top level\)" must be an object .*got null/],
    ["an array", "[]", /field "\(top level\)" must be an object/],
    ["a number", "4", /field "\(top level\)"/],
    [
      "truncated JSON",
      JSON.stringify(GOOD).slice(0, 30),
      /is not valid JSON \(damaged or cut short\?\)/,
    ],
    ["empty file", "", /is not valid JSON/],
    [
      "no step",
      JSON.stringify({ args: {}, samplers: GOOD.samplers }),
      /field "step" must be an integer ≥ 0 .*got nothing \(the field is missing\)/,
    ],
    ["step null", s({ step: null }), /field "step" .*got null/],
    ["negative step", s({ step: -1 }), /field "step" must be an integer ≥ 0.*got -1/],
    ["fractional step", s({ step: 2.5 }), /field "step" .*got 2.5/],
    ["step as a string", s({ step: "4" }), /field "step" .*got "4"/],
    ["step not exact", s({ step: 2 ** 60 }), /field "step"/],
    ["no args", s({ args: undefined }), /field "args" must be an object/],
    ["args an array", s({ args: [] }), /field "args" must be an object/],
    [
      "a nested arg",
      s({ args: { steps: { a: 1 } } }),
      /field "args.steps" must be a number, a string or true\/false/,
    ],
    ["an arg null", s({ args: { seed: null } }), /field "args.seed"/],
    ["no samplers", s({ samplers: null }), /field "samplers" must be an object/],
    [
      "no train sampler",
      s({ samplers: { val: [1, 2, 3, 4], gen: [1, 2, 3, 4] } }),
      /field "samplers.train" must be 4 integers/,
    ],
    [
      "a short sampler",
      sampler([1, 2, 3]),
      /field "samplers.train" must be 4 integers from 0 to 4294967295, got \[1,2,3\]/,
    ],
    ["a negative word", sampler([1, -2, 3, 4]), /field "samplers.train"/],
    ["a word over u32", sampler([1, 2 ** 32, 3, 4]), /field "samplers.train"/],
    ["a fractional word", sampler([1, 2.5, 3, 4]), /field "samplers.train"/],
    ["a string word", sampler([1, "2", 3, 4]), /field "samplers.train"/],
    [
      "the constant all-zero state",
      sampler([0, 0, 0, 0]),
      /field "samplers.train" must be a generator state not all zero/,
    ],
    [
      "an all-zero gen state",
      s({ samplers: { ...GOOD.samplers, gen: [0, 0, 0, 0] } }),
      /field "samplers.gen"/,
    ],
  ];
  for (const [what, text, re] of cases) {
    throws(() => parseRunState(text, P), (e: Error) => {
      ok(e.message.includes(`"${P}"`), `${what}: names the file: ${e.message}`);
      ok(re.test(e.message), `${what}: expected ${re}, got: ${e.message}`);
      return true;
    });
  }
});

Deno.test("saved flags of a bad type or out of range are refused, naming state.json and the field", () => {
  const gpu = { isSoftware: true, adapterName: "test" };
  const given = runConfig(parseFlags(["--preset", "tiny", "--run-dir", "r"]), undefined, gpu);
  const saved = savedArgs(given);
  const flags = parseFlags(["--resume", "r"]);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ seed: 2 ** 40 }, /args\."seed" of "\/s\.json" must be ≤ 2147483647, got "1099511627776"/],
    [{ seed: -3 }, /args\."seed" of "\/s\.json" must be an integer ≥ 0, got "-3"/],
    [{ steps: "8" }, /args\."steps" of "\/s\.json" must be a number, got "8"/],
    [{ steps: 1.5 }, /args\."steps" .* got "1.5"/],
    [{ lr: 0 }, /args\."lr" of "\/s\.json" must be > 0/],
    [
      { preset: "huge" },
      /args\."preset" of "\/s\.json" must be one of "seed", "small", "tiny", got "huge"/,
    ],
    [{ preset: 3 }, /args\."preset" of "\/s\.json" must be a string, got 3/],
    [{ "skip-nonfinite": "yes" }, /args\."skip-nonfinite" of "\/s\.json" must be true or false/],
    [
      { "prime-len": 100, "generate-len": 50 },
      /--prime-len "100" must be shorter than --generate-len "50"/,
    ],
  ];
  for (const [patch, re] of cases) {
    throws(
      () => runConfig(flags, { ...saved, ...patch } as never, gpu, "/s.json"),
      (e: Error) => re.test(e.message) || (console.error(e.message), false),
      JSON.stringify(patch),
    );
  }
  // a flag given now replaces a bad saved value
  deepStrictEqual(
    runConfig(parseFlags(["--resume", "r", "--seed", "5"]), { ...saved, seed: 2 ** 40 }, gpu).seed,
    5,
  );
});

Deno.test("metrics.jsonl: a checkpoint step beyond its training records, or a damaged line, is refused and nothing is rewritten", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-metrics-" });
  const path = `${dir}/metrics.jsonl`;
  const text = [0, 1, 2].map((step) => JSON.stringify({ type: "train", step, loss: 1 }) + "\n")
    .join("");
  await Deno.writeTextFile(path, text);
  let msg = "";
  await openMetrics(path, 7, `${dir}/checkpoint/state.json`).catch((e) => msg = e.message);
  ok(
    msg.includes(`field "step" of "${dir}/checkpoint/state.json" is 7`) &&
      msg.includes(`"${path}" (up to step 2)`),
    msg,
  );
  deepStrictEqual(await Deno.readTextFile(path), text, "metrics.jsonl untouched");
  // a checkpoint at step 3 matches; later records would be dropped
  deepStrictEqual((await openMetrics(path, 3, "s.json")).records.length, 3);
  await Deno.writeTextFile(path, text + '{"type":"train","st');
  msg = "";
  await openMetrics(path, 3, "s.json").catch((e) => msg = e.message);
  ok(msg.includes(`"${path}" line 4 is not valid JSON`), msg);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train.ts --resume refuses a damaged state.json and leaves the run folder as it was", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-badstate-" });
  await Deno.mkdir(`${dir}/checkpoint`);
  await Deno.writeFile(`${dir}/checkpoint/target.safetensors`, new Uint8Array([1, 2, 3]));
  await Deno.writeTextFile(`${dir}/metrics.jsonl`, '{"type":"train","step":0,"loss":5}\n');
  for (
    const [state, re] of [
      ["null", /field "\(top level\)" must be an object/],
      ['{"step": 3, "args": {', /is not valid JSON/],
      [JSON.stringify({ ...GOOD, step: -2 }), /field "step" must be an integer ≥ 0/],
    ] as const
  ) {
    await Deno.writeTextFile(`${dir}/checkpoint/state.json`, state);
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TRAIN, "--resume", dir],
      env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    ok(r.code === 1, `exit code ${r.code}: ${out}`);
    ok(out.includes(`"${dir}/checkpoint/state.json"`) && re.test(out), out);
    deepStrictEqual(await Deno.readTextFile(`${dir}/checkpoint/state.json`), state);
    deepStrictEqual(
      await Deno.readTextFile(`${dir}/metrics.jsonl`),
      '{"type":"train","step":0,"loss":5}\n',
    );
    deepStrictEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      ["checkpoint", "metrics.jsonl"],
    );
  }
  let msg = "";
  await readCheckpoint(`${dir}/nothing`).catch((e) => msg = e.message);
  ok(msg.includes(`--resume "${dir}/nothing": no checkpoint`), msg);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a new run refuses a folder that holds another run's metrics or checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-taken-" });
  await Deno.writeTextFile(`${dir}/metrics.jsonl`, '{"type":"train","step":0,"loss":5}\n');
  const gpu = { isSoftware: true, adapterName: "test" };
  const config = runConfig(parseFlags(["--run-dir", dir]), undefined, gpu);
  let msg = "";
  await openRun({} as Gpu, config).catch((e) => msg = e.message); // refused before any GPU use
  ok(msg.includes(`--run-dir "${dir}" already holds a run (metrics.jsonl)`), msg);
  ok(msg.includes(`--resume "${dir}"`), msg);
  deepStrictEqual(
    await Deno.readTextFile(`${dir}/metrics.jsonl`),
    '{"type":"train","step":0,"loss":5}\n',
  );
  await Deno.remove(dir, { recursive: true });
});
