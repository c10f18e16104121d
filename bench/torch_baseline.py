#!/usr/bin/env python3
"""PyTorch eager f32 baseline for specdec's benchmarks.

The same model as specdec's `Decoder` (DESIGN.md section 3) written as ordinary eager PyTorch,
with module names that give exactly specdec's checkpoint keys, so it loads our safetensors files
and runs the same weights and the same math. It times what `bench/report.ts` times:

  * base decoding and speculative decoding (Leviathan et al. 2023, Algorithm 1) at batch 1 and 8,
    gamma 1..8, both with a preallocated KV cache under `torch.inference_mode()` and no host sync
    per token (base decoding reads back once at the end; speculative decoding reads each row's
    length once per step, as the reference's `while (seq_lens < seq_len).any()` does);
  * one training step per model (forward, backward, clip_grad_norm_(0.5), Adam lr 1e-4);
  * f32 GEMMs (`x @ w.T`) at the suite's sizes.

Timing: CUDA events around each call (median of several runs after a warm-up), and wall time from
`time.perf_counter` including the final synchronisation; on CPU both are wall time.

Usage (see bench/README.md):
  python3 bench/torch_baseline.py --target T.safetensors --draft D.safetensors --device cuda \\
      --json OUT/torch.json --check-logits OUT/check.json
  python3 bench/torch_baseline.py --selfcheck --check-logits CKPT_DIR/check.json   # numpy only
  python3 bench/torch_baseline.py --selftest                                       # torch, CPU

`torch` is imported at module level when present but nothing else needs it: `--selfcheck` runs the
same forward in numpy float64 against specdec's exported logits on machines without torch.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn

    _Module = nn.Module
except ModuleNotFoundError:  # --selfcheck needs only numpy
    torch = F = nn = None
    _Module = object

# ---------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length N, N bytes of JSON
# {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}, then the data.


def read_safetensors_raw(path):
    """Returns ({name: (dtype, shape, memoryview)}, metadata) without any tensor library."""
    with open(path, "rb") as f:
        data = bytearray(f.read())  # writable, so torch.frombuffer shares it without a warning
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    view = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= len(view):
            raise ValueError(f"{path}: tensor {name} has offsets {begin}..{end} out of range")
        out[name] = (info["dtype"], list(info["shape"]), view[begin:end])
    return out, meta


def load_state_dict_torch(path):
    """A checkpoint as {name: float32 CPU tensor}: `safetensors` if installed, else our reader."""
    try:
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(path).items()}
    except ModuleNotFoundError:
        pass
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    raw, _ = read_safetensors_raw(path)
    out = {}
    for name, (dtype, shape, buf) in raw.items():
        if dtype not in dtypes:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if len(buf) == 0:
            out[name] = torch.zeros(shape)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtypes[dtype]).reshape(shape).float().clone()
    return out


def load_state_dict_numpy(path):
    """A checkpoint as {name: float64 numpy array} (for --selfcheck)."""
    import numpy as np

    raw, _ = read_safetensors_raw(path)
    out = {}
    for name, (dtype, shape, buf) in raw.items():
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype])
        out[name] = a.reshape(shape)
    return out


def infer_config(shapes):
    """Model config from tensor shapes {name: shape}, as specdec's Decoder.fromSafetensors does."""
    num_tokens, dim = shapes["token_emb.weight"]
    depth = 0
    while f"layers.{depth}.0.to_qkv.weight" in shapes:
        depth += 1
    inv = shapes.get("rotary_emb.inv_freq")
    dim_head = 2 * inv[0] if inv else 64
    heads = shapes["layers.0.0.to_qkv.weight"][0] // 3 // dim_head
    ff_mult = shapes["layers.0.1.1.weight"][0] // dim
    return dict(num_tokens=num_tokens, dim=dim, depth=depth, heads=heads, dim_head=dim_head, ff_mult=ff_mult)


# ---------------------------------------------------------------------------------------------
# The model. Module names give exactly specdec's checkpoint keys:
#   token_emb.weight, layers.{i}.0.norm.weight, layers.{i}.0.to_qkv.weight, layers.{i}.0.to_out.weight,
#   layers.{i}.1.0.weight, layers.{i}.1.1.{weight,bias}, layers.{i}.1.3.{weight,bias},
#   rotary_emb.inv_freq, to_logits.0.weight, to_logits.1.weight


