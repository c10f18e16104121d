/**
 * End-to-end tests of train.ts on the tiny preset with a small generated corpus: training,
 * validation, a generation comparison, checkpoints, an exact resume, and every data error.
 */
import { fileURLToPath } from "node:url";
import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { testGpu } from "./helpers.ts";
import { PRESETS } from "../model/config.ts";
import { parseFlags, runConfig, savedArgs, UsageError } from "../cli/train_options.ts";

const TRAIN = fileURLToPath(new URL("../train.ts", import.meta.url));

/** Runs train.ts with flags; returns exit code and output. */
async function train(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string }> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, ...args],
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  });
  const r = await cmd.output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** A small corpus of English-like text. */
function corpus(bytes: number): string {
  const words = [
    "the",
    "model",
    "drafts",
    "tokens",
    "and",
    "a",
    "larger",
    "one",
    "verifies",
    "them",
    "in",
    "parallel",
  ];
  let s = "", i = 7;
  while (s.length < bytes) {
    i = (i * 1103515245 + 12345) % 2147483648;
    s += words[i % words.length] + (i % 7 === 0 ? ".\n" : " ");
  }
  return s.slice(0, bytes);
}

const SMALL = [
  "--preset",
  "tiny",
  "--batch",
  "2",
  "--seq-len",
  "16",
  "--prime-len",
  "8",
  "--generate-len",
  "24",
  "--seed",
  "3",
];

function trainLosses(dir: string): Map<number, [number, number]> {
  const m = new Map<number, [number, number]>();
  for (const line of Deno.readTextFileSync(`${dir}/metrics.jsonl`).split("\n")) {
    if (!line) continue;
    const r = JSON.parse(line);
    if (r.type === "train") m.set(r.step, [r.loss, r.smallLoss]);
  }
  return m;
}

Deno.test("the run config: preset defaults, flags over them, and a resume reads back its flags", () => {
  const gpu = { isSoftware: false, adapterName: "test" };
  const seed = runConfig(parseFlags([]), undefined, gpu);
  deepStrictEqual(
    { ...seed, runDir: "" },
    {
      ...PRESETS.seed.training,
      checkpointEvery: 500,
      earlyExit: 0,
      earlyExitExtraBlocks: 0,
      seed: 0,
      preset: "seed",
      data: undefined,
      skipNonFinite: false,
      runDir: "",
    },
  );
  const given = runConfig(
    parseFlags([...SMALL, "--lr", "0.01", "--skip-nonfinite", "--data", "x.txt", "--run-dir", "r"]),
    undefined,
    gpu,
  );
  deepStrictEqual(
    [given.preset, given.batch, given.seqLen, given.lr, given.steps, given.skipNonFinite],
    ["tiny", 2, 16, 0.01, PRESETS.tiny.training.steps, true],
  );
  // a resumed run keeps every setting it was saved with; a flag given now overrides one
  deepStrictEqual(runConfig(parseFlags(["--resume", "r"]), savedArgs(given), gpu), given);
  deepStrictEqual(
    runConfig(parseFlags(["--resume", "r", "--steps", "9"]), savedArgs(given), gpu),
    { ...given, steps: 9 },
  );
  throws(() => parseFlags(["--bogus"]), UsageError);
});

