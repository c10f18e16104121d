import { deepStrictEqual, ok, rejects, throws } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { writeSafetensors } from "../model/checkpoint.ts";
import { baseDecoding } from "../model/decoding.ts";
import type { KVCache } from "../model/kv_cache.ts";
import { decoderLogitsRef, decoderLossRef, type RefConfig } from "./reference/model.ts";
import { assertClose, gpuTest, randomRows } from "./helpers.ts";

// A tiny model with odd sizes everywhere it is allowed (dimHead must be even).
const CFG: RefConfig = { numTokens: 19, dim: 24, depth: 2, heads: 3, dimHead: 8, ffMult: 4 };

function tokenRows(B: number, n: number, seed: number, V = CFG.numTokens): number[][] {
  return randomRows(B, n, V, seed);
}

gpuTest("Decoder.logits() matches the float64 reference", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 3 });
  const tokens = tokenRows(2, 7, 11);
  const got = await model.logits(tokens);
  const want = decoderLogitsRef(await model.paramValues(), CFG, tokens);
  assertClose(got, want, { atol: 2e-4, rtol: 1e-3, label: "logits" });
  model.destroy();
});

gpuTest("Decoder.loss() is the mean next-token cross-entropy of the reference", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 4 });
  const tokens = tokenRows(3, 9, 12);
  const got = await model.loss(tokens);
  const want = decoderLossRef(await model.paramValues(), CFG, tokens);
  ok(Math.abs(got - want) < 1e-4, `loss ${got} vs reference ${want}`);
  model.destroy();
});

gpuTest("Decoder.create() follows PyTorch's default initialisation", async (gpu) => {
  const model = Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 1 }, { seed: 1 });
  const p = await model.paramValues();
  const emb = p["token_emb.weight"];
  const mean = emb.reduce((a, b) => a + b, 0) / emb.length;
  const std = Math.sqrt(emb.reduce((a, b) => a + (b - mean) ** 2, 0) / emb.length);
  ok(
    Math.abs(mean) < 0.02 && Math.abs(std - 1) < 0.02,
    `embedding N(0,1): mean ${mean}, std ${std}`,
  );
  const w = p["layers.0.1.3.weight"]; // fan_in = 256
  ok(Math.max(...w.map(Math.abs)) <= 1 / 16 && Math.max(...w.map(Math.abs)) > 0.06, "U(±1/√256)");
  deepStrictEqual([...p["layers.0.0.norm.weight"]].every((v) => v === 1), true);
  // same seed, same values; another seed, other values
  const again = await Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 1 }, { seed: 1 })
    .paramValues();
  deepStrictEqual(again["layers.0.1.1.bias"], p["layers.0.1.1.bias"]);
  const other = await Decoder.create(gpu, { numTokens: 256, dim: 64, depth: 1 }, { seed: 2 })
    .paramValues();
  ok(other["layers.0.1.1.bias"][0] !== p["layers.0.1.1.bias"][0]);
  model.destroy();
});

gpuTest(
  "KV cache: prefill then one or several tokens at a time equals one full forward",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 5 });
    const B = 3, N = 10, V = CFG.numTokens;
    const tokens = tokenRows(B, N, 21);
    const full = await model.logits(tokens);
    const cache = model.createCache(B, 16);
    // feed in chunks: 4 (prefill), 1, 1, 3, 1
    let at = 0;
    for (const k of [4, 1, 1, 3, 1]) {
      const plan = model.forwardPlan(cache, k);
      gpu.write(plan.tokens, Uint32Array.from(tokens.flatMap((r) => r.slice(at, at + k))));
      gpu.write(plan.start, new Uint32Array(B).fill(at));
      gpu.run("chunk", plan.dispatches);
      const got = await gpu.readF32(plan.logits);
      for (let b = 0; b < B; b++) {
        for (let i = 0; i < k; i++) {
          const want = full.subarray(((b * N) + at + i) * V, ((b * N) + at + i + 1) * V);
          assertClose(got.subarray((b * k + i) * V, (b * k + i + 1) * V), want, {
            atol: 1e-4,
            rtol: 0,
            label: `row ${b} position ${at + i}`,
          });
        }
      }
      at += k;
    }
    model.destroy();
  },
);

