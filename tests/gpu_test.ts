import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert/strict";
import { f32bits, type Gpu, GpuTimer, grid } from "../kernels/gpu.ts";
import { gpuTest } from "./helpers.ts";

const SCALE = /* wgsl */ `
struct P { n: u32, s: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = g.x + g.y * nw.x * 64u;
  if (i >= p.n) { return; }
  y[i] = x[i] * bitcast<f32>(p.s);
}`;

function scale(gpu: Gpu, x: GPUBuffer, y: GPUBuffer, n: number, s: number) {
  return gpu.kernel({
    label: "scale",
    code: SCALE,
    buffers: [x, y],
    params: [n, f32bits(s)],
    workgroups: Math.ceil(n / 64),
  });
}

gpuTest("Gpu.kernel() runs a dispatch with params and reads back", async (gpu) => {
  const n = 1001;
  const x = gpu.upload("x (n)", Float32Array.from({ length: n }, (_, i) => i));
  const y = gpu.buffer("y (n)", n * 4);
  const timer = new GpuTimer(gpu);
  gpu.run("scale", [scale(gpu, x, y, n, 2.5)], timer);
  const out = await gpu.readF32(y);
  assertEquals(out[1000], 2500);
  assertEquals(out[3], 7.5);
  const ms = await timer.read();
  assertEquals(Number.isFinite(ms) && ms >= 0, true);
  timer.destroy();
});

gpuTest("Gpu.pipeline() caches per source", (gpu) => {
  assertEquals(gpu.pipeline("a", SCALE), gpu.pipeline("b", SCALE));
});

gpuTest("Gpu.scoped() names the operation on a validation error", async (gpu) => {
  await assertRejects(
    () =>
      gpu.scoped("a bad bind", () => {
        const x = gpu.buffer("x", 16);
        // binding count mismatch: the shader wants 3 bindings, we give 1
        gpu.kernel({ label: "bad", code: SCALE, buffers: [x], workgroups: 1 });
      }),
    /validation error during a bad bind/,
  );
});

Deno.test("grid() splits large workgroup counts", () => {
  assertEquals(grid(10), [10, 1, 1]);
  const [x, y] = grid(200000);
  assertEquals(x <= 65535 && x * y >= 200000, true);
});
