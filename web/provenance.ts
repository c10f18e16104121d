/**
 * Where each token of a speculative step came from, derived from how many tokens the step
 * emitted: a step that accepts a of its γ draft tokens emits a + 1 tokens (the a drafts, then
 * the target's correction, or its bonus token when a = γ), except that a row never runs past
 * seqLen, which may cut the last step short.
 *
 * @module
 */

/** accepted draft token, target correction, bonus token, or not known. */
export type Provenance = "accepted" | "corrected" | "bonus" | "unknown";

/**
 * The origin of each token one speculative step emitted.
 *
 * @param emitted tokens the step added to the row
 * @param gamma draft tokens per step
 * @param remaining tokens the row still needed before this step
 * @param oneStep whether these tokens are exactly one step's (chunkSteps 1); otherwise nothing is
 *   known
 * @returns one provenance per emitted token
 */
export function provenance(
  emitted: number,
  gamma: number,
  remaining: number,
  oneStep: boolean,
): Provenance[] {
  const out = new Array<Provenance>(emitted).fill("unknown");
  if (!oneStep || emitted === 0) return out;
  out.fill("accepted", 0, emitted - 1);
  // cut at seqLen: the last token may be an accepted draft or the correction
  if (emitted === remaining && remaining <= gamma) return out;
  out[emitted - 1] = emitted === gamma + 1 ? "bonus" : "corrected";
  return out;
}
