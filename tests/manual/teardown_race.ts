/**
 * Reproduces the heap corruption some `deno test` runs ended with on Mesa's software adapter
 * ("double free or corruption", "corrupted size vs. prev_size in fastbins", SIGABRT after every
 * test passed): WebGPU devices torn down at the same time in several isolates of one process, as
 * Deno's test runner does when test modules (each a worker isolate with its own device) finish
 * together or follow each other without a pause.
 *
 * One trial: `--workers N` workers each create a device, 50 textures, a pipeline and a pass that
 * reads each texture, wait for the GPU, and report; then all workers are terminated at once
 * (default) or one by one 300 ms apart (`--sequential`). The process exits 0 if it survived.
 *
 *   for i in $(seq 30); do deno run -A tests/manual/teardown_race.ts --workers 4; echo $?; done
 *
 * On the development VM (Deno 2.9.6, lavapipe of Mesa 22.3.6), 4 workers: this script crashed in 3
 * of 40 trials (SIGABRT "corrupted double-linked list", or SIGSEGV) with concurrent termination; a
 * first variant in 4 of 30, 1 of 30 with storage buffers instead of textures, 2 of 30 when each
 * worker destroyed its textures and device first; 0 of 40 with `--sequential`. `deno test`
 * without `--parallel` (modules one after another, with no pause between them) still aborted once
 * in CI, so `deno task test` keeps `--parallel` and `.ci/run` lets exactly this abort through.
 *
 * @module
 */
import { parseArgs } from "node:util";

if (!("WorkerGlobalScope" in globalThis)) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { workers: { type: "string", default: "4" }, sequential: { type: "boolean" } },
  });
  const workers = Array.from(
    { length: Number(values.workers) },
    () => new Worker(import.meta.url, { type: "module" }),
  );
  await Promise.all(workers.map((w) => new Promise((done) => w.onmessage = done)));
  for (const w of workers) {
    w.terminate();
    if (values.sequential) await new Promise((r) => setTimeout(r, 300));
  }
} else {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter!.requestDevice();
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var t: texture_2d_array<f32>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(8) fn main(@builtin(global_invocation_id) g: vec3u) {
  o[g.x] = textureLoad(t, vec2u(g.x % 32u, 0u), 0, 0).x;
}`,
  });
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const out = device.createBuffer({ size: 1024, usage: GPUBufferUsage.STORAGE });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  for (let i = 0; i < 50; i++) {
    const t = device.createTexture({
      size: [32, 256, 4],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING |
        GPUTextureUsage.COPY_DST,
    });
    pass.setBindGroup(
      0,
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: t.createView({ dimension: "2d-array" }) },
          { binding: 1, resource: { buffer: out } },
        ],
      }),
    );
    pass.dispatchWorkgroups(4);
  }
  pass.end();
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  (self as unknown as { postMessage(m: string): void }).postMessage("done");
}
