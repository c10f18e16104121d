/**
 * Self-contained SVG line charts (no dependencies): the training script's loss and acceptance
 * plot. Opens in any browser.
 *
 * @module
 */

/** One line of a chart. */
export interface Series {
  /** Legend label. */
  label: string;
  /** CSS colour. */
  color: string;
  /** Points (x, y), x increasing. */
  points: [number, number][];
  /** Dashed line. */
  dashed?: boolean;
}

/** One chart panel. */
export interface Panel {
  /** Title above the panel. */
  title: string;
  /** Y-axis label. */
  yLabel: string;
  /** The lines. */
  series: Series[];
  /** Fixed y range (default: the data's, padded). */
  yRange?: [number, number];
}

/** Min and max without spreading (spreading 100k+ values overflows the call stack). */
function extent(values: number[]): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

/**
 * At most `max` points of a series: the mean of each of `max` consecutive buckets, so a long run
 * draws as fast as a short one and its curve reads as a trend.
 */
export function downsample(points: [number, number][], max = 1500): [number, number][] {
  if (points.length <= max) return points;
  const out: [number, number][] = [];
  const size = points.length / max;
  for (let b = 0; b < max; b++) {
    const from = Math.floor(b * size), to = Math.floor((b + 1) * size);
    let x = 0, y = 0;
    for (let i = from; i < to; i++) x += points[i][0], y += points[i][1];
    out.push([x / (to - from), y / (to - from)]);
  }
  return out;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** "Nice" tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(+v.toPrecision(12));
  }
  return out;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 10000) return `${+(v / 1000).toPrecision(3)}k`;
  return `${+v.toPrecision(3)}`;
}

/**
 * Renders panels stacked vertically as one SVG document.
 *
 * @param title the document title
 * @param panels the charts
 * @param xLabel x-axis label, shared
 * @returns SVG text
 */
export function renderChart(title: string, panels: Panel[], xLabel: string): string {
  const W = 860, PH = 300, top = 48, gap = 70, left = 70, right = 190;
  const H = top + panels.length * (PH + gap);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="600">${
      esc(title)
    }</text>`,
  ];
  // one x range for every panel, so the panels line up
  const allX = panels.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q[0])))
    .filter(Number.isFinite);
  let [xlo, xhi] = allX.length ? extent(allX) : [0, 1];
  if (xhi <= xlo) xhi = xlo + 1;
  panels.forEach((panel, pi) => {
    const y0 = top + pi * (PH + gap) + 20, pw = W - left - right;
    const pts = panel.series.flatMap((s) => s.points).filter(([x, y]) =>
      Number.isFinite(x) && Number.isFinite(y)
    );
    const ys = pts.map((p) => p[1]);
    let [ylo, yhi] = panel.yRange ??
      (ys.length ? extent(ys) : [0, 1]);
    if (!panel.yRange) {
      const pad = (yhi - ylo) * 0.05 || Math.abs(yhi) * 0.1 || 1;
      ylo -= pad;
      yhi += pad;
    }
    const X = (x: number) => left + ((x - xlo) / (xhi - xlo)) * pw;
    const Y = (y: number) => y0 + PH - ((y - ylo) / (yhi - ylo)) * PH;
    parts.push(
      `<text x="${left}" y="${y0 - 8}" font-size="14" font-weight="600">${esc(panel.title)}</text>`,
    );
    parts.push(
      `<rect x="${left}" y="${y0}" width="${pw}" height="${PH}" fill="none" stroke="#999"/>`,
    );
    for (const t of ticks(ylo, yhi)) {
      parts.push(`<line x1="${left}" x2="${left + pw}" y1="${Y(t)}" y2="${Y(t)}" stroke="#eee"/>`);
      parts.push(
        `<text x="${left - 6}" y="${Y(t) + 4}" text-anchor="end" fill="#444">${fmt(t)}</text>`,
      );
    }
    for (const t of ticks(xlo, xhi, 8)) {
      parts.push(`<line x1="${X(t)}" x2="${X(t)}" y1="${y0}" y2="${y0 + PH}" stroke="#f3f3f3"/>`);
      parts.push(
        `<text x="${X(t)}" y="${y0 + PH + 16}" text-anchor="middle" fill="#444">${fmt(t)}</text>`,
      );
    }
    parts.push(
      `<text x="${left + pw / 2}" y="${y0 + PH + 34}" text-anchor="middle">${esc(xLabel)}</text>`,
    );
    parts.push(
      `<text transform="translate(${left - 48} ${y0 + PH / 2}) rotate(-90)" text-anchor="middle">${
        esc(panel.yLabel)
      }</text>`,
    );
    panel.series.forEach((s, si) => {
      const p = downsample(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
      if (p.length === 1) {
        parts.push(
          `<circle cx="${X(p[0][0]).toFixed(1)}" cy="${
            Y(p[0][1]).toFixed(1)
          }" r="3" fill="${s.color}"/>`,
        );
      } else if (p.length > 1) {
        const d = p.map(([x, y], i) => `${i ? "L" : "M"}${X(x).toFixed(1)} ${Y(y).toFixed(1)}`)
          .join("");
        parts.push(
          `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"${
            s.dashed ? ' stroke-dasharray="5 3"' : ""
          }/>`,
        );
      }
      const ly = y0 + 14 + si * 18;
      parts.push(
        `<line x1="${left + pw + 12}" x2="${left + pw + 34}" y1="${ly - 4}" y2="${
          ly - 4
        }" stroke="${s.color}" ` +
          `stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ""}/>`,
      );
      parts.push(`<text x="${left + pw + 40}" y="${ly}">${esc(s.label)}</text>`);
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/**
 * The training plot: both models' training and validation losses, and speculative decoding's
 * accepted tokens per step and speedup at each generation comparison.
 *
 * @param metrics train.ts's metrics records (`type` train / val / generate)
 * @param preset the preset's name, for the title
 * @param gamma draft tokens per step
 * @returns SVG text
 */
export function trainingChart(
  metrics: Record<string, number | string>[],
  preset: string,
  gamma: number,
): string {
  const series = (type: string, key: string) =>
    metrics.filter((m) => m.type === type && Number.isFinite(Number(m[key]))).map((m) =>
      [Number(m.step), Number(m[key])] as [number, number]
    );
  const accepted = series("generate", "acceptedMean"), speedup = series("generate", "speedup");
  const top = extent([1, ...accepted.map((p) => p[1]), ...speedup.map((p) => p[1])])[1];
  const panels: Panel[] = [
    {
      title: "Loss (cross-entropy, nats per byte)",
      yLabel: "loss",
      series: [
        { label: "target train", color: "#1f77b4", points: series("train", "loss") },
        { label: "draft train", color: "#ff7f0e", points: series("train", "smallLoss") },
        {
          label: "target validation",
          color: "#1f77b4",
          dashed: true,
          points: series("val", "loss"),
        },
        {
          label: "draft validation",
          color: "#ff7f0e",
          dashed: true,
          points: series("val", "smallLoss"),
        },
      ],
    },
    {
      title: `Speculative decoding: accepted draft tokens per step (of gamma ${gamma}) and speedup`,
      yLabel: "tokens / ratio",
      yRange: [0, 1.1 * top],
      series: [
        { label: "accepted / step", color: "#2ca02c", points: accepted },
        { label: "speedup (GPU time)", color: "#d62728", points: speedup },
      ],
    },
  ];
  return renderChart(`specdec training — preset ${preset}`, panels, "step");
}