gpuTest(
  "KV cache: rows at different lengths, rolled back in O(1) by a smaller start",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 6 });
    const V = CFG.numTokens;
    const a = tokenRows(1, 8, 31)[0], b = tokenRows(1, 8, 32)[0];
    const cache = model.createCache(2, 12);
    const prefill = model.forwardPlan(cache, 6);
    gpu.write(prefill.tokens, Uint32Array.from([...a.slice(0, 6), ...b.slice(0, 6)]));
    gpu.write(prefill.start, new Uint32Array([0, 0]));
    gpu.run("prefill", prefill.dispatches);
    // row 0 rolls back to length 3 and takes a different token; row 1 continues at 6
    const alt = (a[3] + 1) % V;
    const step = model.forwardPlan(cache, 1);
    gpu.write(step.tokens, Uint32Array.from([alt, b[6]]));
    gpu.write(step.start, new Uint32Array([3, 6]));
    gpu.run("step", step.dispatches);
    const got = await gpu.readF32(step.logits);
    const wantA = await model.logits([[...a.slice(0, 3), alt]]);
    const wantB = await model.logits([b.slice(0, 7)]);
    assertClose(got.subarray(0, V), wantA.subarray(3 * V, 4 * V), {
      atol: 1e-4,
      rtol: 0,
      label: "rolled-back row",
    });
    assertClose(got.subarray(V, 2 * V), wantB.subarray(6 * V, 7 * V), {
      atol: 1e-4,
      rtol: 0,
      label: "row 1",
    });
    model.destroy();
  },
);

gpuTest("Decoder round-trips through safetensors with PyTorch names", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 7 });
  const bytes = await model.toSafetensors();
  const again = await Decoder.fromSafetensors(gpu, bytes);
  deepStrictEqual(again.config, model.config);
  const tokens = tokenRows(1, 5, 8);
  deepStrictEqual(await again.logits(tokens), await model.logits(tokens));
  const header = JSON.parse(
    new TextDecoder().decode(
      bytes.subarray(8, 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true))),
    ),
  );
  for (
    const k of [
      "token_emb.weight",
      "layers.1.0.norm.weight",
      "layers.1.0.to_qkv.weight",
      "layers.1.0.to_out.weight",
      "layers.1.1.0.weight",
      "layers.1.1.1.weight",
      "layers.1.1.1.bias",
      "layers.1.1.3.weight",
      "layers.1.1.3.bias",
      "rotary_emb.inv_freq",
      "to_logits.0.weight",
      "to_logits.1.weight",
    ]
  ) ok(k in header, `checkpoint has ${k}`);
  deepStrictEqual(header["layers.0.0.to_qkv.weight"].shape, [3 * 3 * 8, 24]);
  deepStrictEqual(header["layers.0.1.1.weight"].shape, [96, 24]);
  deepStrictEqual(header["rotary_emb.inv_freq"].shape, [4]);
  model.destroy();
  again.destroy();
});

/** Rewrites a checkpoint's tensors through `edit` (and optional dtype) and re-serialises. */
async function editedCheckpoint(
  model: Decoder,
  edit: (t: Record<string, { shape: number[]; data: Float32Array }>) => void,
): Promise<Uint8Array> {
  const p = await model.paramValues();
  const t: Record<string, { shape: number[]; data: Float32Array }> = {};
  const { paramSpecs } = await import("../model/params.ts");
  for (const s of paramSpecs(model.config)) t[s.name] = { shape: s.shape, data: p[s.name] };
  t["rotary_emb.inv_freq"] = { shape: [model.invFreq.length], data: model.invFreq };
  edit(t);
  return writeSafetensors(t);
}

