/**
 * Distillation: the KL kernel against the float64 reference (odd sizes, temperatures, extreme
 * logits, a split grid, accumulation), the reference against finite differences, and the
 * Trainer's `distill` option: zero KL and gradient for a copy of the teacher, the combined
 * gradient (1 − w)·dCE + w·dKL, accumulation, the teacher check, and KL falling faster.
 */
import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { type Dispatch, type Gpu, grid } from "../kernels/gpu.ts";
import { klDivergence } from "../kernels/distill.ts";
import { parseFlags, runConfig, savedArgs, UsageError } from "../cli/train_options.ts";
import { Decoder } from "../model/decoder.ts";
import { nextTokenTargets } from "../model/loss_plan.ts";
import { Trainer } from "../model/trainer.ts";
import { assertClose, gpuTest, randomF32, randomNormal, randomRows } from "./helpers.ts";
import { klDivergenceRef } from "./reference/distill.ts";
import { crossEntropyRef, finiteDifferences, sumLossRef } from "./reference/ops.ts";

Deno.test("klDivergenceRef() dStudent matches finite differences; KL ≥ 0, 0 for equal rows", () => {
  const T = 3, V = 7;
  const s = randomNormal(T * V, 1, 2), t = randomNormal(T * V, 2, 2);
  for (const [tau, scale] of [[1, 1], [2.5, 0.3], [0.7, 2]]) {
    const { losses, dStudent } = klDivergenceRef(s, t, T, V, tau, scale);
    ok(losses.every((l) => l > 0), `losses ${losses}`);
    const fd = finiteDifferences(
      (x) => sumLossRef(klDivergenceRef(x, t, T, V, tau, scale).losses, scale),
      s,
    );
    assertClose(dStudent, fd, { atol: 1e-8, rtol: 1e-6, label: `dStudent τ=${tau}` });
  }
  const same = klDivergenceRef(s, s, T, V);
  assertClose(same.losses, [0, 0, 0], { atol: 1e-15, label: "KL(p ‖ p)" });
  // a shift of a row's logits changes nothing
  const shifted = klDivergenceRef(s.map((x) => x + 100), t, T, V);
  assertClose(shifted.losses, klDivergenceRef(s, t, T, V).losses, { atol: 1e-12, label: "shift" });
});

interface KlCase {
  T: number;
  V: number;
  tau?: number;
  scale?: number;
  withGrad?: boolean;
  accumulate?: boolean;
  split?: boolean;
  offsetRows?: number; // teacher rows before the T used (a micro-batch of a store)
}

/** Runs klDivergence (dStudent preset to garbage, or to a prior gradient) against the reference. */
async function checkKl(
  gpu: Gpu,
  student: Float32Array<ArrayBuffer>,
  teacher: Float32Array<ArrayBuffer>,
  c: KlCase,
  tol = { atol: 2e-5, rtol: 1e-4 },
): Promise<void> {
  const { T, V, tau = 1, scale = 1, withGrad = true, accumulate = false, offsetRows = 0 } = c;
  const sb = gpu.upload("student", student);
  const padded = new Float32Array((offsetRows + T) * V);
  padded.fill(NaN); // rows before the offset must not be read
  padded.set(teacher, offsetRows * V);
  const tb = gpu.upload("teacher", padded);
  const losses = gpu.upload("losses", randomF32(T, 5));
  const prior = randomF32(T * V, 6);
  const dStudent = withGrad ? gpu.upload("dStudent", prior) : undefined;
  let d: Dispatch = klDivergence(gpu, {
    student: sb,
    teacher: tb,
    teacherOffset: offsetRows * V,
    losses,
    dStudent,
    T,
    V,
    temperature: tau,
    scale,
    accumulate,
  });
  if (c.split) d = { ...d, workgroups: grid(d.workgroups[0], 3) };
  gpu.run("klDivergence", [d]);
  const ref = klDivergenceRef(student, teacher, T, V, tau, scale);
  const label = `T=${T} V=${V} τ=${tau}`;
  const got = await gpu.readF32(losses);
  ok(got.every(Number.isFinite), `${label}: losses ${got}`);
  assertClose(got, ref.losses, { ...tol, label: `${label} losses` });
  if (dStudent) {
    const want = accumulate ? ref.dStudent.map((g, i) => g + prior[i]) : ref.dStudent;
    const g = await gpu.readF32(dStudent);
    ok(g.every(Number.isFinite), `${label}: dStudent not finite`);
    assertClose(g, want, { atol: 1e-6, rtol: 1e-4, label: `${label} dStudent` });
  }
}

