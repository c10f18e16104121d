/**
 * Kernel interfaces read from the WGSL itself: which storage buffers a shader declares (by name,
 * with their binding numbers) and how its uniform `params` struct is laid out, so kernels pass
 * their buffers and params by name and nothing is matched by position.
 *
 * @module
 */
import {
  makeShaderDataDefinitions,
  makeStructuredView,
  type ShaderDataDefinitions,
  type VariableDefinition,
} from "webgpu-utils";

/**
 * What {@link Gpu.kernel} needs to build a {@link Dispatch}. Buffers and params are passed by the
 * names the WGSL declares; their binding numbers, order and types are read from the shader itself
 * (webgpu-utils' `makeShaderDataDefinitions`), so nothing is matched by hand.
 *
 * The convention every kernel follows: one uniform `struct Params { ... }` bound as
 * `@group(0) @binding(0) var<uniform> params: Params;` (omitted when the kernel has none), and the
 * storage buffers at `@group(0) @binding(1..)`, each a `var<storage, ...> name: array<...>;` with
 * its shape in a comment.
 *
 * @example
 * ```ts
 * import { requestGpu } from "@x/specdec";
 * const gpu = await requestGpu();
 * const x = gpu.upload("x (N)", new Float32Array([1, 2, 3]));
 * const y = gpu.buffer("y (N)", 12);
 * const double = gpu.kernel({
 *   label: "double",
 *   code: `
 * struct Params { N: u32, scale: f32 }
 * @group(0) @binding(0) var<uniform> params: Params;
 * @group(0) @binding(1) var<storage, read> x: array<f32>;       // (N)
 * @group(0) @binding(2) var<storage, read_write> y: array<f32>; // (N)
 * @compute @workgroup_size(64)
 * fn main(@builtin(global_invocation_id) id: vec3u) {
 *   if (id.x < params.N) { y[id.x] = params.scale * x[id.x]; }
 * }`,
 *   params: { N: 3, scale: 2 },
 *   buffers: { x, y },
 *   workgroups: 1,
 * });
 * gpu.run("double", [double]);
 * console.log(await gpu.readF32(y)); // Float32Array [2, 4, 6]
 * ```
 */
export interface KernelSpec {
  /** Label of the dispatch, its bind group and (with the source) its pipeline. */
  label: string;
  /** WGSL source with a `main` compute entry point. */
  code: string;
  /** Every storage buffer the shader declares, by its WGSL variable name. */
  buffers: Record<string, GPUBuffer>;
  /**
   * The fields of the shader's uniform `params: Params`, by name (u32, i32 or f32 as the struct
   * declares them; floats need no bit casting). Written once, when the dispatch is built.
   */
  params?: Record<string, number>;
  /** Workgroup counts; a number means (n, 1, 1), split over y when over the device limit. */
  workgroups: number | [number, number, number];
  /**
   * Every texture the shader declares (`var name: texture_…`, sampled or storage), by its WGSL
   * variable name: a texture (bound through its default view) or a view.
   */
  textures?: Record<string, GPUTexture | GPUTextureView>;
}

/** What a shader declares: its storage bindings by name and, if any, its `params` uniform. */
export interface ShaderInterface {
  /** Storage variable name → binding number (group 0). */
  storages: Map<string, number>;
  /** Texture variable name (sampled or storage) → binding number (group 0). */
  textures: Map<string, number>;
  /** Binding number of the uniform `params`, if the shader declares one. */
  paramsBinding?: number;
  /**
   * The uniform's bytes for `params`, laid out as the shader's `Params` struct (undefined when
   * the shader has no uniform).
   *
   * @throws Error naming the kernel and the fields when `params` does not match the struct
   */
  uniformBytes(label: string, params?: Record<string, number>): ArrayBuffer | undefined;
}

/** Shader interfaces parsed once per WGSL source (parsing costs about a millisecond). */
const interfaceCache = new Map<string, ShaderInterface>();

