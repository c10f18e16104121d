/**
 * Training a tiny target and draft in the page: the tiny preset's shapes and settings, both models
 * stepped side by side on windows of a text, losses reported as they come back. No peer trains in
 * a browser tab; here it is the same Trainer as train.ts, on the same WebGPU kernels.
 *
 * @module
 */
import { Decoder, type Gpu, PRESETS, Trainer, WindowSampler } from "../mod.ts";

/** One point of the loss curves. */
export interface LossPoint {
  /** The step index. */
  step: number;
  /** The target's training loss at that step. */
  target: number;
  /** The draft's training loss at that step. */
  draft: number;
}

/**
 * Trains a tiny pair (PRESETS.tiny) for `steps` steps on `text`.
 *
 * @param gpu the runtime
 * @param text the training bytes (must exceed one window of seqLen + 1 bytes)
 * @param steps optimizer steps
 * @param onLoss called with each step's losses, in order
 * @returns the trained target and draft (the caller owns them)
 * @throws Error when the text is shorter than one training window or steps is not ≥ 1
 */
export async function trainTinyPair(
  gpu: Gpu,
  text: Uint8Array,
  steps: number,
  onLoss: (p: LossPoint) => void,
): Promise<{ target: Decoder; draft: Decoder }> {
  if (!Number.isInteger(steps) || steps < 1) {
    throw new Error(`specdec demo: training steps must be an integer ≥ 1, got ${steps}`);
  }
  const { target: tc, draft: dc, training: t } = PRESETS.tiny;
  const window = t.seqLen + 1;
  if (text.length <= window) {
    throw new Error(`specdec demo: ${text.length} bytes of text cannot fill a window of ${window}`);
  }
  const target = Decoder.create(gpu, tc, { seed: 0 });
  const draft = Decoder.create(gpu, dc, { seed: 1 });
  const opts = {
    batch: t.batch,
    seqLen: window,
    accumulate: t.accumulate,
    lr: t.lr,
    clipNorm: t.clip,
  };
  const tt = new Trainer(target, opts), dt = new Trainer(draft, opts);
  const sampler = new WindowSampler(text, window, 0);
  try {
    // keep a few steps in flight: reading a loss waits for its step, not for the ones after it
    const pending: { step: number; t: number; d: number }[] = [];
    const drain = async (keep: number) => {
      while (pending.length > keep) {
        const p = pending.shift()!;
        onLoss({ step: p.step, target: await tt.loss(p.t), draft: await dt.loss(p.d) });
      }
    };
    for (let s = 0; s < steps; s++) {
      const batches = Array.from({ length: t.accumulate }, () => sampler.sample(t.batch));
      pending.push({ step: s, t: tt.step(batches), d: dt.step(batches) });
      await drain(2);
    }
    await drain(0);
    return { target, draft };
  } catch (e) {
    target.destroy();
    draft.destroy();
    throw e;
  } finally {
    tt.destroy();
    dt.destroy();
  }
}

/**
 * The loss curves as an SVG (two polylines, a y axis from 0 to the first loss).
 *
 * @param points the losses so far
 * @param total the number of steps planned (the x axis)
 * @returns SVG markup
 */
export function lossSvg(points: LossPoint[], total: number): string {
  const W = 560, H = 160, pad = 28;
  const top = Math.max(1, ...points.map((p) => Math.max(p.target, p.draft)));
  const x = (s: number) => pad + (W - pad - 6) * s / Math.max(1, total - 1);
  const y = (l: number) => H - pad + (pad + 6 - H) * Math.min(l, top) / top;
  const line = (k: "target" | "draft") =>
    points.map((p) => `${x(p.step).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
  return `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="loss curves">
<line x1="${pad}" y1="${H - pad}" x2="${W - 6}" y2="${H - pad}" stroke="#999"/>
<line x1="${pad}" y1="6" x2="${pad}" y2="${H - pad}" stroke="#999"/>
<text x="2" y="14" font-size="10" fill="#666">${top.toFixed(1)}</text>
<text x="14" y="${H - pad}" font-size="10" fill="#666">0</text>
<text x="${W - 60}" y="${H - 10}" font-size="10" fill="#666">step ${total}</text>
<polyline fill="none" stroke="#3056d3" stroke-width="1.5" points="${line("target")}"/>
<polyline fill="none" stroke="#e08a2c" stroke-width="1.5" points="${line("draft")}"/>
<text x="${W - 150}" y="16" font-size="11" fill="#3056d3">target</text>
<text x="${W - 100}" y="16" font-size="11" fill="#e08a2c">draft</text>
</svg>`;
}
