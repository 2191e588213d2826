#!/usr/bin/env python3
"""Build the tiny random Hugging Face fixtures under tests/fixtures/tiny/.

Each fixture is a randomly initialised causal LM (vocab 4096 so the demo
tokenizer's ids are valid, hidden 64, MLP 128, 2 layers, 4 query heads, 2
key/value heads) saved the way a published checkpoint would be, plus what
Hugging Face transformers computes for it in float32 with eager attention:

  <name>/config.json, *.safetensors, generation_config.json   the checkpoint
  <name>/reference.safetensors   input_ids int64 [2, 24], logits f32 [2, 24, 4096]
  <name>/reference.json          greedy generation + the checks made here

Reference logits always come from *reloading the saved directory* and running
it in float32, so reduced-precision checkpoints (bf16, f16) are referenced
exactly as a loader sees them: stored values upcast to f32.

Everything is seeded; re-running the script reproduces the files byte for
byte (for a given torch / transformers version). Each directory is built in a
temporary sibling and renamed into place, so an interrupted run never leaves a
half-written fixture behind.

Usage (from the repository root):
    .venv/bin/python scripts/make_tiny_models.py [--out tests/fixtures/tiny] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 4096
BATCH, SEQ = 2, 24
PROMPT_LEN, NEW_TOKENS = 6, 10
# The random transformers init (std 0.02) gives near-uniform attention and
# logits that barely depend on the input; a larger std makes every component
# (RoPE, masks, norms, biases) visibly change the logits, so a bug fails a
# parity test instead of hiding under the tolerance.
INIT_STD = 0.1
FINAL_NORM_GAIN = 4.0
MIN_DISTINCT = 5
MIN_MARGIN = 0.05

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    initializer_range=INIT_STD,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=None,
)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def randomize_norms(model: torch.nn.Module, gen: torch.Generator, spread: float = 0.25) -> None:
    """Set every RMSNorm weight to 1 + U(-spread, spread) so norm weights matter.

    The final norm is then scaled by FINAL_NORM_GAIN: it sets the logit scale
    (std ~3 instead of ~0.8, like a trained model), which widens the gaps
    between the top logits that greedy decoding depends on.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + (torch.rand(p.shape, generator=gen) * 2 - 1) * spread)
        model.model.norm.weight.mul_(FINAL_NORM_GAIN)


def pick_inputs(cls, path: Path, base_seed: int) -> tuple[torch.Tensor, int]:
    """Seeded input ids whose greedy continuation is a robust reference.

    Random models often decode into a one-token loop, and a top-1/top-2 logit
    gap of 1e-3 would let rounding differences flip a token. Seeds
    base_seed*1000 + k, k = 0, 1, ... are tried in order and the first one
    whose 10 greedy tokens contain >= MIN_DISTINCT distinct ids with every
    top-1/top-2 gap >= MIN_MARGIN is kept (deterministic, recorded in reference.json).
    """
    model = load_f32(cls, path)
    for k in range(500):
        seed = base_seed * 1000 + k
        ids = random_ids(seed)
        g = greedy(model, ids[:1, :PROMPT_LEN])
        if len(set(g["generated_ids"])) >= MIN_DISTINCT and min(g["top1_top2_logit_margins"]) >= MIN_MARGIN:
            return ids, seed
    raise SystemExit(f"{path}: no input seed gave a robust greedy continuation")


def load_f32(cls, path: Path, **overrides):
    """Reload a saved fixture and run it as the Rust loader will: upcast to f32, eager attention."""
    model = cls.from_pretrained(path, attn_implementation="eager", **overrides)
    return model.float().eval()


@torch.inference_mode()
def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits.float()


