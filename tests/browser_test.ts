/**
 * The demo page (web/) end to end in a real browser: Debian's `chromium` driven by npm
 * `playwright-core`, with WebGPU on Chromium's SwiftShader adapter when there is no GPU. The page
 * decodes the committed demo pair at temperature 0; its tokens must equal Deno's for the same
 * weights and prompt, and its speculative output must equal its base output.
 *
 * Skips with a warning when no chromium is installed, unless SPECDEC_REQUIRE_BROWSER=1 (CI).
 * SPECDEC_CHROMIUM=<path> picks the browser; SPECDEC_SCREENSHOT=<png> saves a screenshot of the
 * page after the run (docs/browser-demo.png is made that way).
 *
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { baseDecoding, Decoder } from "../mod.ts";
import { testGpu } from "./helpers.ts";
import { provenance } from "../web/provenance.ts";
import { fitAlpha, predictedSpeedup, tokensPerStep } from "../web/speedup.ts";
import type { DemoHandle } from "../web/app.ts";
import { lossSvg } from "../web/train.ts";

/**
 * Flags that give headless Chromium a WebGPU adapter on a machine without a GPU: WebGPU is still
 * behind --enable-unsafe-webgpu on Linux, and --use-webgpu-adapter=swiftshader asks for Dawn's
 * software (SwiftShader Vulkan) adapter, which Chromium otherwise only offers as a fallback.
 */
export const WEBGPU_FLAGS = [
  "--headless=new",
  "--enable-unsafe-webgpu",
  "--use-webgpu-adapter=swiftshader",
];

/** Where to look: SPECDEC_CHROMIUM alone when set, else Debian's and Ubuntu's paths. */
function candidates(): string[] {
  const chosen = Deno.env.get("SPECDEC_CHROMIUM");
  return chosen ? [chosen] : ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
}

function findChromium(): string | undefined {
  for (const p of candidates()) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not there */ }
  }
  return undefined;
}

const chromiumPath = findChromium();
const required = Deno.env.get("SPECDEC_REQUIRE_BROWSER") === "1";
if (!chromiumPath) {
  if (required) {
    throw new Error(
      `SPECDEC_REQUIRE_BROWSER=1 but no chromium at ${candidates().join(" or ")} ` +
        "(`apt-get install -y chromium`, or set SPECDEC_CHROMIUM)",
    );
  }
  console.warn(
    "skipping the browser tests: no chromium (`apt-get install -y chromium`, or set " +
      "SPECDEC_CHROMIUM); SPECDEC_REQUIRE_BROWSER=1 makes this an error",
  );
}

const PROMPT = "export function ";
const NEW_TOKENS = 24;
const SEED = 7;

type Page = import("playwright-core").Page;
type Demo = DemoHandle;

async function withPage(
  flags: string[],
  fn: (page: Page, url: string, errors: string[]) => Promise<void>,
): Promise<void> {
  const { chromium } = await import("playwright-core");
  const { serveDemo } = await import("../web/serve.ts");
  const server = await serveDemo({ port: 0, quiet: true });
  const browser = await chromium.launch({ executablePath: chromiumPath, args: flags });
  const errors: string[] = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(server.url);
    await fn(page, server.url, errors);
  } finally {
    await browser.close();
    await server.shutdown();
  }
}

const demoState = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as { specdecDemo: Demo }).specdecDemo);

async function waitState(page: Page, states: string[], timeout: number): Promise<Demo> {
  await page.waitForFunction(
    (s) => s.includes((globalThis as unknown as { specdecDemo?: Demo }).specdecDemo?.state ?? ""),
    states,
    { timeout },
  );
  return await demoState(page);
}

