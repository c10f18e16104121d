/**
 * Early exit (`DecoderConfig.earlyExitLayer`): the config's errors, the exit head's forward
 * against the float64 reference, the joint loss's gradients against finite differences,
 * checkpoints that keep the exit head, and self-speculative decoding (the model as its own draft)
 * exact: greedy equal to the model's greedy, the sampled law through the chi-square test, which a
 * broken acceptance kernel fails.
 */
import { deepStrictEqual, match, ok, rejects, throws } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { resolveConfig } from "../model/config.ts";
import { readModelCheckpoint, writeModelCheckpoint } from "../model/checkpoint.ts";
import { paramSpecs } from "../model/params.ts";
import { decoderHeadsRef, decoderLossRef, type RefConfig } from "./reference/model.ts";
import { assertClose, gpuTest, randomF32, randomRows } from "./helpers.ts";
import type { Gpu } from "../kernels/gpu.ts";
import type { DecoderConfig } from "../model/config.ts";
import { baseDecoding, speculativeDecoding, speculativeDecodingWith } from "../model/decoding.ts";
import { type AcceptKernel, acceptKernel } from "../kernels/speculative.ts";
import { brokenAcceptKernel } from "./kernels/broken_accept.ts";
import { chiSquare, probsRef } from "./reference/sampling.ts";
import { selfSpeculativeEngine } from "../model/self_speculative.ts";
import { slotCopyKernel } from "../kernels/hidden_slots.ts";
import { draftStepKernel } from "../kernels/decode_step.ts";
import { stateOffsets } from "../kernels/decode_state.ts";
import { speculativeStatsWidth } from "../kernels/speculative.ts";
import { parseFlags, runConfig, savedArgs } from "../cli/train_options.ts";

/** Tiny models with an exit head after block 1 of 3, without and with an extra block. */
const EXIT: RefConfig = {
  numTokens: 11,
  dim: 8,
  depth: 3,
  heads: 2,
  dimHead: 4,
  ffMult: 4,
  earlyExitLayer: 1,
};
const EXIT_EXTRA: RefConfig = { ...EXIT, earlyExitLayer: 2, earlyExitExtraBlocks: 1 };

Deno.test("config: earlyExitLayer and earlyExitExtraBlocks are validated by name and limit", () => {
  const base = { numTokens: 16, dim: 8, depth: 3 };
  deepStrictEqual(resolveConfig(base).earlyExitLayer, 0);
  deepStrictEqual(resolveConfig({ ...base, earlyExitLayer: undefined }).earlyExitLayer, 0);
  deepStrictEqual(resolveConfig({ ...base, earlyExitLayer: 2 }).earlyExitLayer, 2);
  throws(
    () => resolveConfig({ ...base, earlyExitLayer: 3 }),
    /config\.earlyExitLayer must be an integer from 1 to depth − 1 = 2 .*got 3/,
  );
  throws(() => resolveConfig({ ...base, earlyExitLayer: -1 }), /config\.earlyExitLayer .*got -1/);
  throws(() => resolveConfig({ ...base, earlyExitLayer: 1.5 }), /config\.earlyExitLayer .*1\.5/);
  throws(
    () => resolveConfig({ ...base, earlyExitLayer: 1, earlyExitExtraBlocks: -2 }),
    /config\.earlyExitExtraBlocks must be a non-negative integer, got -2/,
  );
  throws(
    () => resolveConfig({ ...base, earlyExitExtraBlocks: 1 }),
    /config\.earlyExitExtraBlocks is 1 but config\.earlyExitLayer is 0/,
  );
});

Deno.test("params: the exit head and extra blocks have the reference's state_dict names", () => {
  const names = paramSpecs(resolveConfig(EXIT_EXTRA)).map((s) => s.name);
  ok(names.includes("early_exit_transformer_blocks.0.0.to_qkv.weight"));
  ok(names.includes("early_exit_transformer_blocks.0.1.3.bias"));
  deepStrictEqual(names.slice(-2), [
    "to_early_exit_logits.0.weight",
    "to_early_exit_logits.1.weight",
  ]);
  // without an exit head, nothing changes
  const plain = paramSpecs(resolveConfig({ ...EXIT, earlyExitLayer: 0 })).map((s) => s.name);
  ok(!plain.some((n) => n.includes("early_exit")));
});