gpuTest("klDivergence() matches the reference on odd sizes and temperatures", async (gpu) => {
  const cases: KlCase[] = [
    { T: 5, V: 37 },
    { T: 5, V: 37, tau: 2, scale: 0.3 },
    { T: 1, V: 300, tau: 0.5 },
    { T: 3, V: 1 },
    { T: 6, V: 256, scale: 1 / 6 },
    { T: 7, V: 2, tau: 1.7, withGrad: false },
    { T: 5, V: 37, accumulate: true, scale: 0.25 },
    { T: 11, V: 9, split: true },
    { T: 4, V: 19, offsetRows: 8, tau: 1.3 }, // micro-batch 2 of a (3, 4, 19) store
    { T: 3, V: 5, offsetRows: 3, withGrad: false },
  ];
  for (const [i, c] of cases.entries()) {
    const student = randomNormal(c.T * c.V, 10 + i, 2),
      teacher = randomNormal(c.T * c.V, 40 + i, 2);
    await checkKl(gpu, student, teacher, c);
  }
});

gpuTest("klDivergence() stays finite and exact for huge and −∞-like logits", async (gpu) => {
  const T = 5, V = 37;
  const s = randomNormal(T * V, 3, 3), t = randomNormal(T * V, 4, 3);
  for (let v = 0; v < V; v++) {
    s[v] += 3e4; // row 0: both shifted far up (exp would overflow without the max shift)
    t[v] += 3e4;
    s[V + v] -= 3e4; // row 1: student far down, teacher far up
    t[V + v] += 1e4;
  }
  // row 2: the teacher gives 0 to half the tokens (−1e30 or −∞: a masked token), the student to
  // some of those (0 · (−∞ − −∞) must not make a NaN)
  for (let v = 0; v < V; v += 2) t[2 * V + v] = v % 4 === 0 ? -Infinity : -1e30;
  for (let v = 0; v < V; v += 4) s[2 * V + v] = v % 8 === 0 ? -Infinity : -1e30;
  s[2 * V + 2] = -1e30;
  for (let v = 1; v < V; v += 6) s[3 * V + v] = -1e30; // row 3: student 0 where the teacher isn't
  t[4 * V + 5] = 90; // row 4: one dominant teacher logit
  // row 3's loss is ~1e29: compare relatively there
  await checkKl(gpu, s, t, { T, V }, { atol: 2e-4, rtol: 1e-4 });
  await checkKl(gpu, s, t, { T, V, tau: 3, withGrad: false }, { atol: 2e-4, rtol: 1e-4 });
});

gpuTest("klDivergence() refuses a bad temperature and an aliased gradient", (gpu) => {
  const b = gpu.buffer("x", 16), l = gpu.buffer("l", 4);
  for (const temperature of [0, -1, NaN, Infinity]) {
    throws(
      () => klDivergence(gpu, { student: b, teacher: b, losses: l, T: 1, V: 4, temperature }),
      /temperature must be a finite number > 0/,
    );
  }
  throws(
    () => klDivergence(gpu, { student: b, teacher: b, losses: l, dStudent: b, T: 1, V: 4 }),
    /must not alias/,
  );
});

// ---------------------------------------------------------------------------------------------
// Trainer

const CFG = { numTokens: 13, dim: 16, depth: 1, heads: 2, dimHead: 8 };

