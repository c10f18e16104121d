/**
 * Builds the demo page's script: `deno bundle` (esbuild) turns web/app.ts, the library it imports
 * (mod.ts) and its npm dependencies into one browser ES module, web/dist/app.js. `deno task bundle`
 * runs it; `deno task serve` and tests/browser_test.ts build before serving.
 *
 * @module
 */

/** The folder the page is served from. */
export const WEB_ROOT: string = new URL(".", import.meta.url).pathname;

/** The bundle the page loads. */
export const BUNDLE_PATH: string = new URL("./dist/app.js", import.meta.url).pathname;

/**
 * Bundles web/app.ts into web/dist/app.js (with a linked source map) for the browser.
 *
 * @param options `minify` the output; `quiet` hides deno bundle's progress lines
 * @returns the bundle's path
 * @throws Error with deno bundle's output when bundling fails
 */
export async function buildBundle(
  options: { minify?: boolean; quiet?: boolean } = {},
): Promise<string> {
  const entry = new URL("./app.ts", import.meta.url).pathname;
  const config = new URL("../deno.json", import.meta.url).pathname;
  const args = [
    "bundle",
    "--config",
    config,
    "--platform",
    "browser",
    "--format",
    "esm",
    "--sourcemap",
    "linked",
    "--output",
    BUNDLE_PATH,
    ...(options.minify ? ["--minify"] : []),
    entry,
  ];
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(`specdec: "deno ${args.join(" ")}" failed:\n${text}`);
  }
  if (!options.quiet) console.error(text.trim());
  return BUNDLE_PATH;
}

if (import.meta.main) {
  await buildBundle({ minify: Deno.args.includes("--minify") });
}