/** Float64 copies of a model's parameters. */
async function params64(model: Decoder): Promise<Record<string, Float64Array>> {
  const p = await model.paramValues();
  return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Float64Array.from(v)]));
}

for (const cfg of [EXIT, EXIT_EXTRA]) {
  const what = `k=${cfg.earlyExitLayer}, ${cfg.earlyExitExtraBlocks ?? 0} extra blocks`;

  gpuTest(`exit head (${what}): both heads' logits match the float64 reference`, async (gpu) => {
    const model = Decoder.create(gpu, cfg, { seed: 3 });
    const tokens = randomRows(2, 7, cfg.numTokens, 9);
    const p = await params64(model);
    const ref = decoderHeadsRef(p, cfg, tokens);
    assertClose(await model.logits(tokens), ref.logits, { atol: 2e-5, label: "final logits" });
    assertClose(await model.exitLogits(tokens), ref.exitLogits!, {
      atol: 2e-5,
      label: "exit logits",
    });
    // the two heads differ (a test comparing one with itself would prove nothing)
    ok(ref.logits.some((v, i) => Math.abs(v - ref.exitLogits![i]) > 1e-3));
    // loss() is the joint objective: the two cross-entropies summed
    assertClose([await model.loss(tokens)], [decoderLossRef(p, cfg, tokens)], {
      atol: 1e-5,
      label: "joint loss",
    });
    model.destroy();
  });

  gpuTest(
    `exit head (${what}): gradients match finite differences of the joint loss`,
    async (gpu) => {
      const model = Decoder.create(gpu, cfg, { seed: 11 });
      await gradientOracle(model, cfg, randomRows(2, 6, cfg.numTokens, 5));
      model.destroy();
    },
  );
}

/**
 * Every parameter's gradient (all elements of small tensors, 40 spread over larger ones) against
 * central finite differences of the float64 reference loss.
 */
async function gradientOracle(model: Decoder, cfg: RefConfig, tokens: number[][]): Promise<void> {
  const grads = await model.gradients(tokens);
  const p64 = await params64(model);
  const h = 1e-5;
  for (const [name, values] of Object.entries(p64)) {
    const stride = Math.max(1, Math.floor(values.length / 40));
    const idx = Array.from({ length: Math.ceil(values.length / stride) }, (_, j) => j * stride);
    const fd = new Float64Array(idx.length);
    for (const [j, i] of idx.entries()) {
      const keep = values[i];
      values[i] = keep + h;
      const up = decoderLossRef(p64, cfg, tokens);
      values[i] = keep - h;
      const down = decoderLossRef(p64, cfg, tokens);
      values[i] = keep;
      fd[j] = (up - down) / (2 * h);
    }
    assertClose(idx.map((i) => grads[name][i]), fd, {
      atol: 2e-5,
      rtol: 2e-3,
      label: `d loss / d ${name}`,
    });
  }
}

gpuTest("checkpoint: the exit head and its layer survive a round trip", async (gpu: Gpu) => {
  const model = Decoder.create(gpu, EXIT_EXTRA, { seed: 2 });
  const bytes = await model.toSafetensors();
  const again = await Decoder.fromSafetensors(gpu, bytes);
  deepStrictEqual(again.config, model.config);
  deepStrictEqual(again.config.earlyExitLayer, 2);
  deepStrictEqual(again.config.earlyExitExtraBlocks, 1);
  const tokens = randomRows(1, 5, EXIT.numTokens, 1);
  deepStrictEqual(await again.exitLogits(tokens), await model.exitLogits(tokens));
  // a PyTorch file has the names but not k: the caller says it, or loading says what is missing
  const { tensors } = (await import("../model/checkpoint.ts")).readSafetensors(bytes);
  const plain: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, t] of tensors) plain[k] = t;
  const { writeSafetensors } = await import("../model/checkpoint.ts");
  const torchFile = writeSafetensors(plain, { format: "pt" });
  throws(
    () => readModelCheckpoint(torchFile, { source: "t.safetensors" }),
    /t\.safetensors has an exit head \("to_early_exit_logits\.1\.weight"\) but does not say .*earlyExitLayer/,
  );
  deepStrictEqual(
    readModelCheckpoint(torchFile, { earlyExitLayer: 2 }).config.earlyExitLayer,
    2,
  );
  throws(
    () => readModelCheckpoint(bytes, { earlyExitLayer: 1, source: "m" }),
    /m: option earlyExitLayer 1 disagrees with the specdec metadata's earlyExitLayer 2/,
  );
  // an exit head's tensor missing is named
  delete plain["to_early_exit_logits.1.weight"];
  throws(
    () => readModelCheckpoint(writeSafetensors(plain, { format: "pt" }), { earlyExitLayer: 2 }),
    /missing tensor "to_early_exit_logits\.1\.weight"/,
  );
  await rejects(
    async () =>
      await (await Decoder.fromSafetensors(gpu, torchFile, { earlyExitLayer: 2 })).exitLogits([[
        99,
      ]]),
    /not a token/,
  );
  model.destroy();
  again.destroy();
  match("ok", /ok/);
});

