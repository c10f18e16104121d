/**
 * The WebGPU runtime: adapter and device, labelled buffers, a per-device pipeline cache,
 * error scopes that name the failing operation, and a GPU timer on timestamp queries.
 *
 * Every kernel family in `kernels/` builds {@link Dispatch}es with {@link Gpu.kernel}, passing its
 * params and buffers by the names its WGSL declares; a unit of
 * work (a forward pass, a training step, a chunk of decode steps) encodes many dispatches into one
 * compute pass and one command buffer ({@link Gpu.run}).
 *
 * @module
 */

import { checkNames, type KernelSpec, shaderInterface } from "./bindings.ts";

/** Optional features specdec uses when the adapter has them. */
const OPTIONAL_FEATURES: GPUFeatureName[] = ["timestamp-query", "shader-f16"];

/** Pipelines cached per device and per WGSL source (devices can be lost: a WeakMap lets them go). */
const pipelineCache = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** Buffer usage for ordinary storage buffers: read and written by kernels, copied in and out. */
export const STORAGE: number = 0x80 | 0x4 | 0x8; // STORAGE | COPY_SRC | COPY_DST

/** Buffer usage for indirect dispatch arguments that a kernel writes: {@link STORAGE} | INDIRECT. */
export const INDIRECT_STORAGE: number = STORAGE | 0x100;

/** One compute dispatch, ready to encode: a pipeline, its bind group and its workgroup count. */
export interface Dispatch {
  /** What the dispatch computes, for error messages and profiles. */
  label: string;
  /** The compute pipeline. */
  pipeline: GPUComputePipeline;
  /** Bind group 0, built once and reused. */
  bindGroup: GPUBindGroup;
  /**
   * Workgroup counts (x, y, z): what runs, or with `indirect` the most that runs (for labels and
   * profiles).
   */
  workgroups: [number, number, number];
  /**
   * Where the counts are read on the GPU instead (three u32 at `offset` bytes of a buffer with
   * INDIRECT usage, written by an earlier dispatch): encoded with `dispatchWorkgroupsIndirect`,
   * so a kernel can skip later work (counts 0) without a readback.
   */
  indirect?: { buffer: GPUBuffer; offset: number };
  /**
   * Host work to do each time the dispatch is encoded, before it (e.g. queueing a copy that must
   * land first: the weight textures of forward_plan.ts). Must not encode into the pass.
   */
  prepare?: () => void;
}

/** A timer of compute passes (see GpuTimer in timer.ts): timestamp writes, then a resolve. */
export interface PassTimer {
  /** Timestamp writes for the next pass, or undefined when not timed. */
  writes(): GPUComputePassTimestampWrites | undefined;
  /** Resolves the pass's queries into the timer's buffer, in the pass's command encoder. */
  resolve(enc: GPUCommandEncoder): void;
}

/** Splits a 1-D workgroup count over x and y so neither exceeds the device limit (65535). */
export function grid(count: number, limit = 65535): [number, number, number] {
  if (count <= limit) return [Math.max(1, count), 1, 1];
  const y = Math.ceil(count / limit);
  return [Math.ceil(count / y), y, 1];
}

/** Throws a clear error saying how to get a WebGPU adapter. */
function noAdapter(): never {
  throw new Error(
    "specdec: no WebGPU adapter found. Install a GPU driver (Vulkan, Metal or D3D12), or on " +
      "headless Linux the software driver: `apt-get install -y mesa-vulkan-drivers`. " +
      "In a browser, use one with WebGPU enabled.",
  );
}

/** Options for {@link requestGpu}. */
export interface RequestGpuOptions {
  /** Adapter power preference. */
  powerPreference?: GPUPowerPreference;
  /** The WebGPU entry point to use instead of `navigator.gpu` (for tests and embedders). */
  gpu?: GPU;
}

/**
 * Requests a WebGPU adapter and a device with the adapter's maximum limits and the optional
 * features it has (`timestamp-query`, `shader-f16`).
 *
 * @param options adapter preferences
 * @returns the runtime wrapping the device
 * @throws Error naming how to get an adapter when none is available
 * @example
 * ```ts
 * import { requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * console.log(gpu.adapterName, gpu.hasTimestamps);
 * ```
 */