class RMSNorm(_Module):
    """y = x · rsqrt(mean(x²) + eps) · weight, eps = float32 epsilon."""

    def __init__(self, dim):
        super().__init__()
        self.eps = torch.finfo(torch.float32).eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if hasattr(F, "rms_norm"):  # torch ≥ 2.4: the library's own (fused where it can) kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RotaryEmbedding(_Module):
    """inv_freq = 1 / 10000^(arange(0, D, 2) / D); angle t·inv_freq duplicated [f, f]."""

    def __init__(self, dim_head):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, positions):
        """cos and sin for absolute positions (B or 1, n) → each (B or 1, 1, n, D)."""
        freqs = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (B, n, D/2)
        freqs = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, n, D)
        return freqs.cos(), freqs.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class CausalAttention(_Module):
    """Pre-RMSNorm, fused to_qkv split (qkv, heads, dim_head), rotary q and k, causal softmax."""

    def __init__(self, dim, heads, dim_head, sdpa=False):
        super().__init__()
        self.heads, self.dim_head, self.scale, self.sdpa = heads, dim_head, dim_head**-0.5, sdpa
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, cos, sin, hidden, kv=None, rows=None, positions=None, kv_len=None):
        """x (B, n, C); hidden (B or 1, 1, n, Lk) bool, True = masked; kv = (k, v) cache of this
        layer, each (B, H, maxLen, D): this forward's k (after rotary) and v are written at
        `positions` (B, n) and the queries attend the first kv_len cached positions."""
        B, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(B, n, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, n, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv is not None:
            kc, vc = kv
            kc[rows, :, positions] = k.transpose(1, 2)  # (B, n, H, D) into (B, H, maxLen, D)
            vc[rows, :, positions] = v.transpose(1, 2)
            k, v = kc[:, :, :kv_len], vc[:, :, :kv_len]  # (B, H, Lk, D)
        if self.sdpa:  # optional: torch's fused attention (a mask row never hides every key)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~hidden)
        else:
            sim = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, n, Lk)
            sim = sim.masked_fill(hidden, -torch.finfo(sim.dtype).max)
            out = sim.softmax(dim=-1) @ v  # (B, H, n, D)
        return self.to_out(out.transpose(1, 2).reshape(B, n, self.heads * self.dim_head))


def feed_forward(dim, mult):
    """RMSNorm → Linear(dim, mult·dim) → exact erf GELU → Linear(mult·dim, dim)."""
    return nn.Sequential(RMSNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))