/** A model with an exit head for the decoding tests (small vocabulary, short sequences). */
const DEC_CFG: DecoderConfig = {
  numTokens: 16,
  dim: 16,
  depth: 3,
  heads: 2,
  dimHead: 8,
  ffMult: 2,
  maxSeqLen: 64,
  earlyExitLayer: 1,
};

for (const extra of [0, 1]) {
  gpuTest(
    `self-speculative greedy (${extra} extra blocks) equals baseDecoding() greedy`,
    async (gpu) => {
      const model = await agreeingModel(gpu, { ...DEC_CFG, earlyExitExtraBlocks: extra }, 4);
      // rows with different prompts accept at different rates, so they drift apart
      const prompt = [[1, 2, 3], [9, 9, 4], [15, 0, 7]];
      const base = await baseDecoding(model, prompt, 40, { temperature: 0 });
      for (const gamma of [1, 3, 5]) {
        const spec = await speculativeDecoding(model, model, prompt, 40, { gamma, temperature: 0 });
        deepStrictEqual(spec.tokens, base.tokens, `gamma ${gamma}`);
        ok(spec.steps < 37, `gamma ${gamma}: ${spec.steps} steps, nothing accepted`);
      }
      // adaptive draft length on the exit head: the threshold is the median confidence of the
      // exit head's argmax along the greedy output, so rows stop drafting at their own points
      const V = DEC_CFG.numTokens;
      const conf: number[] = [];
      const exit = await model.exitLogits(base.tokens.map((r, b) => [...prompt[b], ...r]));
      for (let t = 0; t < exit.length / V; t++) {
        const row = exit.subarray(t * V, (t + 1) * V);
        const m = Math.max(...row);
        conf.push(1 / row.reduce((s, x) => s + Math.exp(x - m), 0));
      }
      const draftThreshold = conf.sort((a, b) => a - b)[conf.length >> 1];
      const adaptive = await speculativeDecoding(model, model, prompt, 40, {
        gamma: 5,
        temperature: 0,
        draftThreshold,
      });
      deepStrictEqual(adaptive.tokens, base.tokens, `gamma 5, draftThreshold ${draftThreshold}`);
      ok(
        adaptive.draftedMean > 1.05 && adaptive.draftedMean < 4.95,
        `draftedMean ${adaptive.draftedMean}: the threshold never or always stopped drafting`,
      );
      model.destroy();
    },
  );
}

