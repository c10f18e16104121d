/**
 * Checkpoints saved by PyTorch (`safetensors.torch.save_file` of the reference architecture's
 * state_dict, float32 and bfloat16) load into specdec and give PyTorch's logits. The fixtures are
 * made by tests/fixtures/make_torch_fixture.py, which also records a golden training run: three
 * Adam steps with clipping and accumulation whose losses and parameters specdec must reproduce.
 */
import { deepStrictEqual } from "node:assert/strict";
import { Decoder } from "../model/decoder.ts";
import { Trainer } from "../model/trainer.ts";
import { readSafetensors } from "../model/checkpoint.ts";
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

gpuTest("a few training steps give PyTorch's losses and parameters (golden test)", async (gpu) => {
  const model = await Decoder.fromSafetensors(
    gpu,
    await Deno.readFile(new URL("torch_tiny_f32.safetensors", dir)),
  );
  // torch: Adam lr 1e-3, clip_grad_norm_ 0.5, 2 micro-batches of 2 × 9 tokens, loss / 2 each
  const trainer = new Trainer(model, {
    batch: 2,
    seqLen: 9,
    accumulate: 2,
    lr: 1e-3,
    clipNorm: 0.5,
  });
  const losses: number[] = [];
  for (const micro of expected.train_batches) losses.push(await trainer.loss(trainer.step(micro)));
  assertClose(losses, expected.train_losses, { atol: 2e-6, rtol: 0, label: "losses vs PyTorch" });
  const { tensors } = readSafetensors(
    await Deno.readFile(new URL("torch_tiny_after3.safetensors", dir)),
  );
  const got = await model.paramValues();
  for (const [name, t] of tensors) {
    if (name === "rotary_emb.inv_freq") continue;
    assertClose(got[name], t.data, { atol: 2e-6, rtol: 1e-5, label: `${name} after 3 steps` });
  }
  trainer.destroy();
  model.destroy();
});
