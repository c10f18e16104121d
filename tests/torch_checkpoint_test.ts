/**
 * Checkpoints saved by PyTorch (`safetensors.torch.save_file` of the reference architecture's
 * state_dict, float32 and bfloat16) load into specdec and give PyTorch's logits. The fixtures are
 * made by tests/fixtures/make_torch_fixture.py.
 */
import { deepStrictEqual } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { assertClose, gpuTest } from "./helpers.ts";

const dir = new URL("./fixtures/", import.meta.url);
const expected = JSON.parse(await Deno.readTextFile(new URL("torch_tiny_logits.json", dir)));

for (
  const [file, key] of [["torch_tiny_f32.safetensors", "logits_f32"], [
    "torch_tiny_bf16.safetensors",
    "logits_bf16",
  ]]
) {
  gpuTest(
    `Decoder.fromSafetensors() loads ${file} saved by PyTorch and gives its logits`,
    async (gpu) => {
      const model = await Decoder.fromSafetensors(gpu, await Deno.readFile(new URL(file, dir)), {
        source: file,
      });
      const c = expected.config;
      deepStrictEqual(
        [
          model.config.numTokens,
          model.config.dim,
          model.config.depth,
          model.config.heads,
          model.config.dimHead,
          model.config.ffMult,
        ],
        [c.num_tokens, c.dim, c.depth, c.heads, c.dim_head, c.ff_mult],
      );
      const logits = await model.logits(expected.tokens);
      assertClose(logits, expected[key], {
        atol: 1e-4,
        rtol: 1e-4,
        label: `${file} logits vs PyTorch`,
      });
      model.destroy();
    },
  );
}
