import {
  deepStrictEqual,
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { f32bits, type Gpu, GpuTimer, grid, requestGpu } from "../kernels/gpu.ts";
import { gpuTest, testGpu } from "./helpers.ts";

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

Deno.test("requestGpu() without an adapter says how to get one", async () => {
  const none = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
  await assertRejects(
    () => requestGpu({ gpu: none }),
    /no WebGPU adapter found.*mesa-vulkan-drivers/,
  );
});

gpuTest("Gpu.buffer() names the buffer and the binding limit when a buffer is too large", (gpu) => {
  const limit = gpu.device.limits.maxStorageBufferBindingSize;
  assertThrows(
    () => gpu.buffer("huge (T, V)", limit + 4),
    /"huge \(T, V\)" needs \d+ bytes, over .*maxStorageBufferBindingSize/,
  );
});

Deno.test({
  name: "a WebGPU error outside an error scope fails the next readback",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const gpu = await testGpu();
    if (!gpu) return;
    // an invalid bind group built outside any error scope: WebGPU reports it only as uncaptured
    const x = gpu.buffer("x", 16);
    gpu.device.createBindGroup({
      layout: gpu.pipeline("scale", SCALE).getBindGroupLayout(0),
      entries: [{ binding: 1, resource: { buffer: x } }],
    });
    await assertRejects(() => gpu.readF32(x), /WebGPU error happened before reading "x"/);
    deepStrictEqual((await gpu.readF32(x)).length, 4); // reported once
  },
});

gpuTest(
  "GpuTimer reports 0 with nothing timed and refuses to under-report past its capacity",
  async (gpu) => {
    const timer = new GpuTimer(gpu, 2);
    if (!gpu.hasTimestamps) return;
    deepStrictEqual(await timer.read(), 0);
    for (let i = 0; i < 3; i++) gpu.run("empty", [], timer);
    await assertRejects(() => timer.read(), /timed 1 passes more than its capacity 2/);
    timer.destroy();
  },
);

gpuTest("Gpu.readManyF32() reads several buffers in one round trip", async (gpu) => {
  const a = gpu.upload("a", new Float32Array([1, 2, 3])),
    b = gpu.upload("b", new Float32Array([4]));
  const before = gpu.readbacks;
  deepStrictEqual(await gpu.readManyF32([a, b]), [
    new Float32Array([1, 2, 3]),
    new Float32Array([4]),
  ]);
  deepStrictEqual(gpu.readbacks - before, 1);
  deepStrictEqual(await gpu.readManyF32([]), []);
});
