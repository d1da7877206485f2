"""``lora.scaling``: alpha / rank (standard) or alpha / sqrt(rank) (rsLoRA), written into the
adapter so that mlx-lm loads it with the scale it was trained with."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import pytest

from sweep.config.schema import LoraConfig, LoraScaling
from sweep.training.lora import apply_lora, save_adapter


def tiny_llama():
    from mlx_lm.models import llama

    return llama.Model(llama.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=2,
                                       intermediate_size=32, num_attention_heads=2,
                                       rms_norm_eps=1e-5, vocab_size=50,
                                       num_key_value_heads=2))


@pytest.mark.parametrize("scaling,expected", [(LoraScaling.standard, 32 / 16),
                                              (LoraScaling.rslora, 32 / math.sqrt(16))])
def test_the_scale_follows_the_scaling(scaling, expected) -> None:
    cfg = LoraConfig(rank=16, alpha=32, scaling=scaling)
    assert cfg.scale == pytest.approx(expected)
    model = tiny_llama()
    config = apply_lora(model, cfg, seed=0)
    scales = [m.scale for _, m in model.named_modules() if hasattr(m, "lora_a")]
    assert len(scales) == 14 and all(s == pytest.approx(expected) for s in scales)
    assert config["lora_parameters"]["scale"] == pytest.approx(expected)
    assert config["scaling"] == scaling.value


def test_an_rslora_adapter_loads_in_mlx_lm_with_its_scale(tmp_path: Path) -> None:
    from mlx_lm.tuner.utils import load_adapters

    mx.random.seed(0)
    trained = tiny_llama()
    config = apply_lora(trained, LoraConfig(rank=4, alpha=8, dropout=0.0,
                                            scaling=LoraScaling.rslora), seed=0)
    for _, m in trained.named_modules():  # a non-zero B, as after training
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.1
    save_adapter(trained, config, tmp_path)
    mx.random.seed(0)
    loaded = load_adapters(tiny_llama(), str(tmp_path))  # what mlx_lm.load(adapter_path=) does
    assert all(m.scale == pytest.approx(4.0) for _, m in loaded.named_modules()
               if hasattr(m, "lora_a"))  # 8 / sqrt(4), not 8 / 4
    trained.eval()
    loaded.eval()
    tokens = mx.array([[1, 2, 3, 4, 5]])
    assert mx.allclose(trained(tokens), loaded(tokens), atol=1e-5).item()
