/**
 * `deno task serve`: builds the demo page's bundle and serves web/ over HTTP (WebGPU needs a
 * secure context, and http://localhost is one). `--port N` (default 8000), `--host NAME`
 * (default 127.0.0.1), `--no-build` to serve the bundle already in web/dist/.
 *
 * @module
 */
import { buildBundle, WEB_ROOT } from "./build.ts";

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  map: "application/json",
  json: "application/json",
  svg: "image/svg+xml",
  png: "image/png",
  safetensors: "application/octet-stream",
};

/** A running demo server. */
export interface DemoServer {
  /** The page's address, e.g. `http://127.0.0.1:8000/`. */
  url: string;
  /** Stops the server. */
  shutdown(): Promise<void>;
}

/**
 * Serves the files under web/ (index.html for `/`); nothing outside web/ is reachable.
 *
 * @param options port (0 picks a free one), hostname, whether to build the bundle first
 * @returns the server and its URL
 * @throws Error when the bundle does not build or the port is taken
 */
export async function serveDemo(
  options: { port?: number; hostname?: string; build?: boolean; quiet?: boolean } = {},
): Promise<DemoServer> {
  const { port = 8000, hostname = "127.0.0.1", build = true, quiet = false } = options;
  if (build) await buildBundle({ quiet });
  const root = await Deno.realPath(WEB_ROOT);
  const server = Deno.serve({ port, hostname, onListen: () => {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const rel = path === "/" ? "index.html" : path.replace(/^\/+/, "");
    let file: string;
    try {
      file = await Deno.realPath(`${root}/${rel}`);
    } catch {
      return new Response(`not found: ${path}\n`, { status: 404 });
    }
    if (!file.startsWith(root + "/")) return new Response("forbidden\n", { status: 403 });
    const info = await Deno.stat(file);
    if (!info.isFile) return new Response(`not a file: ${path}\n`, { status: 404 });
    const ext = file.slice(file.lastIndexOf(".") + 1);
    return new Response((await Deno.open(file)).readable, {
      headers: {
        "content-type": TYPES[ext] ?? "application/octet-stream",
        "content-length": String(info.size),
        "cache-control": "no-cache",
      },
    });
  });
  const addr = server.addr as Deno.NetAddr;
  return { url: `http://${hostname}:${addr.port}/`, shutdown: () => server.shutdown() };
}

if (import.meta.main) {
  const arg = (name: string) => {
    const i = Deno.args.indexOf(name);
    return i >= 0 ? Deno.args[i + 1] : undefined;
  };
  const port = Number(arg("--port") ?? 8000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`specdec: --port must be an integer in [0, 65535], got "${arg("--port")}"`);
    Deno.exit(2);
  }
  const { url } = await serveDemo({
    port,
    hostname: arg("--host") ?? "127.0.0.1",
    build: !Deno.args.includes("--no-build"),
  });
  console.log(`specdec demo: ${url}  (a browser with WebGPU: Chrome/Edge 113+, Safari 26, …)`);
}