@torch.inference_mode()
def greedy(model, prompt: torch.Tensor) -> dict:
    """Greedy decode with the KV cache, and check it against a cache-free argmax loop."""
    out = model.generate(
        prompt,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new_ids = out.sequences[0, prompt.shape[1] :].tolist()
    # Gap between the best and second-best logit at each step: a Rust
    # implementation within tolerance t of the reference can only disagree on
    # a step whose margin is below ~2t.
    margins, top1 = [], []
    for s in out.scores:
        top2 = torch.topk(s[0].float(), 2).values
        margins.append(float(top2[0] - top2[1]))
        top1.append(float(top2[0]))
    # Cache-free recomputation: full forward over the growing sequence.
    seq = prompt.clone()
    for _ in range(NEW_TOKENS):
        nxt = logits_of(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    nocache = seq[0, prompt.shape[1] :].tolist()
    if nocache != new_ids:
        raise SystemExit(f"greedy with cache {new_ids} != without cache {nocache}")
    return {
        "prompt_ids": prompt[0].tolist(),
        "generated_ids": new_ids,
        "max_new_tokens": NEW_TOKENS,
        "protocol": "model.generate(prompt, do_sample=False, use_cache=True, eos_token_id=None, "
        "min_new_tokens=10): EOS stopping disabled, exactly 10 new tokens; prompt = first 6 ids "
        "of input_ids row 0; float32 weights, eager attention. Verified equal to an argmax loop "
        "over cache-free full forwards.",
        "top1_top2_logit_margins": [round(m, 6) for m in margins],
        # The chosen token's logit at each step: catches KV-cache / RoPE-offset
        # bugs in cached decoding even where the argmax happens to survive them.
        "top1_logits": top1,
    }


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def rewrite_config_4x(
    path: Path, *, rope_scaling_null: bool, drop: tuple[str, ...] = (), extra: dict | None = None
) -> dict:
    """Rewrite a transformers-5 config.json into the transformers-4.x key style.

    5.x writes  "rope_parameters": {"rope_theta": θ, "rope_type": "default"}, "dtype": ...
    4.x wrote   "rope_theta": θ, "rope_scaling": null | {...}, "torch_dtype": ...
    """
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.pop("rope_parameters")
    if rope.get("rope_type", "default") != "default":
        raise SystemExit("4.x rewrite only implemented for default RoPE")
    new = {}
    for k, v in cfg.items():
        if k == "dtype":
            new["torch_dtype"] = v
        elif k in drop:
            continue
        else:
            new[k] = v
    new["rope_theta"] = rope["rope_theta"]
    if rope_scaling_null:
        new["rope_scaling"] = None
    if extra:
        new.update(extra)
    new = dict(sorted(new.items()))
    write_json(cfg_path, new)
    return new


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def random_ids(seed: int) -> torch.Tensor:
    """input_ids [BATCH, SEQ] uniform over the vocabulary, from a seeded torch.Generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen, dtype=torch.int64)


def finish(
    path: Path, name: str, description: str, cls, inputs: tuple[torch.Tensor, int], checks: dict, saved_dtype: str
) -> dict:
    """Compute reference logits + greedy generation from the saved directory and write them."""
    input_ids, seed = inputs
    model = load_f32(cls, path)
    logits = logits_of(model, input_ids)
    save_file(
        {"input_ids": input_ids.contiguous(), "logits": logits.contiguous()},
        str(path / "reference.safetensors"),
        # One key only: safetensors writes metadata in hash-map order, so two keys would make
        # the file bytes differ from run to run.
        metadata={"producer": f"scripts/make_tiny_models.py, transformers {transformers.__version__}"},
    )
    gen = greedy(model, input_ids[:1, :PROMPT_LEN])
    independent = numpy_check(path, input_ids, logits, gen)
    ref = {
        "name": name,
        "description": description,
        "architecture": cls.__name__,
        "saved_dtype": saved_dtype,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "reference_logits": {
            "file": "reference.safetensors",
            "input_ids": [BATCH, SEQ],
            "input_ids_seed": seed,
            "input_ids_protocol": "torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed("
            "input_ids_seed)); seed = first of base*1000+k giving a greedy continuation with >= "
            f"{MIN_DISTINCT} distinct ids and every top-1/top-2 logit gap >= {MIN_MARGIN}",
            "logits": [BATCH, SEQ, VOCAB],
            "protocol": "from_pretrained(this dir, attn_implementation='eager').float().eval(); "
            "model(input_ids, use_cache=False).logits in float32, no attention mask (no padding)",
            "logit_std": round(float(logits.std()), 6),
        },
        "greedy_generation": gen,
        "checks": checks,
        "independent_check": independent,
    }
    write_json(path / "reference.json", ref)
    return ref


# --------------------------------------------------------------------------------------------
# independent check: a float64 numpy forward written from the architecture papers / configs,
# not from transformers, reading config.json with the rules a loader must follow.


def _np_rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _np_inv_freq(cfg: dict, hd: int) -> np.ndarray:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    if rp.get("rope_type", rp.get("type", "default")) == "llama3":
        f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        out = []
        for fr in inv:
            wl = 2 * math.pi / fr
            if wl < old / hi:
                out.append(fr)
            elif wl > old / lo:
                out.append(fr / f)
            else:
                sm = (old / wl - lo) / (hi - lo)
                out.append((1 - sm) * fr / f + sm * fr)
        inv = np.array(out)
    elif rp.get("rope_type", rp.get("type", "default")) != "default":
        raise SystemExit(f"numpy check: RoPE type {rp} not implemented")
    return inv


def _np_rope(x: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE on x [T, heads, hd] at positions 0..T-1."""
    ang = np.arange(x.shape[0], dtype=np.float64)[:, None] * inv[None]
    c = np.concatenate([np.cos(ang)] * 2, -1)[:, None]
    s = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
    h = x.shape[-1] // 2
    return x * c + np.concatenate([-x[..., h:], x[..., :h]], -1) * s


def numpy_forward(path: Path, ids: np.ndarray) -> np.ndarray:
    """Logits [T, vocab] in float64 for one sequence, from the files in `path` alone."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "config.json").read_text())
    w = {}
    for f in sorted(path.glob("model*.safetensors")):
        w.update({k: v.double().numpy() for k, v in load_file(str(f)).items()})
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = cfg.get("head_dim") or d // nh
    eps = cfg["rms_norm_eps"]
    # Qwen2 only applies its window when use_sliding_window is true; Mistral always does.
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", cfg["model_type"] == "mistral") else None
    inv = _np_inv_freq(cfg, hd)
    t = len(ids)
    i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
    mask = j <= i
    if window:
        mask &= j > i - window
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."

        def lin(n: str, v: np.ndarray, p: str = p) -> np.ndarray:
            y = v @ w[p + n + ".weight"].T
            return y + w[p + n + ".bias"] if p + n + ".bias" in w else y

        h = _np_rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).reshape(t, nh, hd)
        k = lin("self_attn.k_proj", h).reshape(t, nkv, hd)
        v = lin("self_attn.v_proj", h).reshape(t, nkv, hd)
        if p + "self_attn.q_norm.weight" in w:
            q = _np_rms(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _np_rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _np_rope(q, inv), _np_rope(k, inv)
        att = np.zeros((t, nh, hd))
        for head in range(nh):
            kv = head // (nh // nkv)
            sc = np.where(mask, q[:, head] @ k[:, kv].T / math.sqrt(hd), -np.inf)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, head] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + lin("self_attn.o_proj", att.reshape(t, nh * hd))
        h = _np_rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin("mlp.gate_proj", h)
        x = x + lin("mlp.down_proj", g / (1 + np.exp(-g)) * lin("mlp.up_proj", h))
    x = _np_rms(x, w["model.norm.weight"], eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def numpy_check(path: Path, input_ids: torch.Tensor, logits: torch.Tensor, greedy_ref: dict) -> dict:
    """Compare transformers' f32 logits and greedy ids with the independent f64 forward."""
    err = max(
        float(np.abs(numpy_forward(path, input_ids[b].numpy()) - logits[b].double().numpy()).max())
        for b in range(input_ids.shape[0])
    )
    if err > 1e-4:
        raise SystemExit(f"{path}: transformers and the numpy forward differ by {err}")
    seq = list(greedy_ref["prompt_ids"])
    for _ in range(NEW_TOKENS):
        seq.append(int(numpy_forward(path, np.array(seq))[-1].argmax()))
    if seq[PROMPT_LEN:] != greedy_ref["generated_ids"]:
        raise SystemExit(f"{path}: numpy greedy {seq[PROMPT_LEN:]} != transformers {greedy_ref['generated_ids']}")
    return {
        "max_abs_logit_diff_vs_numpy_f64": err,
        "greedy_ids_equal": True,
        "what": "scripts/make_tiny_models.py numpy_forward: float64 forward from config.json + safetensors "
        "alone (Qwen2 window only if use_sliding_window; head_dim default hidden/heads; tied head = embeddings)",
    }


# --------------------------------------------------------------------------------------------
# fixtures


def make_qwen2(path: Path) -> dict:
    seed_all(1)
    cfg = Qwen2Config(**COMMON, tie_word_embeddings=True, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(101)
    randomize_norms(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    names = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert sorted({n.split(".")[-2] for n in names}) == ["k_proj", "q_proj", "v_proj"], names
    model.save_pretrained(path)
    inputs = pick_inputs(Qwen2ForCausalLM, path, 11)
    input_ids = inputs[0]
    ref_model = load_f32(Qwen2ForCausalLM, path)
    logits_5x = logits_of(ref_model, input_ids)

    # A loader that drops the biases must fail: measure how much they move the logits.
    no_bias = load_f32(Qwen2ForCausalLM, path)
    with torch.no_grad():
        for n, p in no_bias.named_parameters():
            if n.endswith(".bias"):
                p.zero_()
    bias_effect = max_abs(logits_5x, logits_of(no_bias, input_ids))

    rewritten = rewrite_config_4x(
        path,
        rope_scaling_null=False,
        # Qwen2 configs from 4.x carry no head_dim (derived as hidden/heads) and no layer_types.
        drop=("head_dim", "layer_types"),
        # The Qwen2 trap seen in published checkpoints: sliding_window is set but
        # use_sliding_window is false, so no window applies. Window 8 < 24 here,
        # so a loader that honours sliding_window alone gets different logits.
        extra={"sliding_window": 8, "use_sliding_window": False, "max_window_layers": 2},
    )
    reloaded = logits_of(load_f32(Qwen2ForCausalLM, path), input_ids)
    reload_diff = max_abs(logits_5x, reloaded)
    if reload_diff != 0.0:
        raise SystemExit(f"qwen2: 4.x config reload changed logits by {reload_diff}")
    # What a loader honouring sliding_window=8 despite use_sliding_window=false would compute.
    trap_dict = json.loads((path / "config.json").read_text())
    trap_dict.update(use_sliding_window=True, max_window_layers=0)
    trap_cfg = Qwen2Config.from_dict(trap_dict)
    assert trap_cfg.sliding_window == 8 and set(trap_cfg.layer_types) == {"sliding_attention"}
    trap = load_f32(Qwen2ForCausalLM, path, config=trap_cfg)
    trap_effect = max_abs(logits_5x, logits_of(trap, input_ids))
    assert "rope_parameters" not in rewritten and "dtype" not in rewritten
    checks = {
        "qkv_bias_max_abs_logit_effect": bias_effect,
        "config_rewritten_to_4x_keys": True,
        "config_4x_reload_max_abs_logit_diff": reload_diff,
        "sliding_window_trap": "config has sliding_window=8 but use_sliding_window=false: no window "
        "applies (transformers Qwen2Config sets sliding_window=None in that case)",
        "sliding_window_if_wrongly_applied_max_abs_logit_diff": trap_effect,
        "tied_lm_head_absent_from_weights": "lm_head.weight" not in safetensor_names(path),
        "bias_tensors_in_weights": sorted(n for n in safetensor_names(path) if n.endswith(".bias")),
    }
    return finish(
        path,
        "qwen2",
        "Qwen2 with non-zero q/k/v biases (std 0.5), tied embeddings, f32, 4.x-style config "
        "(rope_theta, torch_dtype, no head_dim, unused sliding_window)",
        Qwen2ForCausalLM,
        inputs,
        checks,
        "float32",
    )


def make_qwen3(path: Path) -> dict:
    seed_all(2)
    cfg = Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False, attn_implementation="eager")
    model = Qwen3ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(202)
    # Covers q_norm / k_norm too (names end in "norm.weight"); wider spread for those.
    randomize_norms(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1.0 + (torch.rand(p.shape, generator=gen) * 2 - 1) * 0.5)
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (32,)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (128, 64)
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(path)
    inputs = pick_inputs(Qwen3ForCausalLM, path, 12)
    input_ids = inputs[0]
    ref = load_f32(Qwen3ForCausalLM, path)
    logits = logits_of(ref, input_ids)
    ones = load_f32(Qwen3ForCausalLM, path)
    with torch.no_grad():
        for n, p in ones.named_parameters():
            if n.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(1.0)
    qk_norm_effect = max_abs(logits, logits_of(ones, input_ids))
    checks = {
        "head_dim": 32,
        "hidden_over_heads": 16,
        "qk_norm_weights_set_to_one_max_abs_logit_effect": qk_norm_effect,
        "lm_head_in_weights": "lm_head.weight" in safetensor_names(path),
    }
    return finish(
        path,
        "qwen3",
        "Qwen3 with per-head q_norm/k_norm (weights ~U(0.5,1.5)), head_dim 32 != hidden/heads, "
        "untied embeddings, bf16 weights",
        Qwen3ForCausalLM,
        inputs,
        checks,
        "bfloat16",
    )


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # With head_dim 16 and θ = 5e5 the RoPE wavelengths are 2π·θ^(2i/16) ≈
    # 6.3, 32.3, 167, 860, ...; original_max_position_embeddings = 40 puts them
    # in all three llama3 bands: 6.3 < 40/4 unchanged, 10 < 32.3 < 40 smoothed,
    # the rest > 40 divided by 8. (With 16 the "unchanged" band would be empty.)
    "original_max_position_embeddings": 40,
}


def make_llama3(path: Path) -> dict:
    seed_all(3)
    common = dict(COMMON, head_dim=16, tie_word_embeddings=False, attn_implementation="eager")
    # transformers 5 keeps RoPE settings in `rope_parameters` (rope_theta inside it).
    cfg = LlamaConfig(**common, rope_parameters=dict(LLAMA3_ROPE))
    assert cfg.rope_parameters["rope_type"] == "llama3", cfg.rope_parameters
    model = LlamaForCausalLM(cfg).eval()
    randomize_norms(model, torch.Generator().manual_seed(303))
    inv = model.model.rotary_emb.inv_freq.clone()
    plain = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    bands = {
        "unchanged": int(torch.isclose(inv, plain).sum()),
        "divided_by_factor": int(torch.isclose(inv, plain / 8.0).sum()),
    }
    bands["smoothed"] = len(inv) - bands["unchanged"] - bands["divided_by_factor"]
    if min(bands.values()) < 1:
        raise SystemExit(f"llama3 rope does not exercise every band: {bands}")
    model.to(torch.float16)
    model.config.dtype = torch.float16
    model.save_pretrained(path, max_shard_size="700KB")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    if len(shards) < 2 or not (path / "model.safetensors.index.json").exists():
        raise SystemExit(f"llama3: expected a sharded checkpoint, got {sorted(os.listdir(path))}")
    inputs = pick_inputs(LlamaForCausalLM, path, 13)
    input_ids = inputs[0]
    ref = load_f32(LlamaForCausalLM, path)
    if not torch.equal(ref.model.rotary_emb.inv_freq, inv):
        raise SystemExit("llama3: reloaded model has different inv_freq")
    logits = logits_of(ref, input_ids)
    # Same weights, RoPE without llama3 scaling: the scaling must change the logits.
    unscaled = load_f32(LlamaForCausalLM, path, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert unscaled.model.rotary_emb.rope_type == "default"
    scaling_effect = max_abs(logits, logits_of(unscaled, input_ids))
    if scaling_effect < 1e-3:
        raise SystemExit(f"llama3 rope scaling had no effect ({scaling_effect})")
    checks = {
        "rope_parameters": LLAMA3_ROPE,
        "inv_freq": [float(x) for x in inv],
        "inv_freq_bands": bands,
        "rope_scaling_vs_default_rope_max_abs_logit_diff": scaling_effect,
        "shards": shards,
    }
    return finish(
        path,
        "llama3",
        "Llama with llama3 RoPE scaling (θ 5e5, factor 8, low 1, high 4, original 40), head_dim 16, "
        "f16 weights sharded over index.json",
        LlamaForCausalLM,
        inputs,
        checks,
        "float16",
    )


def make_mistral(path: Path) -> dict:
    seed_all(4)
    cfg = MistralConfig(**COMMON, sliding_window=8, tie_word_embeddings=True, attn_implementation="eager")
    model = MistralForCausalLM(cfg).eval()
    randomize_norms(model, torch.Generator().manual_seed(404))
    model.save_pretrained(path)
    inputs = pick_inputs(MistralForCausalLM, path, 14)
    input_ids = inputs[0]
    ref = load_f32(MistralForCausalLM, path)
    assert ref.config.sliding_window == 8
    logits = logits_of(ref, input_ids)
    full = load_f32(MistralForCausalLM, path, sliding_window=None)
    assert full.config.sliding_window is None
    full_logits = logits_of(full, input_ids)
    per_pos = (logits - full_logits).abs().amax(dim=(0, 2))
    window = 8
    # transformers' sliding_window_overlay: key j is visible from query i iff i - window < j <= i,
    # i.e. each query sees itself and the previous window-1 tokens.
    first_diff = next((i for i, d in enumerate(per_pos.tolist()) if d > 0), None)
    applied = bool(per_pos.max() > 0)
    # Positions < window see the same keys under both masks, so must match exactly.
    if applied and first_diff != window:
        raise SystemExit(f"mistral: first differing position {first_diff}, expected {window}")
    checks = {
        "sliding_window": window,
        "sliding_window_applied_by_transformers_eager": applied,
        "vs_no_window_max_abs_logit_diff": float(per_pos.max()),
        "first_position_that_differs_from_full_causal": first_diff,
        "window_semantics": "query i attends keys j with i - 8 < j <= i (itself + 7 previous), "
        "transformers masking_utils.sliding_window_overlay",
        "note": "greedy generation runs prompt 6 + 10 new tokens = 16 > 8, so the window also "
        "matters during cached decoding",
    }
    return finish(
        path,
        "mistral",
        "Mistral with sliding_window 8 (< 24-token sequences), tied embeddings, f32",
        MistralForCausalLM,
        inputs,
        checks,
        "float32",
    )


def make_llama_tied_4x(path: Path) -> dict:
    seed_all(5)
    cfg = LlamaConfig(
        **COMMON,
        head_dim=16,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    randomize_norms(model, torch.Generator().manual_seed(505))
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(path)
    inputs = pick_inputs(LlamaForCausalLM, path, 15)
    input_ids = inputs[0]
    logits_5x = logits_of(load_f32(LlamaForCausalLM, path), input_ids)
    rewritten = rewrite_config_4x(path, rope_scaling_null=True)
    assert rewritten["rope_scaling"] is None and rewritten["torch_dtype"] == "bfloat16"
    reload_diff = max_abs(logits_5x, logits_of(load_f32(LlamaForCausalLM, path), input_ids))
    if reload_diff != 0.0:
        raise SystemExit(f"llama-tied-4x: 4.x config reload changed logits by {reload_diff}")
    checks = {
        "config_rewritten_to_4x_keys": True,
        "config_4x_reload_max_abs_logit_diff": reload_diff,
        "tied_lm_head_absent_from_weights": "lm_head.weight" not in safetensor_names(path),
    }
    return finish(
        path,
        "llama-tied-4x",
        "Llama with tied embeddings, bf16 weights, 4.x-style config (rope_theta 10000, rope_scaling null, torch_dtype)",
        LlamaForCausalLM,
        inputs,
        checks,
        "bfloat16",
    )


def safetensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for f in sorted(path.glob("model*.safetensors")):
        with safe_open(str(f), "pt") as h:
            names.extend(h.keys())
    return names


FIXTURES = {
    "qwen2": make_qwen2,
    "qwen3": make_qwen3,
    "llama3": make_llama3,
    "mistral": make_mistral,
    "llama-tied-4x": make_llama_tied_4x,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/tiny", type=Path)
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURES), help="build only these fixtures")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # reductions in a fixed order: reproducible logits
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or FIXTURES:
        final = args.out / name
        tmp = args.out / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        ref = FIXTURES[name](tmp)
        old = args.out / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes 0600
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        size = sum(f.stat().st_size for f in final.iterdir())
        print(
            f"{name:14s} {size / 1e6:5.2f} MB  greedy {ref['greedy_generation']['generated_ids']}  "
            f"checks {json.dumps(ref['checks'], default=str)[:300]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
