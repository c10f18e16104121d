/**
 * Smoke test of the benchmark report: `bench/report.ts --quick` runs every group and writes the
 * JSON, markdown and SVG files.
 */
import { fileURLToPath } from "node:url";
import { ok } from "node:assert/strict";
import { testGpu } from "./helpers.ts";

Deno.test({
  name: "bench/report.ts --quick writes JSON, a markdown table and the speedup plot",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!(await testGpu())) return console.warn(`ignored (no WebGPU adapter): ${t.name}`);
    const out = await Deno.makeTempDir({ prefix: "specdec-bench-" });
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        fileURLToPath(new URL("../bench/report.ts", import.meta.url)),
        "--quick",
        "--out",
        out,
      ],
      env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    ok(r.success, log);
    const files = [...Deno.readDirSync(out)].map((e) => e.name);
    const json = files.find((f) => f.endsWith(".json"));
    ok(
      json && files.some((f) => f.endsWith(".md")) && files.some((f) => f.endsWith("-speedup.svg")),
      files.join(", "),
    );
    const { meta, rows } = JSON.parse(await Deno.readTextFile(`${out}/${json}`));
    ok(meta.adapter && meta.quick, JSON.stringify(meta));
    const names: string[] = rows.map((x: { name: string }) => x.name);
    for (
      const want of [
        "matmulNT",
        "gemv",
        "attention prefill",
        "train step target",
        "base decoding B1",
        "speculative decoding B8 gamma 4",
      ]
    ) {
      ok(names.some((n) => n.includes(want)), `report has "${want}": ${names.join(", ")}`);
    }
    for (const row of rows) {
      ok(
        row.gpuMs > 0 && row.wallMs > 0,
        `${row.name}: ${row.gpuMs} ms GPU, ${row.wallMs} ms wall`,
      );
    }
    const spec = rows.find((x: { name: string }) => x.name === "speculative decoding B1 gamma 4");
    ok(
      spec.values.predictedSpeedup > 0 && spec.values.speedup > 0 &&
        spec.values.readbacksPerToken > 0,
      JSON.stringify(spec),
    );
    ok(
      (await Deno.readTextFile(`${out}/${files.find((f) => f.endsWith(".svg"))}`)).startsWith(
        "<svg",
      ),
    );
    await Deno.remove(out, { recursive: true });
  },
});
