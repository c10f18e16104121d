import {
  deepStrictEqual,
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { type Gpu, grid, requestGpu } from "../kernels/gpu.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { gpuTest, testGpu } from "./helpers.ts";

const SCALE = /* wgsl */ `
struct Params { n: u32, s: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (n)
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = g.x + g.y * nw.x * 64u;
  if (i >= params.n) { return; }
  y[i] = x[i] * params.s;
}`;

function scale(gpu: Gpu, x: GPUBuffer, y: GPUBuffer, n: number, s: number) {
  return gpu.kernel({
    label: "scale",
    code: SCALE,
    buffers: { y, x }, // any order: bound by name
    params: { s, n },
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

gpuTest("GpuTimer refuses a capacity its query set cannot hold, naming the limit", (gpu) => {
  for (const bad of [0, 2049, 1.5, NaN]) {
    assertThrows(
      () => new GpuTimer(gpu, bad),
      /GpuTimer capacity must be an integer from 1 to 2048/,
    );
  }
  new GpuTimer(gpu, 2048).destroy();
});

gpuTest("Gpu.pipeline() caches per source", (gpu) => {
  assertEquals(gpu.pipeline("a", SCALE), gpu.pipeline("b", SCALE));
});

gpuTest("Gpu.scoped() names the operation on a validation error", async (gpu) => {
  await assertRejects(
    () =>
      gpu.scoped("a bad bind", () => {
        const x = gpu.buffer("x", 16);
        // a buffer too small for the uniform's binding: the shader wants 8 bytes of params
        const pipeline = gpu.pipeline("scale", SCALE);
        gpu.device.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [{ binding: 0, resource: { buffer: x, size: 4 } }],
        });
      }),
    /validation error during a bad bind/,
  );
});

gpuTest(
  "Gpu.kernel() binds by the names the WGSL declares, with i32 and f32 params",
  async (gpu) => {
    const code = /* wgsl */ `
struct Params { n: u32, shift: i32, s: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> second: array<f32>;       // (n)
@group(0) @binding(1) var<storage, read_write> first: array<f32>;  // (n)
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= params.n) { return; }
  first[g.x] = second[g.x] * params.s + f32(params.shift);
}`;
    const second = gpu.upload("second (3)", new Float32Array([1, 2, 3]));
    const first = gpu.buffer("first (3)", 12);
    gpu.run("named", [
      gpu.kernel({
        label: "named",
        code,
        buffers: { second, first },
        params: { n: 3, shift: -2, s: 0.5 },
        workgroups: 1,
      }),
    ]);
    deepStrictEqual(await gpu.readF32(first), new Float32Array([-1.5, -1, -0.5]));
  },
);

gpuTest(
  "Gpu.kernel() names the kernel and the names when buffers or params do not match",
  (gpu) => {
    const x = gpu.buffer("x", 16), y = gpu.buffer("y", 16);
    const k = (buffers: Record<string, GPUBuffer>, params: Record<string, number>) => () =>
      gpu.kernel({ label: "scale", code: SCALE, buffers, params, workgroups: 1 });
    assertThrows(k({ x }, { n: 1, s: 1 }), /kernel "scale": buffers: missing "y"/);
    assertThrows(k({ x, y, z: x }, { n: 1, s: 1 }), /not declared by the shader "z"/);
    assertThrows(k({ x, y }, { n: 1 }), /kernel "scale": params: missing "s"/);
    assertThrows(k({ x, y }, { n: 1, s: 1, t: 2 }), /params: not declared by the shader "t"/);
    assertThrows(k({ x, y }, { n: 1, s: NaN }), /param "s" is NaN, not a number/);
    assertThrows(
      () =>
        gpu.kernel({
          label: "two uniforms",
          code: "struct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n" +
            "@compute @workgroup_size(1) fn main() { _ = p.n; }",
          buffers: {},
          workgroups: 1,
        }),
      /declares uniforms p; the convention is one uniform named "params"/,
    );
  },
);

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

gpuTest(
  "Gpu.buffer() gives the caller's advice for a too-large buffer, and none it was not given",
  (gpu) => {
    const limit = gpu.device.limits.maxStorageBufferBindingSize;
    // without a hint: the buffer and the limit only (a weight is not shrunk by a smaller batch)
    const plain = `specdec: buffer "w (V, C)" needs ${limit + 4} bytes, over the device's ` +
      `storage binding limit maxStorageBufferBindingSize ${limit}`;
    assertThrows(() => gpu.buffer("w (V, C)", limit + 4), (e: Error) => e.message === plain);
    assertThrows(
      () =>
        gpu.buffer("logits (T, V)", limit + 4, undefined, "use a smaller batch or sequence length"),
      /maxStorageBufferBindingSize \d+; use a smaller batch or sequence length$/,
    );
    const max = gpu.device.limits.maxBufferSize;
    if (max < Number.MAX_SAFE_INTEGER - 8) {
      assertThrows(
        () => gpu.buffer("big", max + 4, 0x8, "the model is too large for this device"),
        /buffer "big" needs \d+ bytes, over the device's maxBufferSize \d+; the model is too large/,
      );
    }
  },
);

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