gpuTest("Decoder.fromSafetensors() names missing, extra and mis-shaped tensors", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 9 });
  await rejects(
    async () =>
      Decoder.fromSafetensors(
        gpu,
        await editedCheckpoint(model, (t) => delete t["layers.1.1.3.bias"]),
      ),
    /missing tensor "layers\.1\.1\.3\.bias"/,
  );
  await rejects(
    async () =>
      Decoder.fromSafetensors(
        gpu,
        await editedCheckpoint(model, (t) =>
          t["extra.weight"] = { shape: [1], data: new Float32Array(1) }),
      ),
    /unexpected tensors: extra\.weight/,
  );
  await rejects(
    async () =>
      Decoder.fromSafetensors(
        gpu,
        await editedCheckpoint(model, (t) =>
          t["layers.0.0.to_out.weight"] = { shape: [24, 23], data: new Float32Array(24 * 23) }),
      ),
    /"layers\.0\.0\.to_out\.weight" has shape \[24,23\], expected \[24,24\]/,
  );
  model.destroy();
});

gpuTest("Decoder.fromSafetensors() converts F16 and BF16 tensors", async (gpu) => {
  const model = Decoder.create(gpu, { numTokens: 8, dim: 8, depth: 1, heads: 1, dimHead: 8 }, {
    seed: 1,
  });
  const f32 = await model.toSafetensors();
  // re-encode every tensor as F16 and BF16 by hand: values exactly representable stay exact
  for (const dtype of ["F16", "BF16"] as const) {
    const { readSafetensors } = await import("../model/checkpoint.ts");
    const { tensors } = readSafetensors(f32);
    const header: Record<string, unknown> = {};
    const chunks: Uint8Array[] = [];
    let off = 0;
    const rounded: Record<string, Float32Array> = {};
    for (const [name, t] of tensors) {
      const bytes = new Uint8Array(t.data.length * 2);
      const dv = new DataView(bytes.buffer);
      const r = new Float32Array(t.data.length);
      t.data.forEach((v, i) => {
        const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
        if (dtype === "BF16") {
          dv.setUint16(2 * i, bits >>> 16, true);
          r[i] = new Float32Array(new Uint32Array([(bits >>> 16) << 16]).buffer)[0];
        } else {
          // round-to-zero f16 of normal values (|v| in the normal range for these weights)
          const h = f32ToF16(v);
          dv.setUint16(2 * i, h, true);
          r[i] = f16ToF32Ref(h);
        }
      });
      rounded[name] = r;
      header[name] = { dtype, shape: t.shape, data_offsets: [off, off + bytes.length] };
      chunks.push(bytes);
      off += bytes.length;
    }
    const json = new TextEncoder().encode(JSON.stringify(header));
    const file = new Uint8Array(8 + json.length + off);
    new DataView(file.buffer).setBigUint64(0, BigInt(json.length), true);
    file.set(json, 8);
    let at = 8 + json.length;
    for (const c of chunks) file.set(c, at), at += c.length;
    const loaded = await Decoder.fromSafetensors(gpu, file);
    const p = await loaded.paramValues();
    for (const name of Object.keys(p)) deepStrictEqual(p[name], rounded[name], `${dtype} ${name}`);
    loaded.destroy();
  }
  model.destroy();
});

function f32ToF16(v: number): number {
  const s = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a < 2 ** -14) return s | Math.round(a / 2 ** -24);
  const e = Math.floor(Math.log2(a));
  const m = Math.floor((a / 2 ** e - 1) * 1024);
  return s | ((e + 15) << 10) | m;
}
function f16ToF32Ref(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
  return e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15);
}

gpuTest("Decoder rejects bad tokens with clear errors", async (gpu) => {
  const model = Decoder.create(gpu, { ...CFG, maxSeqLen: 12 }, { seed: 1 });
  await rejects(() => model.logits([]), /empty batch/);
  await rejects(() => model.logits([[]]), /rows are empty/);
  await rejects(() => model.logits([[1, 2], [3]]), /same length; row 0 has 2, row 1 has 1/);
  await rejects(() => model.logits([[1, 19]]), /tokens\[0\]\[1\] = 19 is not a token.*\[0, 19\)/);
  await rejects(() => model.logits([[1, -1]]), /tokens\[0\]\[1\] = -1/);
  await rejects(() => model.logits([[1, 2.5]]), /tokens\[0\]\[1\] = 2\.5/);
  await rejects(
    () => model.logits([Array(13).fill(0)]),
    /13 tokens, over the model's maxSeqLen 12/,
  );
  await rejects(() => model.loss([[1]]), /at least 2 tokens/);
  throws(
    () => Decoder.create(gpu, { numTokens: 8, dim: 8, depth: 0 }),
    /config\.depth must be a positive integer/,
  );
  throws(
    () => Decoder.create(gpu, { numTokens: 8, dim: 8, depth: 1, dimHead: 7 }),
    /dimHead must be even/,
  );
  model.destroy();
});

