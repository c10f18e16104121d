/**
 * Every numeric flag of train.ts is checked when the command line is read, against the limit it
 * would meet later: exit code 2 and a message naming the flag, the value (quoted) and the limit,
 * before any GPU work.
 */
import { ok, throws } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { testGpu } from "./helpers.ts";
import { NUMBER_FLAGS, parseFlags, runConfig, UsageError } from "../cli/train_options.ts";

const TRAIN = fileURLToPath(new URL("../train.ts", import.meta.url));

/** Runs train.ts; exit code, output and seconds. */
async function train(args: string[]): Promise<{ code: number; out: string; secs: number }> {
  const t = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, ...args],
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: r.code,
    out: dec.decode(r.stdout) + dec.decode(r.stderr),
    secs: (performance.now() - t) / 1000,
  };
}

/** Bad command lines read before any GPU work: [args, the message's core]. */
const PARSE_TIME: [string[], string][] = [
  [["--steps", "0x10"], '--steps must be an integer ≥ 1, got "0x10" (plain decimal digits'],
  [["--steps", "1e3"], '--steps must be an integer ≥ 1, got "1e3"'],
  [["--steps", "0"], '--steps must be an integer ≥ 1, got "0"'],
  [["--steps", "4294967296"], '--steps must be ≤ 4294967295, got "4294967296" (Adam counts'],
  [["--steps", " 5"], '--steps must be an integer ≥ 1, got " 5"'],
  [["--steps", "5.0"], '--steps must be an integer ≥ 1, got "5.0"'],
  [["--steps", ""], '--steps must be an integer ≥ 1, got ""'],
  [["--seed", "2147483648"], '--seed must be ≤ 2147483647, got "2147483648"'],
  [["--seed", "9007199254740993"], '--seed must be ≤ 2147483647, got "9007199254740993"'],
  [["--seed=-1"], '--seed must be an integer ≥ 0, got "-1"'],
  [["--seed", "+1"], '--seed must be an integer ≥ 0, got "+1"'],
  [["--seed", "0o7"], '--seed must be an integer ≥ 0, got "0o7"'],
  [["--gamma", "1e12"], '--gamma must be an integer ≥ 1, got "1e12"'],
  [["--gamma", "0"], '--gamma must be an integer ≥ 1, got "0"'],
  [["--batch", "0b11"], '--batch must be an integer ≥ 1, got "0b11"'],
  [["--accumulate", "1_000"], '--accumulate must be an integer ≥ 1, got "1_000"'],
  [["--seq-len", "1"], '--seq-len must be an integer ≥ 2, got "1"'],
  [["--prime-len", "Infinity"], '--prime-len must be an integer ≥ 1, got "Infinity"'],
  [["--generate-len", "99999999999"], '--generate-len must be ≤ 4294967295, got "99999999999"'],
  [["--validate-every=-0"], '--validate-every must be an integer ≥ 1, got "-0"'],
  [["--generate-every", "2.5"], '--generate-every must be an integer ≥ 1, got "2.5"'],
  [["--checkpoint-every", "NaN"], '--checkpoint-every must be an integer ≥ 1, got "NaN"'],
  [["--early-exit", "1.5"], '--early-exit must be an integer ≥ 0, got "1.5"'],
  [["--early-exit-extra-blocks=-1"], '--early-exit-extra-blocks must be an integer ≥ 0, got "-1"'],
  [["--lr", "0"], '--lr must be > 0, got "0" (a decimal number such as 1e-4'],
  [["--lr=-1e-3"], '--lr must be > 0, got "-1e-3"'],
  [["--lr", "0x1"], '--lr must be > 0, got "0x1"'],
  [["--lr", "Infinity"], '--lr must be > 0, got "Infinity"'],
  [["--lr", "1e39"], '--lr must be ≤ 3.4028234663852886e+38, got "1e39" (it goes to the GPU as'],
  [["--lr", "1e-40"], '--lr must be ≥ 1.1754943508222875e-38, got "1e-40"'],
  [["--clip", "nan"], '--clip must be > 0, got "nan"'],
  [["--clip", "0"], '--clip must be > 0, got "0"'],
  [["--distill", "1.5"], '--distill must be ≤ 1, got "1.5" (the KL\'s weight'],
  [["--distill-temperature", "0.001"], '--distill-temperature must be ≥ 0.01, got "0.001"'],
  [["--draft-threshold", "1"], '--draft-threshold must be ≤ 0.99, got "1" (a draft probability'],
  [["--preset", "huge"], '--preset must be one of "seed", "small", "tiny", got "huge"'],
  [["--run-dir", ""], '--run-dir needs a path, got ""'],
];