class Decoder(_Module):
    """The reference decoder; forward(tokens) for training, forward(tokens, cache, start) to decode."""

    def __init__(self, num_tokens, dim, depth, heads=8, dim_head=64, ff_mult=4, sdpa=False):
        super().__init__()
        self.config = dict(num_tokens=num_tokens, dim=dim, depth=depth, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([CausalAttention(dim, heads, dim_head, sdpa), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.to_logits = nn.Sequential(RMSNorm(dim), nn.Linear(dim, num_tokens, bias=False))

    def new_cache(self, batch, max_len):
        """A KV cache: per layer (k, v), each (B, H, maxLen, D) f32, zeroed so that masked-out
        positions (weight exactly 0 after softmax) never multiply garbage such as NaN."""
        c, p = self.config, self.inv_freq_param()
        shape = (batch, c["heads"], max_len, c["dim_head"])
        return {
            "kv": [
                (torch.zeros(shape, device=p.device), torch.zeros(shape, device=p.device)) for _ in range(c["depth"])
            ],
            "rows": torch.arange(batch, device=p.device)[:, None],  # (B, 1)
            "max_len": max_len,
        }

    def inv_freq_param(self):
        return self.rotary_emb.inv_freq

    def forward(self, tokens, cache=None, start=None, kv_len=None):
        """tokens (B, n) → logits (B, n, V). With a cache: token (b, i) sits at absolute position
        start[b] + i, is written into the cache there and attends cached positions ≤ its own
        (kv_len, a host int ≥ max(start) + n, bounds the keys read)."""
        _, n = tokens.shape
        offsets = torch.arange(n, device=tokens.device)
        if cache is None:
            positions = offsets[None]  # (1, n)
            hidden = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)[None, None]
            kv_len = n
        else:
            positions = start[:, None] + offsets  # (B, n)
            keys = torch.arange(kv_len, device=tokens.device)
            hidden = (keys > positions[..., None])[:, None]  # (B, 1, n, Lk)
        cos, sin = self.rotary_emb(positions)
        x = self.token_emb(tokens)  # (B, n, C)
        for i, (attn, ff) in enumerate(self.layers):
            kv = cache["kv"][i] if cache is not None else None
            rows = cache["rows"] if cache is not None else None
            x = x + attn(x, cos, sin, hidden, kv, rows, positions, kv_len)
            x = x + ff(x)
        return self.to_logits(x)


def build_model(path, config, device, seed, sdpa=False):
    """A Decoder from a checkpoint (config inferred from shapes) or, without one, seeded init."""
    if path:
        sd = load_state_dict_torch(path)
        config = infer_config({k: list(v.shape) for k, v in sd.items()})
        model = Decoder(**config, sdpa=sdpa)
        if "rotary_emb.inv_freq" not in sd:
            sd["rotary_emb.inv_freq"] = model.rotary_emb.inv_freq
        model.load_state_dict(sd, strict=True)  # exact key match: a naming drift fails here
    else:
        torch.manual_seed(seed)
        model = Decoder(**config, sdpa=sdpa)
    return model.to(device=device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Sampling and decoding. No .item()/.tolist() inside a base-decoding step, none per token in a
# speculative step; sampling uses the exponential race (argmax w/E, E ~ Exp(1)), which draws i with
# probability w_i / Σw from unnormalised weights and needs no host round trip (unlike some
# torch.multinomial paths).


def filtered_probs(logits, temperature, filter_thres):
    """softmax(top_k(logits) / temperature) over the last dim; temperature 0 → one-hot argmax."""
    k = math.ceil((1 - filter_thres) * logits.shape[-1])
    val, ind = logits.topk(k, dim=-1)
    filtered = torch.full_like(logits, float("-inf")).scatter_(-1, ind, val)
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, filtered.argmax(-1, keepdim=True), 1.0)
    return (filtered / temperature).softmax(dim=-1)


def sample(weights, generator):
    """One index per row of non-negative weights (…, V), with probability proportional to weight."""
    e = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / e).argmax(dim=-1)


def base_decoding(model, prompt, seq_len, temperature=1.0, filter_thres=0.9, generator=None):
    """One cached target forward per token. prompt (B, P) long → (generated (B, seq_len − P), stats)."""
    B, P = prompt.shape
    dev = prompt.device
    cache = model.new_cache(B, seq_len)
    out = torch.zeros(B, seq_len, dtype=torch.long, device=dev)
    out[:, :P] = prompt
    if P > 1:  # prefill: the cache then holds positions < P − 1, the last prompt token is pending
        model(prompt[:, : P - 1], cache, torch.zeros(B, dtype=torch.long, device=dev), kv_len=P - 1)
    for pos in range(P, seq_len):
        start = torch.full((B,), pos - 1, dtype=torch.long, device=dev)
        logits = model(out[:, pos - 1 : pos], cache, start, kv_len=pos)[:, -1]  # (B, V)
        out[:, pos] = sample(filtered_probs(logits, temperature, filter_thres), generator)
    generated = out[:, P:].cpu()  # the only readback
    return generated, {"readbacks": 1, "steps": seq_len - P, "targetForwards": seq_len - P + (P > 1)}


def speculative_decoding(
    target,
    draft,
    prompt,
    seq_len,
    gamma=5,
    temperature=1.0,
    filter_thres=0.9,
    lenience=1.0,
    generator=None,
    residual=True,
):
    """Leviathan et al. Algorithm 1 with per-row lengths and KV-cache rollback by position.

    Invariant at the start of a step, per row with `pos` tokens: the target cache holds positions
    < pos − 1 and the draft cache positions < pos − 2 (rejected tokens are simply overwritten: a
    forward only attends keys ≤ its own positions). Finished rows (pos = seq_len) keep running in
    the batch but never advance. `residual=False` (testing only) samples the correction from p
    instead of max(0, p − q): a deliberately wrong sampler the law test must reject.
    Returns (generated (B, seq_len − P), stats)."""
    B, P = prompt.shape
    if P < 2:
        raise ValueError("speculative_decoding here needs a prompt of at least 2 tokens")
    dev, G = prompt.device, gamma
    width = seq_len + G + 1  # rows about to finish still write up to position seq_len + G − 1
    tcache, dcache = target.new_cache(B, width), draft.new_cache(B, width)
    seq = torch.zeros(B, width, dtype=torch.long, device=dev)
    seq[:, :P] = prompt
    pos = torch.full((B,), P, dtype=torch.long, device=dev)
    zero = torch.zeros(B, dtype=torch.long, device=dev)
    target(prompt[:, : P - 1], tcache, zero, kv_len=P - 1)
    draft(prompt[:, : P - 1], dcache, zero, kv_len=P - 1)
    ar2, arG, arG1 = (torch.arange(n, device=dev) for n in (2, G, G + 1))
    accepted_sum = torch.zeros((), dtype=torch.long, device=dev)
    accepted_at = torch.zeros(G, dtype=torch.long, device=dev)
    row_steps = torch.zeros(B, dtype=torch.long, device=dev)
    pos_host, steps, readbacks = [P] * B, 0, 0
    while min(pos_host) < seq_len:
        top = max(pos_host)
        active = pos < seq_len  # (B)
        # draft: γ tokens; the first forward re-feeds seq[pos − 2] (idempotent) and feeds seq[pos − 1]
        qs = []
        logits = draft(seq.gather(1, (pos - 2)[:, None] + ar2), dcache, pos - 2, kv_len=top)[:, -1]
        for i in range(G):
            if i > 0:  # feed x_{i−1}, which sits at position pos + i − 1
                x_prev = seq.gather(1, (pos + i - 1)[:, None])
                logits = draft(x_prev, dcache, pos + i - 1, kv_len=top + i)[:, -1]
            q_i = filtered_probs(logits, temperature, filter_thres)  # (B, V)
            seq.scatter_(1, (pos + i)[:, None], sample(q_i, generator)[:, None])
            qs.append(q_i)
        q = torch.stack(qs, dim=1)  # (B, G, V)
        # target: the pending token and the γ drafts in one forward → p at γ + 1 positions
        t_logits = target(seq.gather(1, (pos - 1)[:, None] + arG1), tcache, pos - 1, kv_len=top + G)
        p = filtered_probs(t_logits, temperature, filter_thres)  # (B, G + 1, V)
        drafts = seq.gather(1, pos[:, None] + arG)  # (B, G)
        px = p[:, :G].gather(-1, drafts[..., None])[..., 0]  # (B, G)
        qx = q.gather(-1, drafts[..., None])[..., 0]
        r = 1 - torch.rand(B, G, device=dev, generator=generator)  # (0, 1]
        reject = r * (lenience * qx) > px  # r > p / (lenience · q), without a division
        n_acc = (reject.cumsum(dim=-1) == 0).sum(dim=-1)  # (B) leading accepts
        # correction: norm(max(0, p_a − q_a)) at the first rejection a; with a zero row appended to
        # q the same expression is p_{γ+1} (the bonus token) when all γ were accepted
        q_pad = torch.cat((q, torch.zeros_like(q[:, :1])), dim=1)  # (B, G + 1, V)
        if not residual:
            q_pad.zero_()
        at = n_acc[:, None, None].expand(B, 1, p.shape[-1])
        correction = (p.gather(1, at) - q_pad.gather(1, at)).clamp_(min=0)[:, 0]  # (B, V)
        seq.scatter_(1, (pos + n_acc)[:, None], sample(correction, generator)[:, None])
        accepted_sum += (n_acc * active).sum()
        accepted_at += ((arG[None] < n_acc[:, None]) & active[:, None]).sum(dim=0)
        row_steps += active
        pos = torch.where(active, (pos + n_acc + 1).clamp(max=seq_len), pos)
        pos_host = pos.tolist()  # the one host sync per step: loop condition and next key lengths
        steps += 1
        readbacks += 1
    generated = seq[:, P:seq_len].cpu()
    total_steps = max(1, int(row_steps.sum()))
    stats = {
        "readbacks": readbacks + 1,
        "steps": steps,
        "targetForwards": steps + 1,
        "draftForwards": G * steps + 1,
        "acceptedMean": int(accepted_sum) / total_steps,
        "acceptedPerPosition": [int(a) / total_steps for a in accepted_at.tolist()],
    }
    return generated, stats


# ---------------------------------------------------------------------------------------------
# Timing


class Clock:
    """GPU milliseconds from CUDA events (stream time between the first and last op of a call,
    host gaps included) and wall milliseconds including the final synchronisation."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def event(self):
        if not self.cuda:
            return None
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def measure(self, fn):
        """Runs fn() once; returns (gpu_ms, wall_ms, fn's result)."""
        self.sync()
        t0 = time.perf_counter()
        e0 = self.event()
        result = fn()
        e1 = self.event()
        self.sync()
        wall = (time.perf_counter() - t0) * 1000
        return (e0.elapsed_time(e1) if self.cuda else wall), wall, result


def median_sample(samples):
    """The sample with the median GPU time (odd counts; the lower middle for even ones)."""
    s = sorted(samples, key=lambda x: x["gpuMs"])
    return s[(len(s) - 1) // 2]


def alpha_from_accepted(mean, gamma):
    """The per-token acceptance α whose expected accepted count Σ_{i=1..γ} α^i equals mean."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        if sum(a**k for k in range(1, gamma + 1)) < mean:
            lo = a
        else:
            hi = a
    return (lo + hi) / 2


def leviathan_speedup(alpha, gamma, c):
    """Leviathan et al.'s expected improvement (1 − α^(γ+1)) / ((1 − α)(γc + 1))."""
    tokens = gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)


def sizes(small, quick):
    """Mirrors bench/suite.ts suiteSizes: the reference config, or the software adapter's one."""
    if not small:
        return dict(
            target=dict(num_tokens=256, dim=512, depth=10),
            draft=dict(num_tokens=256, dim=512, depth=2),
            train_batch=4,
            train_seq=512,
            prompt=128,
            seq_len=256 if quick else 512,
            gemm=[(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 1536, 512)],
        )
    return dict(
        target=dict(num_tokens=256, dim=128, depth=4, heads=4, dim_head=32),
        draft=dict(num_tokens=256, dim=128, depth=1, heads=4, dim_head=32),
        train_batch=2,
        train_seq=32 if quick else 64,
        prompt=8,
        seq_len=24 if quick else 72,
        gemm=[(256, 256, 256), (512, 512, 512)],
    )


# model/config.ts PRESETS' target and draft shapes, for --preset (like bench/report.ts --preset)
PRESET_SHAPES = {
    "tiny": (dict(num_tokens=256, dim=64, depth=2, heads=2, dim_head=32),
             dict(num_tokens=256, dim=64, depth=1, heads=2, dim_head=32)),
    "small": (dict(num_tokens=256, dim=128, depth=4, heads=4, dim_head=32),
              dict(num_tokens=256, dim=128, depth=1, heads=4, dim_head=32)),
    "seed": (dict(num_tokens=256, dim=512, depth=10, heads=8, dim_head=64),
             dict(num_tokens=256, dim=512, depth=2, heads=8, dim_head=64)),
}


def run_sizes(args):
    """sizes() with the flags that override it, like bench/report.ts's."""
    S = sizes(args.small, args.quick)
    if args.prompt:  # like bench/report.ts --prompt / --seq-len
        S["prompt"] = args.prompt
    if args.seq_len:
        S["seq_len"] = args.seq_len
    if args.train_batch:  # like bench/report.ts --train-batch / --train-seq
        S["train_batch"] = args.train_batch
    if args.train_seq:
        S["train_seq"] = args.train_seq
    if args.preset:
        S["target"], S["draft"] = PRESET_SHAPES[args.preset]
    return S


def run_benchmarks(args, device, target, draft, clock):
    """Runs every case; returns report rows like bench/summary.ts summarize()."""
    S = run_sizes(args)
    reps = args.reps or (3 if args.quick or device.type == "cpu" else 5)
    decode_reps = args.reps or 3
    gen = torch.Generator(device=device)
    rows = []

    def want(group, name):
        return not args.filter or args.filter in group or args.filter in name

    def case(group, name, fn, n_reps, rates, warm=None):
        if not want(group, name):
            return
        t0 = time.perf_counter()
        (warm or fn)()  # warm-up: allocator, cuBLAS handles and kernels settle
        samples = []
        for _ in range(n_reps):
            gpu_ms, wall_ms, metrics = clock.measure(fn)
            samples.append({"gpuMs": gpu_ms, "wallMs": wall_ms, "metrics": metrics or {}})
        s = median_sample(samples)
        values = {**s["metrics"], **rates(s)}
        rows.append({"group": group, "name": name, "gpuMs": s["gpuMs"], "wallMs": s["wallMs"], "values": values})
        print(f"{name}: {s['gpuMs']:.3f} ms GPU ({time.perf_counter() - t0:.1f} s)", flush=True)

    # --- GEMM: y = x · wᵀ (torch.nn.Linear's layout), f32
    for M, N, K in S["gemm"]:
        label = f"{M}³" if M == N == K else f"{M}×{K}×{N}"
        if not want(f"gemm {label}", f"torch x @ w.T {label}"):
            continue
        x = torch.randn(M, K, device=device)
        w = torch.randn(N, K, device=device)
        inner = 10 if device.type == "cuda" else 1  # several GEMMs per timing: launch cost amortised

        def gemm(x=x, w=w, inner=inner):
            for _ in range(inner):
                x @ w.T

        def gemm_rates(s, flop=2 * M * N * K * inner):
            return {"gflops": flop / (s["gpuMs"] * 1e6)}

        case(f"gemm {label}", f"torch x @ w.T {label}", gemm, reps, gemm_rates)

    # --- one training step per model: forward + cross-entropy, backward, clip 0.5, Adam 1e-4
    B, n = S["train_batch"], S["train_seq"]
    data = torch.tensor([[(b * 31 + i * 7) % 256 for i in range(n + 1)] for b in range(B)], device=device)
    for role, model in (("target", target), ("draft", draft)):
        name = f"train step {role} depth {model.config['depth']} B{B}×{n}"
        if not want("training step", name):
            continue
        # train a copy so the decoding benchmarks below keep the checkpoint's weights
        m = build_model(None, model.config, device, 0, args.sdpa)
        m.load_state_dict(model.state_dict())
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        V = m.config["num_tokens"]

        def step(m=m, opt=opt, V=V):
            e0 = clock.event()
            logits = m(data[:, :-1])  # (B, n, V)
            loss = F.cross_entropy(logits.reshape(-1, V), data[:, 1:].reshape(-1))
            e1 = clock.event()
            loss.backward()
            e2 = clock.event()
            nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            opt.step()
            opt.zero_grad(set_to_none=True)
            e3 = clock.event()
            if e0 is None:
                return {}
            e3.synchronize()
            return {
                "forwardMs": e0.elapsed_time(e1),
                "backwardMs": e1.elapsed_time(e2),
                "optimizerMs": e2.elapsed_time(e3),
            }

        def train_rates(s):
            return {"tokensPerSec": B * n / (s["gpuMs"] / 1000), "wallTokensPerSec": B * n / (s["wallMs"] / 1000)}

        case("training step", name, step, reps, train_rates)
        del m, opt

    # --- decoding: base vs speculative (gamma 1..8), batch 1 and 8
    target.eval()
    draft.eval()
    P, L = S["prompt"], S["seq_len"]
    gammas = [1, 4] if args.quick else list(range(1, 9))
    with torch.inference_mode():
        c_ratio = {}
        for Bd in (1, 8):  # c: one cached 1-token draft forward over one target forward
            if any(want(f"decoding B{Bd}", f"speculative decoding B{Bd} gamma {g}") for g in gammas):
                c_ratio[Bd] = decode_forward_ms(draft, Bd, L, clock, reps) / decode_forward_ms(
                    target, Bd, L, clock, reps
                )
        for Bd in (1, 8):
            prompt = torch.tensor([[(b * 13 + i * 5) % 256 for i in range(P)] for b in range(Bd)], device=device)
            group = f"decoding B{Bd}"

            def decode_rates(s):
                g = s["metrics"]["generated"]
                return {"tokensPerSec": g / (s["gpuMs"] / 1000), "wallTokensPerSec": g / (s["wallMs"] / 1000)}

            def base(prompt=prompt, Bd=Bd, L=L):
                gen.manual_seed(7)
                _, st = base_decoding(target, prompt, L, generator=gen)
                generated = Bd * (L - P)
                return {"generated": generated, "readbacksPerToken": st["readbacks"] / generated}

            # warm-ups decode a few tokens only: every shape but the key length is the same
            case(group, f"base decoding B{Bd}", base, decode_reps, decode_rates, lambda b=base: b(L=P + 8))
            for g in gammas:

                def spec(prompt=prompt, Bd=Bd, g=g, L=L):
                    gen.manual_seed(7)
                    _, st = speculative_decoding(target, draft, prompt, L, gamma=g, generator=gen)
                    generated = Bd * (L - P)
                    alpha = alpha_from_accepted(st["acceptedMean"], g)
                    return {
                        "generated": generated,
                        "readbacksPerToken": st["readbacks"] / generated,
                        "acceptedMean": st["acceptedMean"],
                        "alpha": alpha,
                        "c": c_ratio[Bd],
                        "predictedSpeedup": leviathan_speedup(alpha, g, c_ratio[Bd]),
                    }

                case(
                    group,
                    f"speculative decoding B{Bd} gamma {g}",
                    spec,
                    decode_reps,
                    decode_rates,
                    lambda f=spec: f(L=P + 8),
                )

    for r in rows:  # speedups over the group's base decoding, as bench/summary.ts adds them
        base_row = next((b for b in rows if b["group"] == r["group"] and b["name"].startswith("base decoding")), None)
        if base_row and r["name"].startswith("speculative"):
            r["values"]["speedup"] = base_row["gpuMs"] / r["gpuMs"]
            r["values"]["wallSpeedup"] = base_row["wallMs"] / r["wallMs"]
            if r["values"].get("predictedSpeedup"):
                r["values"]["ofPredicted"] = r["values"]["speedup"] / r["values"]["predictedSpeedup"]
    return rows


def decode_forward_ms(model, B, seq_len, clock, reps):
    """Median ms of one cached 1-token forward at position seq_len / 2, over batch B."""
    dev = model.inv_freq_param().device
    cache = model.new_cache(B, seq_len + 1)
    tok = torch.zeros(B, 1, dtype=torch.long, device=dev)
    start = torch.full((B,), seq_len // 2, dtype=torch.long, device=dev)
    inner = 20

    def run():
        for _ in range(inner):
            model(tok, cache, start, kv_len=seq_len // 2 + 1)

    run()
    times = sorted(clock.measure(run)[0] / inner for _ in range(max(3, reps)))
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v):
    """bench/summary.ts fmt: 0 decimals from 100, 2 from 1, else 3 significant digits."""
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def format_table(rows):
    """The markdown table of bench/summary.ts formatTable."""
    lines = ["| group | case | GPU ms | wall ms | rates |", "|---|---|---:|---:|---|"]
    for r in rows:
        vals = ", ".join(
            f"{k} {fmt(v)}" for k, v in r["values"].items() if k != "generated" and isinstance(v, (int, float))
        )
        lines.append(f"| {r['group']} | {r['name']} | {fmt(r['gpuMs'])} | {fmt(r['wallMs'])} | {vals} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Checks


def load_check(path):
    with open(path) as f:
        check = json.load(f)
    if check.get("format") != "specdec-logits-check/1":
        raise ValueError(f"{path}: not a specdec logits check file (written by bench/export_check.ts)")
    return check


def check_logits_torch(check, models, device):
    """Max |torch − specdec| over the check file's logits, per role."""
    out = {}
    tokens = torch.tensor(check["tokens"], dtype=torch.long, device=device)
    with torch.inference_mode():
        for role, model in models.items():
            ref = torch.tensor(check[role]["logits"], dtype=torch.float32).reshape(check[role]["shape"])
            got = model(tokens).float().cpu()
            out[role] = float((got - ref).abs().max())
    return out


def numpy_logits(w, tokens):
    """The forward pass in numpy float64 (no cache): tokens (B, n) → logits (B, n, V)."""
    import numpy as np

    cfg = infer_config({k: list(v.shape) for k, v in w.items()})
    H, D = cfg["heads"], cfg["dim_head"]
    eps = float(np.finfo(np.float32).eps)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    tokens = np.asarray(tokens)
    B, n = tokens.shape
    erf = np.frompyfunc(math.erf, 1, 1)

    def rms(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    # the angle is a float32 product as in torch; cos and sin of it in float64
    inv = w["rotary_emb.inv_freq"].astype(np.float32)
    f = (np.arange(n, dtype=np.float32)[:, None] * inv[None]).astype(np.float64)  # (n, D/2)
    f = np.concatenate([f, f], -1)
    cos, sin = np.cos(f), np.sin(f)

    def rot(x):  # x (B, H, n, D)
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    hidden = np.triu(np.ones((n, n), dtype=bool), 1)
    x = w["token_emb.weight"][tokens]  # (B, n, C)
    for i in range(cfg["depth"]):
        p = f"layers.{i}"
        qkv = rms(x, w[f"{p}.0.norm.weight"]) @ w[f"{p}.0.to_qkv.weight"].T
        q, k, v = qkv.reshape(B, n, 3, H, D).transpose(2, 0, 3, 1, 4)  # each (B, H, n, D)
        q, k = rot(q), rot(k)
        sim = q @ k.transpose(0, 1, 3, 2) * D**-0.5
        sim = np.where(hidden, -float(np.finfo(np.float32).max), sim)
        sim = np.exp(sim - sim.max(-1, keepdims=True))
        att = (sim / sim.sum(-1, keepdims=True)) @ v  # (B, H, n, D)
        x = x + att.transpose(0, 2, 1, 3).reshape(B, n, H * D) @ w[f"{p}.0.to_out.weight"].T
        h = rms(x, w[f"{p}.1.0.weight"]) @ w[f"{p}.1.1.weight"].T + w[f"{p}.1.1.bias"]
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)).astype(np.float64))
        x = x + h @ w[f"{p}.1.3.weight"].T + w[f"{p}.1.3.bias"]
    return rms(x, w["to_logits.0.weight"]) @ w["to_logits.1.weight"].T


def selfcheck(check_path, paths, tol):
    """numpy float64 forward on the exported checkpoints vs specdec's exported logits."""
    import numpy as np

    check = load_check(check_path)
    worst = 0.0
    for role in ("target", "draft"):
        w = load_state_dict_numpy(paths[role])
        cfg = infer_config({k: list(v.shape) for k, v in w.items()})
        ref = np.asarray(check[role]["logits"], dtype=np.float64).reshape(check[role]["shape"])
        got = numpy_logits(w, check["tokens"])
        diff = float(np.abs(got - ref).max())
        worst = max(worst, diff)
        print(
            f"selfcheck {role} (dim {cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}×{cfg['dim_head']}): "
            f"max |numpy f64 − specdec| = {diff:.3g} over {tuple(ref.shape)}, max |logit| {np.abs(ref).max():.3g}"
        )
    ok = worst <= tol
    print(f"selfcheck: {'OK' if ok else 'FAILED'} (max abs difference {worst:.3g}, tolerance {tol:g})")
    return ok


def selftest():
    """Checks of the torch code itself on CPU with a tiny random model (needs torch only)."""
    torch.manual_seed(0)
    dev = torch.device("cpu")
    cfg = dict(num_tokens=256, dim=32, depth=2, heads=2, dim_head=16)
    target = build_model(None, cfg, dev, 1).eval()
    draft = build_model(None, dict(cfg, depth=1), dev, 2).eval()
    keys = list(target.state_dict().keys())
    expect = ["token_emb.weight"]
    for i in range(2):
        expect += [f"layers.{i}.0.norm.weight", f"layers.{i}.0.to_qkv.weight", f"layers.{i}.0.to_out.weight"]
        expect += [f"layers.{i}.1.{s}" for s in ("0.weight", "1.weight", "1.bias", "3.weight", "3.bias")]
    expect += ["rotary_emb.inv_freq", "to_logits.0.weight", "to_logits.1.weight"]
    failures = []

    def expect_true(ok, what):
        print(f"selftest: {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    expect_true(sorted(keys) == sorted(expect), "state_dict keys are exactly specdec's checkpoint keys")
    with torch.inference_mode():
        # cached decoding with rows at different start positions equals the full forward
        B, n = 3, 12
        toks = torch.randint(0, 256, (B, n), generator=torch.Generator().manual_seed(1))
        full = target(toks)
        cache = target.new_cache(B, n + 4)
        starts = [5, 7, 9]
        got = torch.zeros_like(full)
        for b in range(B):  # prefill each row alone on its own row of the cache
            one = {
                "kv": [(k[b : b + 1], v[b : b + 1]) for k, v in cache["kv"]],
                "rows": cache["rows"][:1],
                "max_len": n + 4,
            }
            got[b, : starts[b]] = target(
                toks[b : b + 1, : starts[b]], one, torch.zeros(1, dtype=torch.long), kv_len=starts[b]
            )[0]
        pos = torch.tensor(starts)
        for _ in range(n - min(starts)):  # then one token per row per forward, rows advancing apart
            idx = pos.clamp(max=n - 1)
            lg = target(toks.gather(1, idx[:, None]), cache, idx, kv_len=int(idx.max()) + 1)[:, 0]
            for b in range(B):
                if pos[b] < n:
                    got[b, pos[b]] = lg[b]
            pos = pos + 1
        expect_true(
            float((got - full).abs().max()) < 1e-4, "KV-cached decode with per-row starts equals the full forward"
        )
        # greedy speculative decoding reproduces greedy base decoding, gamma 1..4, batch 3
        prompt = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(2))
        gen = torch.Generator()
        ref, _ = base_decoding(target, prompt, 30, temperature=0, generator=gen)
        for g in (1, 2, 3, 4):
            out, st = speculative_decoding(target, draft, prompt, 30, gamma=g, temperature=0, generator=gen)
            expect_true(torch.equal(out, ref), f"greedy speculative (gamma {g}) equals greedy base decoding")
        # a draft equal to the target accepts every proposal
        _, st = speculative_decoding(target, target, prompt, 30, gamma=3, generator=gen)
        expect_true(
            abs(st["acceptedMean"] - 3) < 1e-9, f"draft = target accepts all (acceptedMean {st['acceptedMean']:.3f})"
        )
    # sampled output law (lenience 1): the first two generated tokens over many rows against the
    # target's exact law, by chi-square; the same test must reject a deliberately wrong sampler.
    # The draft is the target with perturbed output weights, so it agrees often but not always.
    near = build_model(None, cfg, dev, 1).eval()
    with torch.no_grad():
        w = near.to_logits[1].weight
        w.add_(0.5 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(6)))
    with torch.inference_mode():
        rows, head = 20000, [1, 2, 3]
        p1 = filtered_probs(target(torch.tensor([head]))[0, -1], 1.0, 0.9).double()  # (V)
        support = p1.nonzero()[:, 0]
        ext = torch.tensor([head + [int(t)] for t in support])
        p2 = p1[support] @ filtered_probs(target(ext)[:, -1], 1.0, 0.9).double()  # (V)
        prompt = torch.tensor([head] * rows)

        def chi2(tokens, law):
            """(statistic, threshold): pooled bins of expected count < 5, df + 5·sqrt(2·df)."""
            obs = torch.bincount(tokens, minlength=law.numel()).double()
            exp = law * tokens.numel()
            big = exp >= 5
            o = torch.cat((obs[big], obs[~big].sum()[None]))
            e = torch.cat((exp[big], exp[~big].sum()[None]))
            keep = e > 0
            stat = float((((o - e) ** 2)[keep] / e[keep]).sum() + 1e6 * o[~keep].sum())
            df = int(keep.sum()) - 1
            return stat, df + 5 * math.sqrt(2 * df)

        def law_ok(out):
            s1, t1 = chi2(out[:, 0], p1)
            s2, t2 = chi2(out[:, 1], p2)
            return s1 < t1 and s2 < t2, f"chi2 {s1:.0f}/{t1:.0f} and {s2:.0f}/{t2:.0f}"

        gen.manual_seed(3)
        out, _ = base_decoding(target, prompt, len(head) + 2, generator=gen)
        ok, msg = law_ok(out)
        expect_true(ok, f"base decoding follows the target's exact law ({msg})")
        gen.manual_seed(4)
        out, st = speculative_decoding(target, near, prompt, len(head) + 2, gamma=2, generator=gen)
        ok, msg = law_ok(out)
        expect_true(ok, f"speculative decoding follows the target's law ({msg}, acceptedMean {st['acceptedMean']:.2f})")
        gen.manual_seed(4)
        out, _ = speculative_decoding(target, near, prompt, len(head) + 2, gamma=2, generator=gen, residual=False)
        ok, msg = law_ok(out)
        expect_true(not ok, f"the law test rejects a wrong correction sampler ({msg})")
    # a training step runs and lowers the loss on a repeated batch
    m = build_model(None, cfg, dev, 3).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(5))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(m(data[:, :-1]).reshape(-1, 256), data[:, 1:].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    expect_true(losses[-1] < losses[0], f"training steps lower the loss ({losses[0]:.3f} → {losses[-1]:.3f})")
    print(f"selftest: {len(failures)} failed" if failures else "selftest: all passed")
    return not failures


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", help="target checkpoint (.safetensors); default: from --check-logits, else seeded init")
    ap.add_argument("--draft", help="draft checkpoint (.safetensors); default: from --check-logits, else seeded init")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--json", help="write {meta, rows} here (the shape of bench/report.ts's JSON)")
    ap.add_argument("--check-logits", help="check.json from bench/export_check.ts: compare logits first")
    ap.add_argument("--quick", action="store_true", help="gamma 1 and 4 only, shorter decodes, 3 reps")
    ap.add_argument("--small", action="store_true", help="the software adapter's sizes (dim 128; for CPU runs)")
    ap.add_argument("--reps", type=int, default=0, help="timed runs per case after one warm-up (median reported)")
    ap.add_argument("--filter", help="only cases whose group or name contains this")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 helps on a busy CPU)"
    )
    ap.add_argument("--seed", type=int, default=1, help="init seed without checkpoints")
    ap.add_argument("--prompt", type=int, default=0, help="decoding prompt length (default: the sizes')")
    ap.add_argument("--seq-len", type=int, default=0, help="decoding total length, prompt included")
    ap.add_argument("--train-batch", type=int, default=0, help="training step rows (default: the sizes')")
    ap.add_argument("--train-seq", type=int, default=0, help="training step tokens per row (default: the sizes')")
    ap.add_argument("--preset", choices=sorted(PRESET_SHAPES), help="target and draft shapes of a train.ts preset")
    ap.add_argument("--sdpa", action="store_true", help="use F.scaled_dot_product_attention (not the reference math)")
    ap.add_argument("--selfcheck", action="store_true", help="numpy float64 forward vs --check-logits; no torch")
    ap.add_argument("--selftest", action="store_true", help="checks of this file's torch code on CPU")
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs logits difference accepted by the checks")
    args = ap.parse_args(argv)

    paths = {"target": args.target, "draft": args.draft}
    if args.check_logits:
        check = load_check(args.check_logits)
        base = os.path.dirname(os.path.abspath(args.check_logits))
        for role in paths:
            if not paths[role]:
                paths[role] = os.path.join(base, check[role]["checkpoint"])
    if args.selfcheck:
        if not args.check_logits:
            ap.error("--selfcheck needs --check-logits CKPT_DIR/check.json")
        return 0 if selfcheck(args.check_logits, paths, args.tol) else 1
    if torch is None:
        print(
            "torch_baseline: PyTorch is not installed (pip install torch); --selfcheck needs only numpy",
            file=sys.stderr,
        )
        return 2
    if args.threads or args.selftest:
        torch.set_num_threads(args.threads or 1)  # tiny models: more threads only add contention
    if args.selftest:
        return 0 if selftest() else 1

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # f32 means f32: no TF32 tensor-core shortcuts in matmuls (torch's default, made explicit)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    S = run_sizes(args)
    target = build_model(paths["target"], S["target"], device, args.seed, args.sdpa)
    draft = build_model(paths["draft"], S["draft"], device, args.seed + 1, args.sdpa)
    meta = {
        "adapter": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "device": str(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": args.quick,
        "small": args.small,
        "sdpa": args.sdpa,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "target": {"checkpoint": paths["target"], **target.config},
        "draft": {"checkpoint": paths["draft"], **draft.config},
    }
    print(f"torch {torch.__version__} on {meta['adapter']}; target {target.config}; draft {draft.config}", flush=True)
    status = 0
    if args.check_logits:
        if not (paths["target"] and paths["draft"]):
            print("logits check skipped: it needs the exported checkpoints")
        else:
            diffs = check_logits_torch(load_check(args.check_logits), {"target": target, "draft": draft}, device)
            ok = max(diffs.values()) <= args.tol
            meta["logitsCheck"] = {**diffs, "tolerance": args.tol, "ok": ok}
            for role, d in diffs.items():
                print(f"logits check {role}: max |torch − specdec| = {d:.3g}")
            if not ok:
                print(
                    f"WARNING: logits differ by more than {args.tol:g}: the baseline does not run the same model",
                    flush=True,
                )
                status = 3
    clock = Clock(device)
    rows = run_benchmarks(args, device, target, draft, clock)
    table = format_table(rows)
    print(f"\n# torch eager f32 baseline — {meta['adapter']}\n\n{table}\n")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
            f.write("\n")
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write(f"# torch eager f32 baseline — {meta['adapter']}, {meta['date'][:10]}\n\n{table}\n")
        print(f"wrote {args.json} and .md")
    return status


if __name__ == "__main__":
    sys.exit(main())