export async function requestGpu(options: RequestGpuOptions = {}): Promise<Gpu> {
  const entry = options.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!entry) noAdapter();
  const adapter = await entry.requestAdapter({ powerPreference: options.powerPreference });
  if (!adapter) noAdapter();
  const requiredLimits: Record<string, number> = {};
  const limits = adapter.limits as unknown as Record<string, number>;
  for (const key in limits) {
    const v = limits[key];
    if (typeof v === "number") requiredLimits[key] = v;
  }
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({
    label: "specdec",
    requiredLimits,
    requiredFeatures,
  });
  const info = adapter.info;
  const name = info?.description || [info?.vendor, info?.architecture, info?.device]
    .filter(Boolean).join(" ") ||
    "unknown adapter";
  return new Gpu(device, name, info?.isFallbackAdapter ?? false);
}

/**
 * A WebGPU device with the helpers every kernel uses. Create it with {@link requestGpu}, or wrap
 * a device you already have.
 *
 * @example
 * ```ts
 * import { requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const buf = gpu.upload("x", new Float32Array([1, 2, 3]));
 * console.log(await gpu.readF32(buf)); // Float32Array [1, 2, 3]
 * ```
 */
export class Gpu {
  /** The WebGPU device. */
  readonly device: GPUDevice;
  /** Human-readable adapter name. */
  readonly adapterName: string;
  /** True for a software (fallback) adapter such as Mesa's lavapipe. */
  readonly isSoftware: boolean;
  /** Number of GPU→host readbacks done so far (each costs a full round trip). */
  readbacks = 0;
  /** Number of buffers created through {@link Gpu.buffer} (to check nothing is allocated per step). */
  buffersCreated = 0;

  /**
   * Wraps a device.
   *
   * @param device a WebGPU device
   * @param adapterName a readable adapter name for reports
   * @param isSoftware whether the adapter is a software fallback
   */
  constructor(device: GPUDevice, adapterName = "unknown adapter", isSoftware = false) {
    this.device = device;
    this.adapterName = adapterName;
    this.isSoftware = isSoftware;
    // WebGPU reports errors outside an error scope only through this event (Deno prints
    // nothing): keep the first one so the next readback fails loudly instead of returning zeros.
    device.addEventListener("uncapturederror", (e) => {
      this.#uncaptured ??= (e as GPUUncapturedErrorEvent).error.message;
    });
  }

  #uncaptured?: string;

  /** Throws the first WebGPU error that happened outside an error scope, if any (then clears it). */
  throwUncaptured(context: string): void {
    const msg = this.#uncaptured;
    if (msg !== undefined) {
      this.#uncaptured = undefined;
      throw new Error(`specdec: a WebGPU error happened before ${context}: ${msg}`);
    }
  }

  /** Whether `timestamp-query` is enabled on the device. */
  get hasTimestamps(): boolean {
    return this.device.features.has("timestamp-query");
  }

  /** Largest storage buffer binding the device accepts, in bytes. */
  get maxBinding(): number {
    return this.device.limits.maxStorageBufferBindingSize;
  }