gpuTest("distilling toward an identical teacher with w = 1: KL and gradient ~0", async (gpu) => {
  for (const seed of [5, 6]) { // 6: a different draft, which must see KL and a gradient
    const teacher = Decoder.create(gpu, CFG, { seed: 5 }),
      draft = Decoder.create(gpu, CFG, { seed });
    const opts = { batch: 2, seqLen: 7, lr: 1e-3, clipNorm: 1 };
    const tt = new Trainer(teacher, opts);
    const td = new Trainer(draft, { ...opts, distill: { teacher: tt, weight: 1 } });
    const mb = [randomRows(2, 7, CFG.numTokens, 3)];
    tt.step(mb);
    const r = await td.result(td.step(mb));
    const { ce, kl } = r.distill!;
    ok(ce > 1, `ce ${ce}`);
    if (seed === 5) {
      ok(Math.abs(kl) < 1e-6 && Math.abs(r.loss) < 1e-6, `kl ${kl}, loss ${r.loss}`);
      ok(r.gradNorm < 1e-6, `gradient norm ${r.gradNorm}`);
    } else {
      ok(kl > 1e-3 && Math.abs(r.loss - kl) < 1e-6, `kl ${kl}, loss ${r.loss}`);
      ok(r.gradNorm > 1e-3, `gradient norm ${r.gradNorm}`);
    }
    tt.destroy(), td.destroy(), teacher.destroy(), draft.destroy();
  }
});

gpuTest("a distilled draft's dLogits are (1 − w)·dCE + w·dKL (float64 reference)", async (gpu) => {
  const B = 2, n = 6, V = CFG.numTokens, w = 0.3, tau = 1.5;
  const teacher = Decoder.create(gpu, { ...CFG, depth: 2 }, { seed: 1 });
  const draft = Decoder.create(gpu, CFG, { seed: 2 });
  const opts = { batch: B, seqLen: n, lr: 1e-3, clipNorm: 1 };
  const tt = new Trainer(teacher, opts);
  const td = new Trainer(draft, { ...opts, distill: { teacher: tt, weight: w, temperature: tau } });
  const mb = [randomRows(B, n, V, 8)];
  tt.step(mb);
  const r = await td.result(td.step(mb));
  // the plans the trainers use (Decoder caches them by shape and lossScale)
  const tlp = teacher.trainingPlan(B, n, 1), dlp = draft.trainingPlan(B, n, 1 - w);
  const tLogits = await gpu.readF32(tlp.plan.logits), sLogits = await gpu.readF32(dlp.plan.logits);
  const targets = nextTokenTargets(mb[0], n), T = B * n;
  const ce = crossEntropyRef(sLogits, targets, T, V, (1 - w) / (B * (n - 1)));
  const kl = klDivergenceRef(sLogits, tLogits, T, V, tau, w / T);
  const want = ce.dLogits.map((g, i) => g + kl.dStudent[i]);
  assertClose(await gpu.readF32(dlp.dLogits!), want, { atol: 1e-7, rtol: 1e-4, label: "dLogits" });
  const meanCe = sumLossRef(ce.losses, 1 / (B * (n - 1))), meanKl = sumLossRef(kl.losses, 1 / T);
  assertClose([r.distill!.ce, r.distill!.kl, r.loss], [
    meanCe,
    meanKl,
    (1 - w) * meanCe + w * meanKl,
  ], {
    atol: 1e-5,
    rtol: 1e-5,
    label: "ce, kl, loss",
  });
  tt.destroy(), td.destroy(), teacher.destroy(), draft.destroy();
});

gpuTest("distilling 2 accumulated micro-batches equals one 2× batch", async (gpu) => {
  const data = randomRows(4, 7, CFG.numTokens, 21);
  const results = [];
  for (const N of [2, 1]) {
    const teacher = Decoder.create(gpu, { ...CFG, depth: 2 }, { seed: 3 });
    const draft = Decoder.create(gpu, CFG, { seed: 4 });
    const opts = { batch: 4 / N, seqLen: 7, accumulate: N, lr: 1e-2, clipNorm: 0.5 };
    const tt = new Trainer(teacher, opts);
    const td = new Trainer(draft, { ...opts, distill: { teacher: tt, weight: 0.5 } });
    const mbs = N === 2 ? [data.slice(0, 2), data.slice(2, 4)] : [data];
    const per = [];
    for (let s = 0; s < 2; s++) {
      tt.step(mbs);
      per.push(await td.result(td.step(mbs)));
    }
    results.push(per);
    tt.destroy(), td.destroy(), teacher.destroy(), draft.destroy();
  }
  for (let s = 0; s < 2; s++) {
    const [a, b] = [results[0][s], results[1][s]];
    assertClose(
      [a.loss, a.distill!.ce, a.distill!.kl, a.gradNorm],
      [b.loss, b.distill!.ce, b.distill!.kl, b.gradNorm],
      { atol: 1e-5, rtol: 1e-4, label: `step ${s}: loss, ce, kl, gradient norm` },
    );
  }
});