gpuTest("concurrent logits() and loss() calls each get their own results", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 12 });
  const a = tokenRows(1, 4, 1), b = tokenRows(1, 4, 2);
  const [la, lb, sa, sb] = await Promise.all([
    model.logits(a),
    model.logits(b),
    model.loss(a),
    model.loss(b),
  ]);
  deepStrictEqual(la, await model.logits(a));
  deepStrictEqual(lb, await model.logits(b));
  ok(sa === await model.loss(a) && sb === await model.loss(b) && sa !== sb, `${sa} ${sb}`);
  model.destroy();
});

gpuTest("Decoder.fromSafetensors() explains a config it cannot infer", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 9 });
  await rejects(
    async () =>
      Decoder.fromSafetensors(
        gpu,
        await editedCheckpoint(model, (t) => delete t["token_emb.weight"]),
        { source: "m.safetensors" },
      ),
    /m\.safetensors is missing tensor "token_emb\.weight"/,
  );
  await rejects(
    async () =>
      Decoder.fromSafetensors(
        gpu,
        await editedCheckpoint(model, (t) =>
          t["layers.0.0.to_qkv.weight"] = { shape: [70, 24], data: new Float32Array(70 * 24) }),
      ),
    /"layers\.0\.0\.to_qkv\.weight" has shape \[70,24\], which is not \[3·heads·8, 24\]/,
  );
  // a promise that rejects (not a synchronous throw) for a garbled file
  await rejects(
    Decoder.fromSafetensors(gpu, new Uint8Array([1, 2, 3]), { source: "bad.safetensors" }),
    /bad\.safetensors is not a valid safetensors file/,
  );
  model.destroy();
});

gpuTest("Decoder.weights name every parameter once, by its PyTorch state_dict name", (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 1 });
  const param = (name: string) => model.params.get(name)!;
  const named: [GPUBuffer, string][] = [
    [model.weights.tokenEmbedding, "token_emb.weight"],
    [model.weights.finalNorm, "to_logits.0.weight"],
    [model.weights.logitsWeight, "to_logits.1.weight"],
  ];
  model.weights.layers.forEach((layer, i) => {
    named.push(
      [layer.norm, `layers.${i}.0.norm.weight`],
      [layer.qkv, `layers.${i}.0.to_qkv.weight`],
      [layer.attnOut, `layers.${i}.0.to_out.weight`],
      [layer.ffNorm, `layers.${i}.1.0.weight`],
      [layer.ffIn, `layers.${i}.1.1.weight`],
      [layer.ffInBias, `layers.${i}.1.1.bias`],
      [layer.ffOut, `layers.${i}.1.3.weight`],
      [layer.ffOutBias, `layers.${i}.1.3.bias`],
    );
  });
  deepStrictEqual(model.weights.layers.length, CFG.depth);
  for (const [buffer, name] of named) ok(buffer === param(name), `${name} is not its named weight`);
  deepStrictEqual(new Set(named.map(([b]) => b)).size, model.params.size);
  model.destroy();
});

