/**
 * The Decoder's parameters: names (PyTorch state_dict keys), shapes, initialisation.
 *
 * @module
 */
import type { FullDecoderConfig } from "./config.ts";

/** One parameter tensor's checkpoint name and torch shape. */
export interface ParamSpec {
  /** PyTorch state_dict key. */
  name: string;
  /** torch shape (Linear weights are `[out, in]`). */
  shape: number[];
  /** How PyTorch initialises it: Linear `U(±1/√fanIn)`, embedding `N(0,1)`, norm weights 1. */
  init: { kind: "uniform"; fanIn: number } | { kind: "normal" } | { kind: "ones" };
}

/** Parameter names and shapes, in checkpoint order (not including `rotary_emb.inv_freq`). */
export function paramSpecs(c: FullDecoderConfig): ParamSpec[] {
  const inner = c.heads * c.dimHead;
  const ff = c.ffMult * c.dim;
  const specs: ParamSpec[] = [
    { name: "token_emb.weight", shape: [c.numTokens, c.dim], init: { kind: "normal" } },
  ];
  for (let i = 0; i < c.depth; i++) {
    const p = `layers.${i}`;
    specs.push(
      { name: `${p}.0.norm.weight`, shape: [c.dim], init: { kind: "ones" } },
      {
        name: `${p}.0.to_qkv.weight`,
        shape: [3 * inner, c.dim],
        init: { kind: "uniform", fanIn: c.dim },
      },
      {
        name: `${p}.0.to_out.weight`,
        shape: [c.dim, inner],
        init: { kind: "uniform", fanIn: inner },
      },
      { name: `${p}.1.0.weight`, shape: [c.dim], init: { kind: "ones" } },
      { name: `${p}.1.1.weight`, shape: [ff, c.dim], init: { kind: "uniform", fanIn: c.dim } },
      { name: `${p}.1.1.bias`, shape: [ff], init: { kind: "uniform", fanIn: c.dim } },
      { name: `${p}.1.3.weight`, shape: [c.dim, ff], init: { kind: "uniform", fanIn: ff } },
      { name: `${p}.1.3.bias`, shape: [c.dim], init: { kind: "uniform", fanIn: ff } },
    );
  }
  specs.push(
    { name: "to_logits.0.weight", shape: [c.dim], init: { kind: "ones" } },
    {
      name: "to_logits.1.weight",
      shape: [c.numTokens, c.dim],
      init: { kind: "uniform", fanIn: c.dim },
    },
  );
  return specs;
}

/** Mulberry32 seeded PRNG: floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Initial values for every parameter, PyTorch's default schemes from a seeded generator. */
export function initParams(
  c: FullDecoderConfig,
  seed: number,
): Map<string, Float32Array<ArrayBuffer>> {
  const r = seededRandom(seed);
  const out = new Map<string, Float32Array<ArrayBuffer>>();
  for (const s of paramSpecs(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const d = new Float32Array(n);
    const init = s.init;
    if (init.kind === "ones") d.fill(1);
    else if (init.kind === "uniform") {
      const bound = 1 / Math.sqrt(init.fanIn);
      for (let i = 0; i < n; i++) d[i] = (2 * r() - 1) * bound;
    } else {
      for (let i = 0; i < n; i++) {
        const u = Math.max(r(), 1e-12), v = r();
        d[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
      }
    }
    out.set(s.name, d);
  }
  return out;
}