gpuTest("Trainer distill option errors name the problem", (gpu) => {
  const teacher = Decoder.create(gpu, CFG, { seed: 1 }),
    draft = Decoder.create(gpu, CFG, { seed: 2 });
  const opts = { batch: 2, seqLen: 5, lr: 1e-3 };
  const tt = new Trainer(teacher, opts);
  for (const weight of [0, -0.5, 1.5, NaN]) {
    throws(
      () => new Trainer(draft, { ...opts, distill: { teacher: tt, weight } }),
      /distill.weight must be in \(0, 1\]/,
    );
  }
  throws(
    () => new Trainer(draft, { ...opts, distill: { teacher: tt, weight: 0.5, temperature: 0 } }),
    /distill.temperature must be a finite number > 0, got 0/,
  );
  throws(
    () => new Trainer(draft, { ...opts, seqLen: 6, distill: { teacher: tt, weight: 0.5 } }),
    /\(batch, seqLen, accumulate, vocabulary\) = \(2, 5, 1, 13\), this trainer \(2, 6, 1, 13\)/,
  );
  throws(
    () => new Trainer(teacher, { ...opts, distill: { teacher: tt, weight: 0.5 } }),
    /trains this same model/,
  );
  const td = new Trainer(draft, { ...opts, distill: { teacher: tt, weight: 0.5 } });
  const a = [randomRows(2, 5, 13, 1)], b = [randomRows(2, 5, 13, 2)];
  throws(() => td.step(a), /distillation step 0: the teacher's last step was not on these/);
  tt.step(a);
  throws(() => td.step(b), /distillation step 0: the teacher's last step was not on these/);
  deepStrictEqual(td.step(a), 0);
  tt.destroy(), td.destroy(), teacher.destroy(), draft.destroy();
});

/** Mean KL(teacher ‖ draft) on a batch, float64 from both models' logits. */
async function meanKl(teacher: Decoder, draft: Decoder, tokens: number[][]): Promise<number> {
  const [t, s] = [await teacher.logits(tokens), await draft.logits(tokens)];
  const T = tokens.length * tokens[0].length;
  return sumLossRef(klDivergenceRef(s, t, T, teacher.config.numTokens).losses, 1 / T);
}

gpuTest("distillation lowers KL(teacher ‖ draft) more than plain training", async (gpu) => {
  const V = CFG.numTokens, n = 9;
  const teacher = Decoder.create(gpu, { ...CFG, depth: 2 }, { seed: 7 });
  const plain = Decoder.create(gpu, CFG, { seed: 8 }),
    distilled = Decoder.create(gpu, CFG, { seed: 8 });
  const opts = { batch: 2, seqLen: n, lr: 1e-2, clipNorm: 1 };
  // a teacher that barely moves: what it predicts is far from the data, so only distillation
  // pulls a draft toward it
  const tt = new Trainer(teacher, { ...opts, lr: 1e-9 }), tp = new Trainer(plain, opts);
  const tdist = new Trainer(distilled, { ...opts, distill: { teacher: tt, weight: 0.5 } });
  const heldOut = randomRows(2, n, V, 999);
  const before = await meanKl(teacher, plain, heldOut);
  let last = 0;
  for (let s = 0; s < 15; s++) {
    const mb = [randomRows(2, n, V, 100 + s)];
    tt.step(mb), tp.step(mb), last = tdist.step(mb);
  }
  await tdist.result(last);
  const [kp, kd] = [
    await meanKl(teacher, plain, heldOut),
    await meanKl(teacher, distilled, heldOut),
  ];
  const said = `KL(teacher ‖ draft) before ${before.toFixed(4)}, after 15 steps plain ${
    kp.toFixed(4)
  }, distilled ${kd.toFixed(4)}`;
  console.log(said);
  ok(kd < kp * 0.7 && kd < before, said);
  for (const x of [tt, tp, tdist, teacher, plain, distilled]) x.destroy();
});

// ---------------------------------------------------------------------------------------------
// train.ts flags

const ADAPTER = { isSoftware: true, adapterName: "test", maxBinding: 134217728 };

Deno.test("--distill and --distill-temperature: limits, errors naming the flag, saved for resume", () => {
  const bad: [string[], string][] = [
    [["--distill", "0"], '--distill must be > 0, got "0"'],
    [["--distill=-0.5"], '--distill must be > 0, got "-0.5"'],
    [["--distill", "1.0001"], '--distill must be ≤ 1, got "1.0001"'],
    [["--distill", "half"], '--distill must be > 0, got "half"'],
    [
      ["--distill", "0.5", "--distill-temperature", "0"],
      '--distill-temperature must be > 0, got "0"',
    ],
    [["--distill", "0.5", "--distill-temperature", "101"], "--distill-temperature must be ≤ 100"],
    [
      ["--distill", "0.5", "--distill-temperature", "0.009"],
      "--distill-temperature must be ≥ 0.01",
    ],
    [["--distill"], "--distill"], // a value is required
  ];
  for (const [args, message] of bad) {
    throws(
      () => parseFlags(args),
      (e: Error) =>
        e instanceof UsageError && e.message.includes(message) || (console.error(e), false),
      args.join(" "),
    );
  }
  throws(
    () =>
      runConfig(parseFlags(["--preset", "tiny", "--distill-temperature", "2"]), undefined, ADAPTER),
    (e: Error) =>
      e instanceof UsageError && e.message.includes('--distill-temperature "2" needs --distill'),
  );
  // the limits themselves are accepted; off by default and then not saved
  for (const [w, tau] of [["1", "100"], ["1e-30", "0.01"]]) {
    const c = runConfig(
      parseFlags(["--preset", "tiny", "--distill", w, "--distill-temperature", tau]),
      undefined,
      ADAPTER,
    );
    deepStrictEqual(c.distill, { weight: Number(w), temperature: Number(tau) });
  }
  const off = runConfig(parseFlags(["--preset", "tiny"]), undefined, ADAPTER);
  ok(!("distill" in off), "off: no distill field");
  ok(!("distill" in savedArgs(off)) && !("distill-temperature" in savedArgs(off)));
  // resume keeps the saved values (JSON round trip, as state.json), a flag given now overrides
  const on = runConfig(parseFlags(["--preset", "tiny", "--distill", "0.25"]), undefined, ADAPTER);
  const saved = JSON.parse(JSON.stringify(savedArgs(on)));
  deepStrictEqual([saved.distill, saved["distill-temperature"]], [0.25, 1]);
  const resumed = runConfig(parseFlags(["--resume", "x"]), saved, ADAPTER, "s.json");
  deepStrictEqual(resumed.distill, { weight: 0.25, temperature: 1 });
  const changed = runConfig(
    parseFlags(["--resume", "x", "--distill-temperature", "2"]),
    saved,
    ADAPTER,
  );
  deepStrictEqual(changed.distill, { weight: 0.25, temperature: 2 });
  throws(
    () => runConfig(parseFlags(["--resume", "x"]), { ...saved, distill: 3 }, ADAPTER, "s.json"),
    /args."distill" of "s.json" must be ≤ 1, got "3"/,
  );
  throws(
    () => runConfig(parseFlags(["--resume", "x"]), { ...saved, distill: "0.5" }, ADAPTER, "s.json"),
    /args."distill" of "s.json" must be a number, got "0.5"/,
  );
  // the target's kept logits of every micro-batch must fit a binding
  throws(
    () =>
      runConfig(
        parseFlags(["--preset", "tiny", "--distill", "0.5", "--accumulate", "3000"]),
        undefined,
        ADAPTER,
      ),
    (e: Error) =>
      e instanceof UsageError &&
      e.message.includes('--distill keeps the target\'s logits of --accumulate "3000"') &&
      e.message.includes("at most --accumulate 504"),
  );
  runConfig(parseFlags(["--preset", "tiny", "--accumulate", "3000"]), undefined, ADAPTER);
});