Deno.test({
  name: "browser: the demo page decodes at temperature 0 exactly as Deno does, spec = base",
  ignore: !chromiumPath,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withPage(WEBGPU_FLAGS, async (page, _url, errors) => {
      let demo = await waitState(page, ["ready", "error", "no-webgpu"], 60_000);
      assertEquals(demo.state, "ready", `the page did not get ready: ${JSON.stringify(demo)}`);
      await page.fill("#prompt", PROMPT);
      await page.fill("#tokens", String(NEW_TOKENS));
      await page.fill("#gamma", "4");
      await page.fill("#temperature", "0");
      await page.fill("#seed", String(SEED));
      await page.fill("#chunk", "1");
      await page.click("#run");
      demo = await waitState(page, ["done", "error"], 120_000);
      assertEquals(demo.state, "done", `the run failed: ${demo.error}`);
      assertEquals(errors, []);
      const last = demo.last!;
      const prompt = Array.from(new TextEncoder().encode(PROMPT));
      assertEquals(last.prompt, prompt);
      assertEquals(last.seqLen, prompt.length + NEW_TOKENS);
      assertEquals(last.base.length, NEW_TOKENS);
      // temperature 0: speculative decoding must give exactly the target's greedy output
      assertEquals(last.speculative, last.base);
      assertEquals(last.provenance.length, NEW_TOKENS);
      assertEquals(last.acceptedPerPosition.length, 4);
      assert(last.costRatio > 0 && Number.isFinite(last.predictedSpeedup));

      // the same weights, prompt and options in Deno
      const gpu = await testGpu();
      if (!gpu) {
        console.warn("browser test: no WebGPU adapter in Deno, skipping the Deno comparison");
      } else {
        const dir = new URL("../web/models/", import.meta.url);
        const target = await Decoder.fromSafetensors(
          gpu,
          await Deno.readFile(new URL("target.safetensors", dir)),
        );
        try {
          const ours = await baseDecoding(target, [prompt], last.seqLen, {
            temperature: 0,
            filterThres: last.options.filterThres,
            seed: SEED,
          });
          assertEquals(last.base, ours.tokens[0], "the browser's tokens differ from Deno's");
        } finally {
          target.destroy();
        }
      }

      // training in the page: a few steps of both models, losses finite and coming down
      const steps = 4;
      await page.fill("#train-steps", String(steps));
      await page.click("#train");
      await page.waitForFunction(
        () => (globalThis as unknown as { specdecDemo: Demo }).specdecDemo.state !== "done",
      );
      demo = await waitState(page, ["ready", "error"], 120_000);
      assertEquals(demo.state, "ready", `training failed: ${demo.error}`);
      const losses = demo.training!;
      assertEquals(losses.map((p) => p.step), [...Array(steps).keys()]);
      assert(losses.every((p) => Number.isFinite(p.target) && Number.isFinite(p.draft)));
      // from ln 256 ≈ 5.5 at initialisation, the tiny preset's lr gets well below in a few steps
      assert(losses[steps - 1].target < losses[0].target, JSON.stringify(losses));
      assert(await page.locator("#loss-plot svg polyline").count() === 2);

      const shot = Deno.env.get("SPECDEC_SCREENSHOT");
      if (shot) await page.screenshot({ path: shot, fullPage: true });
    });
  },
});

Deno.test({
  name: "browser: without WebGPU the page says so instead of failing silently",
  ignore: !chromiumPath,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withPage(["--headless=new", "--disable-features=WebGPU"], async (page) => {
      const demo = await waitState(page, ["no-webgpu", "ready", "error"], 30_000);
      assertEquals(demo.state, "no-webgpu");
      const text = await page.textContent("#gpu-status");
      assert(text?.includes("no WebGPU"), `status: ${text}`);
      assertEquals(await page.isDisabled("#run"), true);
    });
  },
});

Deno.test("demo provenance: a step of k tokens is k − 1 accepted drafts then a correction or bonus", () => {
  assertEquals(provenance(1, 4, 40, true), ["corrected"]);
  assertEquals(provenance(3, 4, 40, true), ["accepted", "accepted", "corrected"]);
  assertEquals(provenance(5, 4, 40, true), [
    "accepted",
    "accepted",
    "accepted",
    "accepted",
    "bonus",
  ]);
  // cut at seqLen: 2 tokens were left, the step emitted both; the second may be a draft
  assertEquals(provenance(2, 4, 2, true), ["accepted", "unknown"]);
  // 1 token left and a rejection is indistinguishable from acceptance
  assertEquals(provenance(1, 4, 1, true), ["unknown"]);
  // a chunk of several steps: nothing is known
  assertEquals(provenance(3, 4, 40, false), ["unknown", "unknown", "unknown"]);
});

function assertAlmostEquals(a: number, b: number, tol = 1e-12): void {
  assert(Math.abs(a - b) <= tol, `${a} is not within ${tol} of ${b}`);
}

Deno.test("demo speedup: Leviathan's formula and the fitted α", () => {
  assertAlmostEquals(tokensPerStep(0.5, 3), 1 + 0.5 + 0.25 + 0.125);
  assertAlmostEquals(predictedSpeedup(0.5, 3, 0.1), 1.875 / 1.3);
  assertEquals(predictedSpeedup(0, 4, 0), 1);
  for (const a of [0.1, 0.5, 0.8, 0.97]) {
    assertAlmostEquals(fitAlpha(tokensPerStep(a, 5) - 1, 5), a, 1e-9);
  }
  assertEquals(fitAlpha(0, 5), 0);
  assertEquals(fitAlpha(5, 5), 1);
});

Deno.test("demo loss plot: one polyline per model, points inside the frame", () => {
  const svg = lossSvg(
    [{ step: 0, target: 5.5, draft: 5.6 }, { step: 9, target: 3, draft: 3.2 }],
    10,
  );
  assertEquals(svg.match(/<polyline/g)?.length, 2);
  for (const [, x, y] of svg.matchAll(/(-?[\d.]+),(-?[\d.]+)/g)) {
    assert(+x >= 0 && +x <= 560 && +y >= 0 && +y <= 160, `${x},${y} outside the plot`);
  }
});