for (const [k, extra] of [[1, 0], [2, 1]]) {
  gpuTest(
    `self-speculative verification (k=${k}, ${extra} extra blocks): blocks < k run only in the ` +
      "one-token draft forwards, and the upper plan's logits are a full verification's bits",
    async (gpu) => {
      const cfg = { ...DEC_CFG, earlyExitLayer: k, earlyExitExtraBlocks: extra };
      const model = Decoder.create(gpu, cfg, { seed: 8 + k });
      const B = 3, G = 3, N = 12, L = 32, C = cfg.dim;
      const tokens = randomRows(B, N, cfg.numTokens, 17);
      const s = [4, 1, 6]; // each row's first verified position, pos − 1
      const at = (j: number) => Uint32Array.from(tokens.map((r, b) => r[s[b] + j]));
      const prefill = (cache: ReturnType<Decoder["createCache"]>) => {
        const plan = model.forwardPlan(cache, 6, false, extra > 0 ? "verify" : "full");
        gpu.write(plan.tokens, Uint32Array.from(tokens.flatMap((r) => r.slice(0, 6))));
        gpu.write(plan.start, new Uint32Array(B));
        gpu.run("prefill", plan.dispatches);
      };
      // today's verification: every block over the γ + 1 positions
      const fullCache = model.createCache(B, L);
      prefill(fullCache);
      const full = model.forwardPlan(fullCache, G + 1);
      gpu.write(
        full.tokens,
        Uint32Array.from(tokens.flatMap((r, b) => r.slice(s[b], s[b] + G + 1))),
      );
      gpu.write(full.start, Uint32Array.from(s));
      gpu.run("full verification", full.dispatches);
      const want = await gpu.readF32(full.logits);
      // the new one: one-token draft forwards x_0 .. x_γ, each copying its stream after block
      // k − 1 into its slot (the engine's copy kernel, slot from the row's pos), then blocks ≥ k
      const cache = model.createCache(B, L);
      prefill(cache);
      const d1 = model.forwardPlan(cache, 1, false, "draft");
      const upper = model.forwardPlan(cache, G + 1, false, "upper");
      const state = gpu.upload("state", Uint32Array.from(s.map((x) => x + 1)));
      const copy = slotCopyKernel(gpu, {
        state,
        start: d1.start,
        x: d1.layers[0].x,
        hidden: upper.layers[0].x,
        B,
        C,
        slots: G + 1,
        L,
      });
      const split = d1.draftSplit!;
      for (let j = 0; j <= G; j++) {
        gpu.write(d1.tokens, at(j));
        gpu.write(d1.start, Uint32Array.from(s.map((x) => x + j)));
        const d = d1.dispatches;
        gpu.run(`draft ${j}`, [...d.slice(0, split.lower), copy, ...d.slice(split.lower)]);
      }
      gpu.write(upper.start, Uint32Array.from(s));
      gpu.run("upper verification", upper.dispatches);
      const got = await gpu.readF32(upper.logits);
      // the same bits: a row's result does not depend on the forward's width
      const diff = got.findIndex((v, i) => v !== want[i]);
      ok(diff < 0, `logit ${diff}: ${got[diff]} ≠ the full verification's ${want[diff]}`);
      // fewer dispatches: no embedding, no blocks < k (they are the draft's first split.lower)
      ok(upper.dispatches.every((d) => !/embedding/i.test(d.label)));
      deepStrictEqual(upper.dispatches.length + split.lower, full.dispatches.length);
      ok(upper.dispatches.length < full.dispatches.length);
      // the engine verifies with that plan; the tail forward is the draft's up to its exit head
      const engine = selfSpeculativeEngine(model, [[1, 2, 3]], 10, { gamma: G }, acceptKernel);
      const part = (name: RegExp) => engine.parts.find((p) => name.test(p.name))!.dispatches;
      deepStrictEqual(part(/^target forward/).length, upper.dispatches.length);
      // on the fused path block k − 1's last GEMV stores the slot itself: no copy dispatch
      const folded = split.slotCopy !== undefined;
      deepStrictEqual(part(/^tail forward/).length, split.head + (folded ? 0 : 1));
      const labels = engine.step.map((d) => d.label);
      deepStrictEqual(labels.some((l) => l.startsWith("hidden slot copy")), !folded);
      deepStrictEqual(labels.some((l) => l.includes("slotCopy")), folded);
      engine.destroy();
      state.destroy();
      model.destroy();
    },
  );
}

gpuTest("the slot copy kernel matches its reference (odd sizes)", async (gpu) => {
  const B = 5, C = 13, S = 4, L = 20;
  const x = Float32Array.from({ length: B * C }, (_, i) => Math.sin(i * 1.7) + i / 100);
  const before = Float32Array.from({ length: B * S * C }, (_, i) => -1 - i);
  // pos per row; row 3 finished; row 4's start is below pos − 1 (stale), row 2's beyond slot G
  const pos = [7, 1, 3, L, 9], start = [8, 2, 2 + S, 4, 5];
  const state = gpu.upload("state", Uint32Array.from(pos));
  const xs = gpu.upload("x", x), hidden = gpu.upload("hidden", before);
  const startBuf = gpu.upload("start", Uint32Array.from(start));
  gpu.run("copy", [
    slotCopyKernel(gpu, { state, start: startBuf, x: xs, hidden, B, C, slots: S, L }),
  ]);
  const want = Float32Array.from(before);
  for (let b = 0; b < B; b++) {
    const slot = start[b] + 1 - pos[b];
    if (pos[b] >= L || slot < 0 || slot >= S) continue;
    want.set(x.subarray(b * C, (b + 1) * C), (b * S + slot) * C);
  }
  deepStrictEqual(await gpu.readF32(hidden), want);
  [state, xs, hidden, startBuf].forEach((b) => b.destroy());
});