gpuTest("Decoder.destroy() frees the decode caches it pooled", async (gpu) => {
  const model = Decoder.create(gpu, CFG, { seed: 2 });
  await baseDecoding(model, tokenRows(2, 3, 5), 8, { temperature: 0 });
  const pooled = model.caches.size;
  ok(pooled >= 1, "a decode leaves its cache in the model's pool");
  // the next decode of that shape reuses it; a second holder gets another
  const first = model.caches.acquire(2, 8), second = model.caches.acquire(2, 8);
  ok(first.cache !== second.cache, "a cache in use is not handed out twice");
  second.release();
  deepStrictEqual(model.caches.acquire(2, 8).cache, second.cache);
  const held: KVCache[] = [first.cache, second.cache];
  const freed = new Set<KVCache>();
  for (const cache of held) {
    const destroy = cache.destroy.bind(cache);
    cache.destroy = () => {
      freed.add(cache);
      destroy();
    };
  }
  model.destroy();
  deepStrictEqual(model.caches.size, 0);
  ok(held.every((c) => freed.has(c)), "destroy() freed every pooled cache");
  // the GPU agrees: writing into a freed cache buffer is an error
  gpu.device.pushErrorScope("validation");
  gpu.device.queue.writeBuffer(first.cache.layers[0], 0, new Float32Array(4));
  ok(await gpu.device.popErrorScope(), "a pooled cache buffer is still alive after destroy()");
});

/** The model's checkpoint as PyTorch may save it: without rotary_emb.inv_freq (and specdec's metadata). */
async function withoutInvFreq(model: Decoder, keepMetadata = false): Promise<Uint8Array> {
  const { readSafetensors } = await import("../model/checkpoint.ts");
  const { tensors, metadata } = readSafetensors(await model.toSafetensors());
  tensors.delete("rotary_emb.inv_freq");
  return writeSafetensors(Object.fromEntries(tensors), keepMetadata ? metadata : { format: "pt" });
}

gpuTest(
  "Decoder.fromSafetensors() without rotary_emb.inv_freq takes heads from the caller, never a guess",
  async (gpu) => {
    const cfg = {
      numTokens: 11,
      dim: 16,
      depth: 1,
      heads: 4,
      dimHead: 32,
      ffMult: 1,
      maxSeqLen: 8,
    };
    const model = Decoder.create(gpu, cfg, { seed: 5 });
    const bytes = await withoutInvFreq(model);
    const tokens = tokenRows(2, 5, 3, cfg.numTokens);
    const want = await model.logits(tokens);
    // 3·heads·dimHead = 384 rows: seven even splits, so no guess
    await rejects(
      Decoder.fromSafetensors(gpu, bytes, { source: "nofreq.safetensors" }),
      new RegExp(
        'nofreq\\.safetensors has no "rotary_emb\\.inv_freq" and no specdec metadata, and ' +
          '"layers\\.0\\.0\\.to_qkv\\.weight" of shape \\[384, 16\\] allows 7 heads×dimHead splits: ' +
          "64×2, 32×4, 16×8, 8×16, 4×32, 2×64, 1×128; pass \\{ heads \\} or \\{ dimHead \\}",
      ),
    );
    for (const given of [{ heads: 4 }, { dimHead: 32 }, { heads: 4, dimHead: 32 }]) {
      const loaded = await Decoder.fromSafetensors(gpu, bytes, { ...given, maxSeqLen: 8 });
      deepStrictEqual(loaded.config, model.config, JSON.stringify(given));
      deepStrictEqual(await loaded.logits(tokens), want, `logits with ${JSON.stringify(given)}`);
      loaded.destroy();
    }
    // specdec's own metadata says heads and dimHead: no option needed
    const withMeta = await Decoder.fromSafetensors(gpu, await withoutInvFreq(model, true), {
      maxSeqLen: 8,
    });
    deepStrictEqual(withMeta.config, model.config);
    withMeta.destroy();
    // options that contradict the file, or do not divide it, are refused by name
    const full = await model.toSafetensors();
    await rejects(
      Decoder.fromSafetensors(gpu, full, { heads: 2, source: "m.safetensors" }),
      /m\.safetensors: rotary_emb\.inv_freq gives dimHead 32 but option heads 2 gives 64/,
    );
    await rejects(
      Decoder.fromSafetensors(gpu, bytes, { heads: 5 }),
      /"layers\.0\.0\.to_qkv\.weight" has shape \[384, 16\], which is not \[3·5·dimHead, 16\] for option heads 5/,
    );
    await rejects(
      Decoder.fromSafetensors(gpu, bytes, { dimHead: 0 }),
      /option dimHead must be a positive integer, got number 0/,
    );
    await rejects(
      Decoder.fromSafetensors(gpu, bytes, { heads: 128 }),
      /dimHead 1 \(from option heads 128\) is odd/,
    );
    model.destroy();
  },
);