Deno.test({
  name: "train.ts trains, compares decodings, checkpoints and resumes exactly",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    const dir = await Deno.makeTempDir({ prefix: "specdec-train-" });
    const data = `${dir}/corpus.txt`;
    await Deno.writeTextFile(data, corpus(20000));
    const common = [
      ...SMALL,
      "--data",
      data,
      "--validate-every",
      "2",
      "--generate-every",
      "2",
      "--checkpoint-every",
      "2",
    ];

    const full = await train([...common, "--steps", "4", "--run-dir", `${dir}/full`]);
    ok(full.code === 0, full.out);
    for (
      const s of [
        "base decoding:",
        "spec decoding:",
        "base decoding in:",
        "spec decoding in:",
        "average num accepted:",
        "validation loss",
      ]
    ) {
      ok(full.out.includes(s), `output shows "${s}"\n${full.out}`);
    }
    for (
      const f of [
        "metrics.jsonl",
        "loss.svg",
        "checkpoint/target.safetensors",
        "checkpoint/draft.safetensors",
        "checkpoint/target.optim.safetensors",
        "checkpoint/draft.optim.safetensors",
        "checkpoint/state.json",
      ]
    ) {
      ok((await Deno.stat(`${dir}/full/${f}`)).size > 0, `${f} written`);
    }
    ok((await Deno.readTextFile(`${dir}/full/loss.svg`)).startsWith("<svg"), "the plot is SVG");
    const a = trainLosses(`${dir}/full`);
    deepStrictEqual([...a.keys()], [0, 1, 2, 3]);

    const half = await train([...common, "--steps", "2", "--run-dir", `${dir}/half`]);
    ok(half.code === 0, half.out);
    const resumed = await train(["--resume", `${dir}/half`, "--steps", "4"]);
    ok(resumed.code === 0, resumed.out);
    ok(resumed.out.includes("resuming"), resumed.out);
    const b = trainLosses(`${dir}/half`);
    deepStrictEqual([...b.keys()], [0, 1, 2, 3]);
    for (const s of [0, 1, 2, 3]) {
      deepStrictEqual(b.get(s), a.get(s), `step ${s} losses equal after resume`);
    }

    // killed (SIGKILL) between the two renames of the save at step 2: `checkpoint.old` (step 1)
    // and the complete set of step 2 in `checkpoint.tmp-<pid>`; resumed, and killed again in the
    // save at step 3 right after it removed `checkpoint.old`; resumed again: nothing lost
    const killed = `${dir}/killed`;
    const kill = (at: string) => ({ SPECDEC_KILL_AT: at });
    const k1 = await train(
      [...common, "--checkpoint-every", "1", "--steps", "4", "--run-dir", killed],
      kill("renamed checkpoint to checkpoint.old"),
    );
    ok(k1.code !== 0, k1.out);
    const left = [...Deno.readDirSync(killed)].map((e) => e.name).sort();
    ok(left.includes("checkpoint.old") && !left.includes("checkpoint"), left.join(", "));
    ok(left.some((n) => n.startsWith("checkpoint.tmp-")), left.join(", "));
    const k2 = await train(["--resume", killed], kill("removed checkpoint.old"));
    ok(k2.code !== 0 && k2.out.includes(`resuming ${killed} at step 2`), k2.out);
    const k3 = await train(["--resume", killed]);
    ok(k3.code === 0 && k3.out.includes(`resuming ${killed} at step 3`), k3.out);
    deepStrictEqual([...Deno.readDirSync(killed)].map((e) => e.name).sort(), [
      "checkpoint",
      "loss.svg",
      "metrics.jsonl",
    ]);
    const c = trainLosses(killed);
    deepStrictEqual([...c.keys()], [0, 1, 2, 3]);
    for (const s of [0, 1, 2, 3]) {
      deepStrictEqual(c.get(s), a.get(s), `step ${s} losses equal after two kills`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "train.ts names missing, empty, corrupt and too-short data, and bad flags",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    const dir = await Deno.makeTempDir({ prefix: "specdec-data-" });
    await Deno.writeFile(`${dir}/empty.txt`, new Uint8Array(0));
    await Deno.writeFile(
      `${dir}/bad.gz`,
      new Uint8Array([0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    );
    await Deno.writeTextFile(`${dir}/short.txt`, "too short");
    const cases: [string[], RegExp][] = [
      [["--data", `${dir}/missing.txt`], /cannot read data file .*missing\.txt/],
      [["--data", `${dir}/empty.txt`], /empty\.txt is empty/],
      [["--data", `${dir}/bad.gz`], /bad\.gz is not a valid gzip file/],
      [["--data", `${dir}/short.txt`], /short\.txt is too short/],
      [["--steps", "zero"], /--steps must be an integer ≥ 1, got "zero"/],
      [["--lr=-1"], /--lr must be > 0/],
      [["--bogus"], /Unknown option '--bogus'/],
    ];
    for (const [args, re] of cases) {
      const r = await train([...SMALL, "--run-dir", `${dir}/run`, ...args]);
      ok(r.code !== 0, `exit code for ${args.join(" ")}`);
      ok(re.test(r.out), `${args.join(" ")}: expected ${re}, got:\n${r.out}`);
    }
    // no --data and no data/enwik8.gz: one line says it trains on the project's own text
    const fallback = await train([...SMALL, "--steps", "1", "--run-dir", `${dir}/fallback`]);
    ok(fallback.code === 0, fallback.out);
    ok(/own source text|enwik8\.gz/.test(fallback.out), fallback.out);
    const help = await train(["--help"]);
    ok(help.code === 0 && help.out.includes("--resume"), help.out);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "train.ts saves a checkpoint on Ctrl-C and says how to resume",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    const dir = await Deno.makeTempDir({ prefix: "specdec-sigint-" });
    await Deno.writeTextFile(`${dir}/corpus.txt`, corpus(20000));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        TRAIN,
        ...SMALL,
        "--data",
        `${dir}/corpus.txt`,
        "--steps",
        "100000",
        "--run-dir",
        `${dir}/run`,
      ],
      env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // wait for the first progress line (a plain line per step when not a terminal)
    const reader = child.stdout.getReader();
    let out = "";
    while (!/step \d+\/100000/.test(out)) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    const seen = Number(out.match(/step (\d+)\/100000/)![1]); // steps done when Ctrl-C came
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    const status = await child.status;
    await child.stderr.cancel();
    ok(status.success, out);
    ok(/checkpoint \(Ctrl-C\) at step \d+/.test(out) && out.includes(`--resume ${dir}/run`), out);
    const state = JSON.parse(await Deno.readTextFile(`${dir}/run/checkpoint/state.json`));
    ok(state.step >= seen, `saved at step ${state.step}, after step ${seen} was reported`);
    await Deno.remove(dir, { recursive: true });
  },
});