Deno.test("train.ts refuses each bad numeric flag with exit code 2, naming the flag, the value and the limit, before any GPU work", async () => {
  const dir = await Deno.makeTempDir({ prefix: "specdec-flags-" });
  const named = new Set(PARSE_TIME.map(([a]) => a[0].replace(/=.*/, "").slice(2)));
  for (const flag of Object.keys(NUMBER_FLAGS)) ok(named.has(flag), `a bad --${flag} is tried`);
  let slowest = 0;
  for (const [args, message] of PARSE_TIME) {
    const runDir = args[0] === "--run-dir" ? [] : ["--run-dir", `${dir}/run`];
    const r = await train([...args, ...runDir]);
    ok(r.code === 2, `${args.join(" ")}: exit code ${r.code}\n${r.out}`);
    ok(r.out.includes(message), `${args.join(" ")}: expected "${message}", got:\n${r.out}`);
    ok(
      !/software adapter \(|specdec train:/.test(r.out),
      `${args.join(" ")}: no GPU work\n${r.out}`,
    );
    slowest = Math.max(slowest, r.secs);
  }
  ok([...Deno.readDirSync(dir)].length === 0, "no run folder created");
  // a second is the goal; the margin is for a loaded test machine
  ok(slowest < 5, `slowest refusal ${slowest.toFixed(2)} s`);
  console.log(`${PARSE_TIME.length} bad command lines, slowest refusal ${slowest.toFixed(2)} s`);
  await Deno.remove(dir, { recursive: true });
});

/** Flags valid alone but not together, or too big for the device: [args, the message's core]. */
const CROSS: [string[], string][] = [
  [["--gamma", "49"], '--gamma "49" must be at most --generate-len − --prime-len = 48'],
  [["--gamma", "4294967295"], '--gamma "4294967295" must be at most --generate-len − --prime-len'],
  [["--prime-len", "64"], '--prime-len "64" must be shorter than --generate-len "64"'],
  [
    ["--batch", "100000"],
    '--batch "100000" × (--seq-len "64" + 1) = 6500000 tokens per micro-batch need 6656000000-byte activation buffers, over this device\'s storage binding limit of 134217728 bytes; at most --batch 2016',
  ],
  [
    ["--seq-len", "4000000000"],
    "over this device's storage binding limit of 134217728 bytes; at most --seq-len 131071 at --batch 1",
  ],
  [
    ["--accumulate", "4000000"],
    '--accumulate "4000000" micro-batches of 260 tokens need a 4160000000-byte token buffer, over this device\'s storage binding limit of 134217728 bytes; at most --accumulate 129055',
  ],
  [
    ["--generate-len", "1000000"],
    '--generate-len "1000000" + --gamma "5" (and --seq-len "64"): decoding needs a KV cache of 1000007 positions',
  ],
];

Deno.test("runConfig() checks flags against each other and the device's binding limit", () => {
  const adapter = { isSoftware: true, adapterName: "test", maxBinding: 134217728 };
  for (const [args, message] of CROSS) {
    throws(
      () => runConfig(parseFlags(["--preset", "tiny", ...args]), undefined, adapter),
      (e: Error) =>
        e instanceof UsageError && e.message.includes(message) ||
        (console.error(e.message), false),
      args.join(" "),
    );
  }
  // the limits themselves are accepted
  const c = runConfig(
    parseFlags(["--preset", "tiny", "--gamma", "48", "--seed", "2147483647", "--batch", "2016"]),
    undefined,
    adapter,
  );
  ok(c.gamma === 48 && c.seed === 2147483647 && c.batch === 2016);
});

Deno.test({
  name:
    "train.ts refuses flags too big together or for the device with exit code 2, before any GPU work",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    for (const [args] of CROSS.slice(0, 3)) {
      const r = await train(["--preset", "tiny", ...args, "--run-dir", "/nonexistent/run"]);
      ok(r.code === 2, `${args.join(" ")}: exit code ${r.code}\n${r.out}`);
      ok(r.out.includes(`--${args[0].slice(2)} "${args[1]}"`), r.out);
      ok(r.secs < 5, `${r.secs} s`);
    }
  },
});