/**
 * Reads a shader's bindings from its WGSL: storages by name, and the `params` uniform.
 *
 * @param label the kernel, for error messages
 * @param code WGSL source
 * @returns the parsed interface (cached per source)
 * @throws Error when the shader breaks the convention (a group other than 0, another uniform name)
 */
export function shaderInterface(label: string, code: string): ShaderInterface {
  let iface = interfaceCache.get(code);
  if (iface) return iface;
  // Parse only the declarations before the first function: the convention puts `Params` and the
  // bindings first, and parsing a whole unrolled register-tile shader costs 20-65 ms against
  // ~2 ms for its head. The whole source is parsed when the head does not parse alone or holds
  // fewer buffer declarations than the source (a binding declared after a function).
  const head = code.slice(0, Math.max(0, code.search(/^\s*(@compute|fn )/m))) || code;
  const bindings = (text: string) =>
    text.match(/var<(storage|uniform)|var \w+\s*:\s*texture_/g)?.length ?? 0;
  let defs: ShaderDataDefinitions | undefined;
  if (bindings(head) === bindings(code)) {
    try {
      defs = makeShaderDataDefinitions(head);
    } catch { /* parsed whole below */ }
  }
  defs ??= makeShaderDataDefinitions(code);
  const storages = new Map<string, number>();
  for (const [name, v] of Object.entries(defs.storages)) {
    if (v.group !== 0) throw new Error(`specdec: kernel "${label}": "${name}" is not in group 0`);
    storages.set(name, v.binding);
  }
  const textures = new Map<string, number>();
  for (
    const [name, v] of [...Object.entries(defs.textures), ...Object.entries(defs.storageTextures)]
  ) {
    if (v.group !== 0) throw new Error(`specdec: kernel "${label}": "${name}" is not in group 0`);
    textures.set(name, v.binding);
  }
  const uniforms = Object.entries(defs.uniforms);
  if (uniforms.length > 1 || (uniforms.length === 1 && uniforms[0][0] !== "params")) {
    throw new Error(
      `specdec: kernel "${label}" declares uniforms ${uniforms.map(([n]) => n).join(", ")}; ` +
        `the convention is one uniform named "params"`,
    );
  }
  const p = defs.uniforms.params;
  iface = {
    storages,
    textures,
    paramsBinding: p?.binding,
    uniformBytes: (l, params) => uniformBytes(l, p, params),
  };
  interfaceCache.set(code, iface);
  return iface;
}

/**
 * Checks that `given` names exactly the `declared` names.
 *
 * @throws Error naming the kernel, the missing and the unknown names
 */
export function checkNames(label: string, what: string, declared: string[], given: string[]): void {
  const missing = declared.filter((n) => !given.includes(n));
  const extra = given.filter((n) => !declared.includes(n));
  if (missing.length || extra.length) {
    throw new Error(
      `specdec: kernel "${label}": ${what} ` +
        [
          missing.length ? `missing ${missing.map((n) => `"${n}"`).join(", ")}` : "",
          extra.length ? `not declared by the shader ${extra.map((n) => `"${n}"`).join(", ")}` : "",
        ].filter(Boolean).join("; ") + ` (declared: ${declared.join(", ") || "none"})`,
    );
  }
}

/**
 * Lays out `params` as the uniform's struct (webgpu-utils' `makeStructuredView`).
 *
 * @param label the kernel, for error messages
 * @param definition the shader's `params` uniform, if it declares one
 * @param params the fields by name
 * @returns the uniform's bytes, or undefined without a uniform
 */
function uniformBytes(
  label: string,
  definition: VariableDefinition | undefined,
  params: Record<string, number> = {},
): ArrayBuffer | undefined {
  if (!definition) {
    checkNames(label, "params:", [], Object.keys(params));
    return undefined;
  }
  const view = makeStructuredView(definition);
  const fields = Object.keys(view.views);
  checkNames(label, "params:", fields, Object.keys(params));
  for (const f of fields) {
    const v = params[f];
    if (typeof v !== "number" || Number.isNaN(v)) {
      throw new Error(`specdec: kernel "${label}": param "${f}" is ${v}, not a number`);
    }
  }
  view.set(params);
  return view.arrayBuffer;
}
