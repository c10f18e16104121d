/**
 * bench/torch_baseline.py runs the same weights and math as specdec: a float64 numpy forward of
 * our exported checkpoints matches our logits (needs numpy), and so does PyTorch (needs a python
 * with torch: SPECDEC_TORCH_PYTHON or python3), whose own self-test checks its decoding and
 * training code. Each part is ignored, with a message, where its python package is missing.
 */
import { fileURLToPath } from "node:url";
import { ok } from "node:assert/strict";
import { testGpu } from "./helpers.ts";

const root = fileURLToPath(new URL("../", import.meta.url));
const env = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" };

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await new Deno.Command(cmd, {
      args,
      cwd: root,
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      ok: r.success,
      out: new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr),
    };
  } catch (e) {
    return { ok: false, out: (e as Error).message };
  }
}

async function pythonWith(module: string): Promise<string | undefined> {
  for (const py of [Deno.env.get("SPECDEC_TORCH_PYTHON"), "python3"]) {
    if (py && (await run(py, ["-c", `import ${module}`])).ok) return py;
  }
}

Deno.test({
  name: "bench/torch_baseline.py computes our checkpoints' logits (numpy float64 and PyTorch)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    const numpyPy = await pythonWith("numpy");
    const torchPy = await pythonWith("torch");
    if (!numpyPy && !torchPy) {
      return console.warn(`ignored (no python with numpy or torch): ${t.name}`);
    }
    const dir = await Deno.makeTempDir({ prefix: "specdec-torch-" });
    const exp = await run(Deno.execPath(), ["run", "-A", "bench/export_check.ts", dir, "--small"]);
    ok(exp.ok, exp.out);
    const check = [
      "bench/torch_baseline.py",
      "--check-logits",
      `${dir}/check.json`,
      "--tol",
      "1e-4",
    ];
    if (numpyPy) {
      const r = await run(numpyPy, [...check, "--selfcheck"]);
      ok(r.ok && r.out.includes("selfcheck: OK"), r.out);
    }
    if (torchPy) {
      // PyTorch loads our checkpoints and gives our logits (no benchmark case selected)
      const r = await run(torchPy, [
        ...check,
        "--device",
        "cpu",
        "--small",
        "--filter",
        "no such case",
      ]);
      ok(
        r.ok && /logits check target: max/.test(r.out) && /logits check draft: max/.test(r.out),
        r.out,
      );
      const self = await run(torchPy, ["bench/torch_baseline.py", "--selftest"]);
      ok(self.ok && self.out.includes("selftest: all passed"), self.out);
    } else console.warn("torch part ignored (set SPECDEC_TORCH_PYTHON to a python with torch)");
    await Deno.remove(dir, { recursive: true });
  },
});
