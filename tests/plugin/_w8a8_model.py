"""A tiny Qwen3-MoE-style model with a compressed-tensors W8A8 int8 checkpoint, written by the tests:
seeded random weights of a real scale (std 0.2, as the other e2e models), every Linear but the
router and lm_head quantized per output channel to int8 (symmetric, round half to even), stored
as compressed-tensors' "int-quantized" format (`<name>.weight` int8, `<name>.weight_scale` fp32
[out, 1]); activations are dynamic per token (the quantization config in ``config.json``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from vllm_ascend_triton.kernels.fused_moe.w8a8_reference import quantize_weight_per_channel

MODEL_DIR = Path(__file__).with_name("models") / "qwen3_moe_w8a8"


def float_weights(cfg: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Every tensor of the model, fp32, by its checkpoint name."""
    gen = torch.Generator().manual_seed(seed)
    h, v, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    inter, experts = cfg["moe_intermediate_size"], cfg["num_experts"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    w = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": norm(h), "lm_head.weight": rand(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = rand(nh * hd, h)
        w[p + "self_attn.k_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = rand(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, nh * hd)
        w[p + "self_attn.q_norm.weight"] = norm(hd)
        w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "mlp.gate.weight"] = rand(experts, h)
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            w[q + "gate_proj.weight"] = rand(inter, h)
            w[q + "up_proj.weight"] = rand(inter, h)
            w[q + "down_proj.weight"] = rand(h, inter)
    return w


def is_quantized(name: str) -> bool:
    """The Linear weights the config quantizes (all but lm_head and the router)."""
    return name.endswith("_proj.weight")


def write_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """config.json and model.safetensors of the W8A8 model in ``out_dir``."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for name, t in float_weights(cfg, seed).items():
        if is_quantized(name):
            q, scale = quantize_weight_per_channel(t)
            tensors[name] = q
            tensors[name.removesuffix("weight") + "weight_scale"] = scale
        else:
            tensors[name] = t.to(torch.bfloat16)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"))
    shutil.copy(MODEL_DIR / "config.json", out_dir / "config.json")
    return out_dir


def expert_tensors(model_dir: Path, layer: int) -> tuple[torch.Tensor, ...]:
    """One MoE layer's experts as vLLM's method holds them: (w13 int8 [E, 2I, H], w2 int8 [E, H, I],
    w13_scale fp32 [E, 2I, 1], w2_scale fp32 [E, H, 1], router weight [E, H])."""
    from safetensors.torch import load_file

    t = load_file(str(model_dir / "model.safetensors"))
    cfg = json.loads((model_dir / "config.json").read_text())
    p = f"model.layers.{layer}.mlp."
    w13, w2, s13, s2 = [], [], [], []
    for e in range(cfg["num_experts"]):
        q = f"{p}experts.{e}."
        w13.append(torch.cat([t[q + "gate_proj.weight"], t[q + "up_proj.weight"]]))
        s13.append(torch.cat([t[q + "gate_proj.weight_scale"], t[q + "up_proj.weight_scale"]]))
        w2.append(t[q + "down_proj.weight"])
        s2.append(t[q + "down_proj.weight_scale"])
    return torch.stack(w13), torch.stack(w2), torch.stack(s13), torch.stack(s2), t[p + "gate.weight"]
