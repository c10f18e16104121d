/**
 * A mechanical loop unroller for WGSL templates. A loop written
 *
 * ```wgsl
 * for (var i = 0u; i < R; i++) { /* unroll *\/ acc[i] += a[i] * b; }
 * ```
 *
 * (the marker first in the body; the bound a literal like `16u` or a `const` the shader declares,
 * `const R: u32 = 16u;`, or a product of two such) becomes one block per iteration, each starting
 * `let i = 0u;`, `let i = 1u;`, … Nested marked loops are unrolled too.
 *
 * Why: on the software adapter (lavapipe) private arrays indexed in loops stay in memory, while
 * after unrolling every index is a constant and the arrays become registers. Measured on the
 * register-tile GEMM (16×8 tile, 512³): the same WGSL ran 1.4× slower with its loops left in;
 * DESIGN §8 records ~3× for an earlier kernel. Use it only on loops over register tiles.
 *
 * @module
 */

/** The marker that a loop's body starts with. */
const MARKER = "/* unroll */";

/** Matches a counted loop header whose body starts with the marker; the bound is group 2. */
const LOOP = /for \(var (\w+) = 0u; \1 < ([\w *]+?); \1\+\+\) \{\s*\/\* unroll \*\//;

/**
 * Unrolls every marked loop of `code`.
 *
 * @param code WGSL with marked loops
 * @returns the WGSL with each marked loop replaced by its iterations
 * @throws Error on a bound that is not a literal or declared `u32` const, or an unclosed loop
 */
export function unrollLoops(code: string): string {
  const consts = new Map<string, number>();
  for (const m of code.matchAll(/const (\w+): u32 = (\d+)u;/g)) consts.set(m[1], Number(m[2]));
  const value = (term: string): number => {
    const t = term.trim();
    const lit = /^(\d+)u?$/.exec(t);
    const v = lit ? Number(lit[1]) : consts.get(t);
    if (v === undefined) throw new Error(`specdec: unrollLoops: unknown loop bound "${t}"`);
    return v;
  };
  let out = code;
  for (let m = LOOP.exec(out); m; m = LOOP.exec(out)) {
    const [head, name, bound] = m;
    const count = bound.split("*").map(value).reduce((x, y) => x * y, 1);
    // the body: from after the marker to the brace that closes the loop
    const from = m.index + head.length;
    let depth = 1, end = from;
    for (; end < out.length && depth > 0; end++) {
      if (out[end] === "{") depth++;
      else if (out[end] === "}") depth--;
    }
    if (depth !== 0) throw new Error(`specdec: unrollLoops: unclosed loop over ${name}`);
    const body = out.slice(from, end - 1);
    const copies = Array.from({ length: count }, (_, i) => `{ let ${name} = ${i}u;${body}}`);
    out = out.slice(0, m.index) + copies.join(" ") + out.slice(end);
  }
  if (out.includes(MARKER)) throw new Error("specdec: unrollLoops: a marker outside a loop head");
  return out;
}