gpuTest(
  "the last draft step's tail feed: each row's last draft x_k at pos − 1 + k (fixed and adaptive)",
  async (gpu) => {
    // k = gamma, or the row's own count: rows 1 and 3 stopped drafting early (flag), row 3 is
    // finished, row 0 drafts to the end; the feed must equal the verification input's token k
    const B = 5, V = 13, L = 20, G = 3, S = G + 1;
    const pos = [7, 4, 9, L, 2], drafted = [G - 1, 0x80000001, G - 1, 0x80000002, G - 1];
    const seq = Array.from({ length: B }, (_, b) => Array.from({ length: L }, (_, i) => b + i));
    for (const adaptive of [false, true]) {
      const layout = { batch: B, seqLen: L, statsWidth: speculativeStatsWidth(G, adaptive) };
      const o = stateOffsets(layout), words = new Uint32Array(o.words);
      words.set(pos, o.pos);
      seq.forEach((r, b) => words.set(r, o.seq + b * L));
      const SENT = 0xdead;
      const buf = (label: string, n: number) => gpu.upload(label, new Uint32Array(n).fill(SENT));
      const tt = buf("targetTokens", B * S), ts = buf("targetStart", B);
      const ft = buf("tailTokens", B), fs = buf("tailStart", B);
      const draft = gpu.upload("draft", Uint32Array.from({ length: B * G }, (_, i) => 50 + i));
      const dr = gpu.upload("drafted", Uint32Array.from(drafted));
      gpu.run("last draft step", [draftStepKernel(gpu, {
        logits: gpu.upload("logits", randomF32(B * V, 5, -2, 2)),
        state: gpu.upload("state", words),
        layout,
        q: gpu.buffer("q", B * G * V * 4),
        draft,
        targetTokens: tt,
        targetStart: ts,
        tailTokens: ft,
        tailStart: fs,
        n: 1,
        i: G,
        gamma: G,
        seed: 3,
        numTokens: V,
        temperature: 1,
        filterThres: 0.5,
        ...(adaptive ? { drafted: dr } : {}),
      })]);
      const target = await gpu.readU32(tt), start = await gpu.readU32(ts);
      // rows still drafting reach k = gamma; with an adaptive length a row that stopped keeps
      // its own count, and so does a finished one (as the tail feed kernel did)
      const k = drafted.map((d, b) =>
        adaptive && (pos[b] >= L || d !== G - 1) ? Math.min(d & 0xffff, G) : G
      );
      deepStrictEqual([...start], pos.map((p) => p - 1), `${adaptive}: target start`);
      deepStrictEqual(
        [...await gpu.readU32(ft)],
        k.map((k, b) => target[b * S + k]),
        `${adaptive}: tail tokens`,
      );
      deepStrictEqual(
        [...await gpu.readU32(fs)],
        k.map((k, b) => pos[b] - 1 + k),
        `${adaptive}: tail start`,
      );
      // the drafted rows' last token is the one just sampled (no sentinel left)
      ok(k.every((k, b) => target[b * S + k] !== SENT), `${adaptive}: ${[...target]}`);
    }
  },
);

gpuTest("the self-speculative engine needs an exit head", (gpu) => {
  const plain = Decoder.create(gpu, { ...DEC_CFG, earlyExitLayer: 0 });
  throws(
    () => selfSpeculativeEngine(plain, [[1, 2]], 8, {}, acceptKernel),
    /same model as target and draft needs a model with an exit head/,
  );
  plain.destroy();
});

/**
 * A model whose exit head often agrees with its final head: the final head's weights copied into
 * the exit head and the blocks from k on (and the extra blocks) damped, so the streams entering
 * the two heads are close but not equal (a random exit head would never be accepted).
 */
async function agreeingModel(gpu: Gpu, cfg: DecoderConfig, seed: number): Promise<Decoder> {
  const model = Decoder.create(gpu, cfg, { seed });
  const p = await model.paramValues();
  p["to_early_exit_logits.0.weight"] = p["to_logits.0.weight"];
  p["to_early_exit_logits.1.weight"] = p["to_logits.1.weight"];
  for (const [name, v] of Object.entries(p)) {
    const l = Number(/^layers\.(\d+)\./.exec(name)?.[1] ?? -1);
    const damped = l >= model.config.earlyExitLayer || name.startsWith("early_exit_");
    if (damped && /(to_out\.weight|1\.3\.(weight|bias))$/.test(name)) {
      v.forEach((x, i) => v[i] = x * 0.1);
    }
  }
  const bytes = writeModelCheckpoint(model.config, Object.values(p), model.invFreq);
  model.destroy();
  return await Decoder.fromSafetensors(gpu, bytes);
}