gpuTest(
  "Decoder.fromSafetensors() refuses non-finite weights unless allowNonFinite, then warns once",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 2 });
    const bytes = await editedCheckpoint(model, (t) => {
      t["to_logits.1.weight"].data[5] = NaN;
      t["layers.1.1.1.weight"].data[0] = Infinity;
      t["layers.1.1.1.weight"].data[7] = -Infinity;
    });
    await rejects(
      Decoder.fromSafetensors(gpu, bytes, { source: "nan.safetensors" }),
      new RegExp(
        'nan\\.safetensors has non-finite weights in "layers\\.1\\.1\\.1\\.weight" \\(2 ±Infinity of 2304 values\\), ' +
          '"to_logits\\.1\\.weight" \\(1 NaN of 456 values\\); refusing to load it \\(pass \\{ allowNonFinite: true \\}',
      ),
    );
    const warnings: string[] = [];
    const warn = console.warn;
    console.warn = (...args: unknown[]) => void warnings.push(args.join(" "));
    try {
      const loaded = await Decoder.fromSafetensors(gpu, bytes, { allowNonFinite: true });
      ok(Number.isNaN((await loaded.paramValues())["to_logits.1.weight"][5]), "the NaN was loaded");
      loaded.destroy();
    } finally {
      console.warn = warn;
    }
    deepStrictEqual(warnings.length, 1, warnings.join("\n"));
    ok(
      /non-finite weights in "layers\.1\.1\.1\.weight".*"to_logits\.1\.weight"/.test(warnings[0]),
      warnings[0],
    );
    model.destroy();
  },
);

gpuTest(
  "Decoder.fromSafetensors() names the mis-shaped embedding, not its neighbours",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 9 });
    await rejects(
      async () =>
        Decoder.fromSafetensors(
          gpu,
          await editedCheckpoint(
            model,
            (t) => t["token_emb.weight"] = { shape: [19, 23], data: new Float32Array(19 * 23) },
          ),
          { source: "emb.safetensors" },
        ),
      /emb\.safetensors tensor "token_emb\.weight" has shape \[19,23\], expected \[19,24\]/,
    );
    await rejects(
      async () =>
        Decoder.fromSafetensors(
          gpu,
          await editedCheckpoint(
            model,
            (t) => t["to_logits.1.weight"] = { shape: [18, 24], data: new Float32Array(18 * 24) },
          ),
        ),
      /"token_emb\.weight" has 19 rows but "to_logits\.1\.weight" has 18: both must be numTokens/,
    );
    model.destroy();
  },
);

gpuTest(
  "token arguments that are not number[][] say what they got, strings quoted",
  async (gpu) => {
    const model = Decoder.create(gpu, CFG, { seed: 1 });
    const bad = (v: unknown) => model.logits(v as number[][]);
    await rejects(
      bad("abc"),
      /tokens must be an array of rows \(number\[\]\[\]\), got string "abc"/,
    );
    await rejects(bad(null), /tokens must be an array of rows \(number\[\]\[\]\), got null/);
    await rejects(bad(7), /got number 7/);
    await rejects(bad(new Uint32Array([1, 2])), /got Uint32Array/);
    await rejects(
      bad(["ab"]),
      /tokens must be an array of rows \(number\[\]\[\]\); tokens\[0\] is string "ab", not an array of tokens/,
    );
    await rejects(bad([[1, 2], 3]), /tokens\[1\] is number 3/);
    await rejects(bad([[1, "2"]]), /tokens\[0\]\[1\] = string "2" is not a token/);
    await rejects(bad([[1, null]]), /tokens\[0\]\[1\] = null is not a token/);
    const { validateTokens } = await import("../model/decoder.ts");
    throws(
      () => validateTokens("hi" as unknown as number[][], 4, 4, "prompt"),
      /prompt must be an array of rows \(number\[\]\[\]\), got string "hi"/,
    );
    model.destroy();
  },
);
