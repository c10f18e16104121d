/**
 * A mechanical loop unroller for WGSL templates: the kernels are written with real loops, and
 * the loops over register tiles are marked to be unrolled before compiling. A loop written
 *
 * ```wgsl
 * for (var i = 0u; i < R; i++) { /* unroll *\/ acc[i] += a[i] * b; }
 * ```
 *
 * (the marker comment first in the body; the start a literal; the bound a literal like `16u`, a
 * `const` the shader declares like `const R: u32 = 16u;`, or a product of those) becomes one
 * block per iteration with the variable replaced by its value, `{ acc[0u] += a[0u] * b; }
 * { acc[1u] += a[1u] * b; } …`, so every index is a constant expression. Nested marked loops are
 * unrolled too. (The loop variable must not be redeclared inside the body.)
 *
 * Why: on the software adapter (lavapipe) a private array indexed in a loop stays in memory,
 * while after unrolling every index is a constant and the array lives in registers. Measured on
 * the register-tile GEMM (16×8 tile, 512³): the same WGSL ran 1.4× slower with its loops left
 * in (an earlier GEMM ran ~3× faster with named vec4 registers than with an indexed private
 * array). Substituting the value (rather than declaring `let i = 0u;` per block) keeps the
 * compile time of the old hand-unrolled kernels: the indices are folded in the WGSL front end.
 * So: only loops over register arrays.
 *
 * @module
 */

/** The marker that a loop's body starts with. */
const MARKER = "/* unroll */";

/** A counted loop header whose body starts with the marker: variable, start, bound. */
const LOOP = /for \(var (\w+) = (\d+)u; \1 < ([\w *]+?); \1\+\+\) \{\s*\/\* unroll \*\//;

/**
 * Unrolls every marked loop of `code`.
 *
 * @param code WGSL with marked loops
 * @returns the WGSL with each marked loop replaced by its iterations
 * @throws Error on a bound that is not a literal or a declared `u32` const, or an unclosed loop
 * @example
 * ```ts
 * import { unrollLoops } from "./unroll.ts";
 * const wgsl = unrollLoops("const R: u32 = 2u; for (var i = 0u; i < R; i++) { /* unroll *\/ f(i); }");
 * // "const R: u32 = 2u; { f(0u); } { f(1u); }"
 * ```
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
    const [head, name, start, bound] = m;
    const end = bound.split("*").map(value).reduce((x, y) => x * y, 1);
    // the body: from after the marker to the brace that closes the loop
    const from = m.index + head.length;
    let depth = 1, to = from;
    for (; to < out.length && depth > 0; to++) {
      if (out[to] === "{") depth++;
      else if (out[to] === "}") depth--;
    }
    if (depth !== 0) throw new Error(`specdec: unrollLoops: unclosed loop over ${name}`);
    const body = out.slice(from, to - 1);
    const copies: string[] = [];
    const uses = new RegExp(`\\b${name}\\b`, "g");
    for (let i = Number(start); i < end; i++) copies.push(`{${body.replace(uses, `${i}u`)}}`);
    out = out.slice(0, m.index) + copies.join(" ") + out.slice(to);
  }
  if (out.includes(MARKER)) throw new Error("specdec: unrollLoops: a marker outside a loop head");
  return out;
}