/** The model's exact joint law of the next two tokens after `prompt`, (V, V) flattened. */
async function exactJoint(model: Decoder, prompt: number[]): Promise<Float64Array> {
  const V = model.config.numTokens, P = prompt.length;
  const first = await model.logits([prompt]);
  const p1 = probsRef(first.subarray((P - 1) * V, P * V), 0, 1);
  const second = await model.logits(Array.from({ length: V }, (_, t) => [...prompt, t]));
  const joint = new Float64Array(V * V);
  for (let t = 0; t < V; t++) {
    const o = (t * (P + 1) + P) * V;
    const p2 = probsRef(second.subarray(o, o + V), 0, 1);
    for (let u = 0; u < V; u++) joint[t * V + u] = p1[t] * p2[u];
  }
  return joint;
}

gpuTest(
  "self-speculative decoding keeps the model's joint law; the broken residual is rejected",
  async (gpu) => {
    const V = 8, B = 1024, seqLen = 4;
    const cfg = { ...DEC_CFG, numTokens: V, depth: 2, earlyExitExtraBlocks: 1, maxSeqLen: 16 };
    const model = Decoder.create(gpu, cfg, { seed: 21 });
    const group = [[1, 2], [5, 3]]; // rows alternate two prompts
    const prompt = Array.from({ length: B }, (_, b) => group[b % 2]);
    const laws = [await exactJoint(model, group[0]), await exactJoint(model, group[1])];
    // gamma 1: the second token often comes from a second step, which reads the shared cache
    const run = async (accept: AcceptKernel, gamma: number) => {
      const counts = [new Array(V * V).fill(0), new Array(V * V).fill(0)];
      for (const seed of [1, 2]) {
        const out = await speculativeDecodingWith(accept, model, model, prompt, seqLen, {
          gamma,
          temperature: 1,
          filterThres: 0,
          seed,
        });
        out.tokens.forEach((r, b) => counts[b % 2][r[0] * V + r[1]]++);
        ok(out.acceptedMean > 0.1 && out.acceptedMean < gamma - 0.1, `${out.acceptedMean}`);
      }
      return counts.map((c, g) => chiSquare(c, laws[g]));
    };
    for (const gamma of [1, 2]) {
      for (const [g, fit] of (await run(acceptKernel, gamma)).entries()) {
        ok(fit.pValue > 1e-3, `gamma ${gamma} prompt ${g}: exact rejected ${JSON.stringify(fit)}`);
      }
    }
    const broken = await run(brokenAcceptKernel, 2);
    ok(
      broken.some((fit) => fit.pValue < 1e-6),
      `broken sampler accepted ${JSON.stringify(broken)}`,
    );
    model.destroy();
  },
);

Deno.test("train.ts: --early-exit and --early-exit-extra-blocks are checked and saved", () => {
  const adapter = { isSoftware: true, adapterName: "test" };
  const run = (...args: string[]) =>
    runConfig(
      parseFlags(["--preset", "small", "--run-dir", "/tmp/x", ...args]),
      undefined,
      adapter,
    );
  const c = run("--early-exit", "2", "--early-exit-extra-blocks", "1");
  deepStrictEqual([c.earlyExit, c.earlyExitExtraBlocks], [2, 1]);
  deepStrictEqual(savedArgs(c)["early-exit"], 2);
  deepStrictEqual(savedArgs(c)["early-exit-extra-blocks"], 1);
  deepStrictEqual(run().earlyExit, 0);
  throws(() => run("--early-exit", "4"), /--early-exit "4" must be below the target's depth 4/);
  throws(() => run("--early-exit=1.5"), /--early-exit must be an integer ≥ 0, got "1.5"/);
  throws(() => run("--early-exit-extra-blocks", "1"), /needs --early-exit K/);
  // resuming keeps the saved value
  const saved = savedArgs(c);
  const again = runConfig(parseFlags(["--resume", "/tmp/x"]), saved, adapter);
  deepStrictEqual([again.earlyExit, again.earlyExitExtraBlocks], [2, 1]);
});