  /**
   * Returns the compute pipeline for `code` (entry point `main`), compiled once per device.
   *
   * @param label pipeline label
   * @param code WGSL source
   * @returns the cached pipeline
   */
  pipeline(label: string, code: string): GPUComputePipeline {
    let cache = pipelineCache.get(this.device);
    if (!cache) pipelineCache.set(this.device, cache = new Map());
    let p = cache.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ label, code });
      p = this.device.createComputePipeline({
        label,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
      cache.set(code, p);
    }
    return p;
  }

  /**
   * Creates a labelled buffer (storage, copy source and destination by default).
   *
   * @param label buffer label (shape in the label helps: `"x (B, T, C)"`)
   * @param bytes size in bytes (rounded up to a multiple of 4, at least 4)
   * @param usage GPUBufferUsage flags
   * @param hint what shrinks this buffer, for the too-large error (e.g. "use a smaller batch or
   *   sequence length" for activations, "the model is too large for this device" for a weight);
   *   without it the error names the buffer and the limit only
   * @returns the buffer
   * @throws Error naming the buffer, its size and the device limit it exceeds
   */
  buffer(label: string, bytes: number, usage: number = STORAGE, hint?: string): GPUBuffer {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const advice = hint ? `; ${hint}` : "";
    if (size > this.device.limits.maxBufferSize) {
      throw new Error(
        `specdec: buffer "${label}" needs ${size} bytes, over the device's maxBufferSize ` +
          `${this.device.limits.maxBufferSize}${advice}`,
      );
    }
    if ((usage & 0x80) && size > this.device.limits.maxStorageBufferBindingSize) {
      throw new Error(
        `specdec: buffer "${label}" needs ${size} bytes, over the device's storage binding limit ` +
          `maxStorageBufferBindingSize ${this.device.limits.maxStorageBufferBindingSize}${advice}`,
      );
    }
    this.buffersCreated++;
    return this.device.createBuffer({ label, size, usage });
  }

  /**
   * Creates a buffer holding `data`.
   *
   * @param label buffer label
   * @param data initial contents
   * @param usage GPUBufferUsage flags
   * @param hint what shrinks this buffer, for the too-large error (see {@link Gpu.buffer})
   * @returns the buffer
   */
  upload(
    label: string,
    data: Float32Array<ArrayBuffer> | Uint32Array<ArrayBuffer> | Int32Array<ArrayBuffer>,
    usage: number = STORAGE,
    hint?: string,
  ): GPUBuffer {
    const b = this.buffer(label, data.byteLength, usage, hint);
    if (data.byteLength > 0) this.device.queue.writeBuffer(b, 0, data);
    return b;
  }

  /**
   * Writes `data` into `buffer` at `offset` bytes (queued before the next submit).
   *
   * @param buffer destination
   * @param data contents
   * @param offset byte offset
   */
  write(
    buffer: GPUBuffer,
    data: Float32Array<ArrayBuffer> | Uint32Array<ArrayBuffer> | Int32Array<ArrayBuffer>,
    offset = 0,
  ): void {
    if (data.byteLength > 0) this.device.queue.writeBuffer(buffer, offset, data);
  }

  /**
   * Builds a {@link Dispatch}: the pipeline (cached), a uniform holding `params` (written once)
   * and a bind group over `buffers` and `textures`, each bound where the shader declares it.
   *
   * @param spec the kernel's source, buffers, textures and params by name, and its workgroup
   *   count
   * @returns the dispatch, to encode any number of times
   * @throws Error naming the kernel and the names when `buffers`, `textures` or `params` do not
   *   match the shader's declarations exactly
   */
  kernel(spec: KernelSpec): Dispatch {
    const iface = shaderInterface(spec.label, spec.code);
    checkNames(spec.label, "buffers:", [...iface.storages.keys()], Object.keys(spec.buffers));
    const entries: GPUBindGroupEntry[] = [];
    for (const [name, binding] of iface.storages) {
      entries.push({ binding, resource: { buffer: spec.buffers[name] } });
    }
    const textures = spec.textures ?? {};
    checkNames(spec.label, "textures:", [...iface.textures.keys()], Object.keys(textures));
    for (const [name, binding] of iface.textures) {
      const t = textures[name];
      entries.push({ binding, resource: t instanceof GPUTexture ? t.createView() : t });
    }
    const uniform = iface.uniformBytes(spec.label, spec.params);
    if (uniform) {
      const u = this.buffer(`${spec.label} params`, uniform.byteLength, 0x40 | 0x8); // UNIFORM|COPY_DST
      this.device.queue.writeBuffer(u, 0, uniform);
      entries.push({ binding: iface.paramsBinding!, resource: { buffer: u } });
    }
    const pipeline = this.pipeline(spec.label, spec.code);
    const bindGroup = this.device.createBindGroup({
      label: spec.label,
      layout: pipeline.getBindGroupLayout(0),
      entries,
    });
    const w = spec.workgroups;
    return {
      label: spec.label,
      pipeline,
      bindGroup,
      workgroups: typeof w === "number" ? grid(w) : w,
    };
  }

  /**
   * Encodes dispatches into an open compute pass, in order (indirect ones with the counts their
   * buffer holds when they run).
   *
   * @param pass the compute pass
   * @param dispatches what to run
   */
  encode(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[]): void {
    for (const d of dispatches) {
      d.prepare?.();
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      if (d.indirect) {
        pass.dispatchWorkgroupsIndirect(d.indirect.buffer, d.indirect.offset);
        continue;
      }
      const [x, y, z] = d.workgroups;
      if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
    }
  }

  /**
   * Encodes `dispatches` into one compute pass of one command buffer and submits it. Nothing
   * waits: the queue orders later work and readbacks after it.
   *
   * @param label what the work is (a forward pass, a training step…)
   * @param dispatches the dispatches, in order
   * @param timer optional timer that records GPU time for this pass
   * @param clear buffers zeroed in the same command buffer before the pass (accumulators)
   */
  run(
    label: string,
    dispatches: readonly Dispatch[],
    timer?: PassTimer,
    clear: readonly GPUBuffer[] = [],
  ): void {
    const enc = this.device.createCommandEncoder({ label });
    for (const b of clear) enc.clearBuffer(b);
    const pass = enc.beginComputePass({ label, timestampWrites: timer?.writes() });
    this.encode(pass, dispatches);
    pass.end();
    timer?.resolve(enc);
    this.device.queue.submit([enc.finish()]);
  }

  /**
   * Copies `bytes` of `buffer` (from `offset`) to the host. Each call is one GPU round trip.
   *
   * @param buffer source (needs COPY_SRC)
   * @param bytes how many bytes (default: the whole buffer)
   * @param offset byte offset
   * @returns the bytes
   */
  async read(buffer: GPUBuffer, bytes?: number, offset = 0): Promise<ArrayBuffer> {
    bytes ??= buffer.size - offset;
    if (offset + bytes > buffer.size) {
      throw new Error(
        `specdec: reading ${bytes} bytes at ${offset} of "${buffer.label}" (${buffer.size} bytes) runs past its end`,
      );
    }
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const staging = this.device.createBuffer({
      label: `${buffer.label} readback`,
      size,
      usage: 0x1 | 0x8, // MAP_READ | COPY_DST
    });
    const enc = this.device.createCommandEncoder({ label: `read ${buffer.label}` });
    enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    this.readbacks++;
    await staging.mapAsync(1 /* READ */);
    this.throwUncaptured(`reading "${buffer.label}"`);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /**
   * Reads whole buffers as float32 in ONE round trip (one staging buffer, one map), instead of
   * one per buffer: checkpoints of a deep model read dozens of tensors.
   *
   * @param buffers sources (need COPY_SRC; sizes multiples of 4)
   * @returns their contents, in order
   */
  async readManyF32(buffers: readonly GPUBuffer[]): Promise<Float32Array[]> {
    const total = buffers.reduce((a, b) => a + b.size, 0);
    if (total === 0) return buffers.map(() => new Float32Array(0));
    const staging = this.device.createBuffer({
      label: `readback of ${buffers.length} buffers`,
      size: total,
      usage: 0x1 | 0x8, // MAP_READ | COPY_DST
    });
    const enc = this.device.createCommandEncoder({ label: "read many" });
    let at = 0;
    for (const b of buffers) {
      enc.copyBufferToBuffer(b, 0, staging, at, b.size);
      at += b.size;
    }
    this.device.queue.submit([enc.finish()]);
    this.readbacks++;
    try {
      await staging.mapAsync(1 /* READ */);
      this.throwUncaptured(`reading ${buffers.length} buffers`);
      const all = staging.getMappedRange();
      at = 0;
      return buffers.map((b) => {
        const out = new Float32Array(all.slice(at, at + b.size));
        at += b.size;
        return out;
      });
    } finally {
      if (staging.mapState === "mapped") staging.unmap();
      staging.destroy();
    }
  }

  /**
   * Reads float32 values from a buffer.
   *
   * @param buffer source
   * @param count number of floats (default: all)
   * @param offset element offset
   * @returns the values
   */
  async readF32(buffer: GPUBuffer, count?: number, offset = 0): Promise<Float32Array> {
    const n = count ?? buffer.size / 4 - offset;
    return new Float32Array(await this.read(buffer, n * 4, offset * 4));
  }

  /**
   * Reads u32 values from a buffer.
   *
   * @param buffer source
   * @param count number of words (default: all)
   * @param offset element offset
   * @returns the values
   */
  async readU32(buffer: GPUBuffer, count?: number, offset = 0): Promise<Uint32Array> {
    const n = count ?? buffer.size / 4 - offset;
    return new Uint32Array(await this.read(buffer, n * 4, offset * 4));
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes, and throws an error naming
   * `operation` if the GPU reported one.
   *
   * @param operation what is being done, for the error message
   * @param fn the work
   * @returns what `fn` returned
   */
  async scoped<T>(operation: string, fn: () => T | Promise<T>): Promise<T> {
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    let result: T | undefined, failure: unknown, failed = false;
    try {
      result = await fn();
    } catch (e) {
      failed = true;
      failure = e;
    }
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    if (oom) throw new Error(`specdec: out of GPU memory during ${operation}: ${oom.message}`);
    if (validation) {
      throw new Error(
        `specdec: WebGPU validation error during ${operation}: ${validation.message}`,
      );
    }
    if (failed) throw failure;
    return result as T;
  }
}
