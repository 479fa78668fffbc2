"""Tiny models for the end-to-end plugin tests: a config.json kept in the repo, random weights
of a real scale written by the test (vLLM's dummy weights are ~1e-3 and hide kernel errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODELS = Path(__file__).with_name("models")
# Prompts of different lengths (token ids < vocab 512): with a 32-token step budget the first
# steps mix chunked prefills with decodes.
PROMPTS = [
    [1, 17, 300],
    [1, 45, 99, 310, 4, 77, 123, 8, 200],
    [1] + [(7 * i + 11) % 500 + 3 for i in range(16)],
    [1] + [(13 * i + 5) % 500 + 3 for i in range(29)],
]
MAX_TOKENS = 16
# The tiny DeepSeek-V3 (MLA) prompts, lengths 3 to 70: with chunked prefill and a 32-token step
# budget the 40- and 70-token prompts prefill over 2-3 steps.
MLA_PROMPTS = [
    [1, 17, 300],
    [1, 45, 99, 310, 4, 77, 123, 8, 200],
    [1] + [(7 * i + 11) % 500 + 3 for i in range(39)],
    [1] + [(13 * i + 5) % 500 + 3 for i in range(69)],
]
MLA_MAX_TOKENS = 12


def materialize(name: str, out_dir: Path, *, seed: int = 0, std: float = 0.2) -> Path:
    """Write ``models/<name>/config.json`` plus seeded random safetensors weights into ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = MODELS / name
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.from_pretrained(src)
    cfg.initializer_range = std
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for mod_name, buf in model.named_buffers():
            if mod_name.endswith("e_score_correction_bias"):
                # A real correction bias (transformers initialises it to zero), so expert choice
                # depends on it.
                buf.copy_(torch.rand(buf.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)
    model.save_pretrained(out_dir)
    shutil.copy(src / "config.json", out_dir / "config.json")
    json.loads((out_dir / "config.json").read_text())  # still a valid config
    return out_dir
