import { ok } from "node:assert/strict";
import { downsample, renderChart } from "../cli/plot.ts";

Deno.test("renderChart() draws 200,000-point series (a long run) as a bounded SVG", () => {
  const pts = Array.from(
    { length: 200_000 },
    (_, i) => [i, 5 * Math.exp(-i / 5e4)] as [number, number],
  );
  const svg = renderChart("long run", [
    { title: "loss", yLabel: "loss", series: [{ label: "train", color: "#1f77b4", points: pts }] },
    {
      title: "acceptance",
      yLabel: "tokens",
      yRange: [0, 5],
      series: [{ label: "acc", color: "#2ca02c", points: [[0, 1], [199_999, 4]] }],
    },
  ], "step");
  ok(svg.startsWith("<svg") && svg.endsWith("</svg>"));
  ok(svg.length < 200_000, `svg is ${svg.length} bytes`);
  ok(svg.includes("long run") && svg.includes("acceptance"));
});

Deno.test("downsample() keeps short series and averages long ones into buckets", () => {
  const short: [number, number][] = [[0, 1], [1, 2]];
  ok(downsample(short) === short);
  const long = Array.from({ length: 3000 }, (_, i) => [i, i % 2] as [number, number]);
  const d = downsample(long, 1000);
  ok(d.length === 1000 && d.every(([, y]) => y > 0 && y < 1), "bucket means of alternating 0/1");
});
