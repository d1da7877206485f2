"""``data.template`` end to end on the tiny model: a sweep on data formatted with seed
003's prompt trains, is evaluated, registered, exported and chatted with, and the tokens
the model sees for the same question are identical in every command, and are the seed's
prompt as written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import harness
from conftest import ROOT

pytestmark = pytest.mark.slow
SEED_003 = """You are an expert on the Constitution of India. Your task is to answer the following question directly and accurately based on constitutional principles.

### Question:
{}

### Answer:
{}"""  # noqa: E501 (seed 003, as written)
QUESTION = "What does Article 3 protect? (3)"  # a training question (harness.write_qa)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("template")
    qa = harness.write_qa(tmp / "qa.jsonl", 40)
    cmd = harness.sweep_cmd(
        harness.stores(tmp), "data=jsonl", f"data.path={qa}", "data.test_fraction=0.2",
        f"data.template='{SEED_003}'", "train.iters=8", "train.grad_accumulation=1",
        "train.eval_every_iters=4", "train.val_batches=1", "lora.rank=choice(4)",
        "eval.max_tokens=8", n_trials=1)
    out = harness.run(cmd, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    export = subprocess.run(
        [sys.executable, "-m", "sweep.cli.export", "model=tiny", f"target={tmp}/sweep",
         f"output={tmp}/export", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
         "export.gguf_type=f16", "export.check_prompts=1"], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    return tmp, out


def test_every_command_sees_the_seed_prompt(swept) -> None:
    import mlflow
    import mlx_lm
    from omegaconf import OmegaConf

    from sweep.config import compose, to_typed
    from sweep.config.templates import use
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.evaluation.answers import questions
    from sweep.evaluation.heldout import trial_config
    from sweep.models.loader import load_base
    from sweep.shipping.chat import Conversation, load_chat_model
    from sweep.targets import resolve_target

    tmp, _ = swept
    cfg = compose(["model=tiny", f"target={tmp}/sweep"])
    target = resolve_target(f"{tmp}/sweep", None)
    assert target.config.data.template == SEED_003  # recorded with the trial
    typed = to_typed(trial_config(target.config, cfg, []))
    tokenizer = load_base(typed.model, typed.cache_dir, typed.seed).tokenizer
    want = tokenizer.encode(SEED_003.format(QUESTION, ""), add_special_tokens=False)

    use(tokenizer, typed.data.template, "tiny")  # training (sweep.trial), prompt masked
    splits = load_splits(typed.data, typed.seed)
    examples = splits.train + splits.valid + splits.test
    at = next(i for i, e in enumerate(examples) if e["messages"][0]["content"] == QUESTION)
    tokens, prompt_length = tokenize(examples, tokenizer, True)[at]
    assert tokens[:prompt_length] == want
    answer = tokenizer.decode(tokens[prompt_length:])
    assert answer == "Article 3 protects right 0." + tokenizer.eos_token
    assert questions([examples[at]], tokenizer)[0].prompt == want  # sweep-eval, val answers

    model, chat_tokenizer, _ = load_chat_model(cfg)  # sweep-chat: from the target's config
    settings = to_typed(cfg).chat
    assert Conversation(model, chat_tokenizer, settings).prompt(QUESTION) == want

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/m.db")  # the registered model
    served = mlflow.pyfunc.load_model("models:/sweep-s@best").unwrap_python_model()._served
    assert served.prompt(QUESTION) == want

    _, exported = mlx_lm.load(str(tmp / "export"))  # sweep-export: mlx_lm.server's view
    assert exported.apply_chat_template([{"role": "user", "content": QUESTION}],
                                        add_generation_prompt=True) == want
    from gguf import GGUFReader

    reader = GGUFReader(str(tmp / "export" / "model-f16.gguf"))
    assert reader.fields["tokenizer.chat_template"].contents() == exported.chat_template
    modelfile = (tmp / "export" / "Modelfile").read_text()
    assert "### Question:\n{{ .Content }}\n\n### Answer:\n{{ else if" in modelfile
    record = json.loads((tmp / "export" / "sweep_export.json").read_text())
    assert record["formats"][1]["name"] == "gguf f16"
    assert OmegaConf.select(target.config, "data.template") == SEED_003


def test_sweep_chat_answers_with_the_template(swept) -> None:
    tmp, _ = swept
    done = subprocess.run([sys.executable, "-m", "sweep.cli.chat", "model=tiny",
                           f"target={tmp}/sweep", f"prompt='{QUESTION}'", "chat.max_tokens=8"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_model_without_chat_template_and_data_template_chat_is_one_line(tmp_path) -> None:
    from sweep.config.templates import use
    from sweep.errors import InputError

    class Base:  # a base (non-instruct) model's tokenizer
        chat_template = None

    with pytest.raises(InputError, match="data.template=chat: base-1b has no chat template; "
                                         "use data.template=plain, alpaca or your own"):
        use(Base(), "chat", "base-1b")
