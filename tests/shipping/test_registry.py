"""The registered MLflow model of a sweep's winner (tiny model): registered when the sweep
ends, ``models:/<name>@best`` answers like the adapter itself, nothing pickled, the base
referenced and checked, and the alias moved to a newer winner."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweep.shipping.registry import REGISTERED_ATTR, model_name


@pytest.fixture(scope="module")
def registered(tiny_sweep):
    tmp, _, out = tiny_sweep
    uri = f"sqlite:///{tmp}/m.db"
    mlflow.set_tracking_uri(uri)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    return tmp, study, MlflowClient(uri), out


def test_model_name_is_derived_from_the_study() -> None:
    assert model_name("lora_smollm2 135m/legal") == "sweep-lora_smollm2-135m-legal"
    assert model_name("x", "mine") == "mine"


@pytest.mark.slow
def test_the_winner_is_registered_with_alias_best(registered) -> None:
    _, study, client, out = registered
    best = study.best_trial
    assert study.user_attrs[REGISTERED_ATTR] == best.number
    version = client.get_model_version_by_alias("sweep-s", "best")
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    assert version.tags["sweep.trial"] == str(best.number)
    assert "models:/sweep-s@best" in out.stdout


@pytest.mark.slow
def test_registered_model_answers_as_the_adapter(registered) -> None:
    from sweep.config.schema import ModelConfig, ModelSource
    from sweep.evaluation.answers import fused_adapters, generate_answers
    from sweep.models.loader import load_base
    from sweep.training.lora import load_adapter

    _, study, _, _ = registered
    model = mlflow.pyfunc.load_model("models:/sweep-s@best")
    question = "What does Article 21 protect?"
    answers = model.predict([question, "Which article abolishes untouchability?"])
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str)
                                                                    for a in answers)
    tiny = load_base(ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny",
                                 quantize=False), seed=42)
    load_adapter(tiny.model, Path(study.best_trial.user_attrs["output_dir"]) / "adapter")
    prompt = tiny.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                add_generation_prompt=True)
    with fused_adapters(tiny.model):
        direct = generate_answers(tiny.model, tiny.tokenizer, [prompt], 8, 1).texts[0]
    assert answers[0] == direct  # eval.max_tokens=8 in the sweep: the model's max_tokens


@pytest.mark.slow
def test_artifacts_are_safetensors_and_json_and_the_base_is_referenced(registered) -> None:
    from sweep.shipping.registry import weights_digest

    _, _, client, _ = registered
    version = client.get_model_version_by_alias("sweep-s", "best")
    local = Path(mlflow.artifacts.download_artifacts(version.source))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib", ".bin")]
    assert any(p.name == "adapters.safetensors" for p in files)
    assert not any(p.name == "model.safetensors" for p in files)  # the base is not copied
    import yaml

    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    base = mlmodel["flavors"]["python_function"]["config"]["base"]
    assert base["sha256"] == weights_digest(Path(base["path"]))
    assert base["model"]["source"] == "tiny"
    example = json.loads((local / "input_example.json").read_text())
    assert example and mlmodel["signature"]["inputs"]


@pytest.mark.slow
def test_a_different_base_is_refused(registered) -> None:
    _, _, client, _ = registered
    version = client.get_model_version_by_alias("sweep-s", "best")
    local = Path(mlflow.artifacts.download_artifacts(version.source))
    import yaml

    config = yaml.safe_load((local / "MLmodel").read_text())
    config = config["flavors"]["python_function"]["config"]
    config["base"]["sha256"] = "0" * 64
    with pytest.raises(Exception, match="is not the one the adapter was trained on"):
        mlflow.pyfunc.load_model("models:/sweep-s@best", model_config=config)


@pytest.mark.slow
def test_alias_moves_to_the_newest_winner(registered) -> None:
    from sweep.config import compose, to_typed
    from sweep.shipping.registry import register_adapter

    tmp, study, client, _ = registered
    other = next(t for t in study.trials if t.number != study.best_trial.number
                 and t.user_attrs.get("mlflow_run_id"))
    before = client.get_model_version_by_alias("sweep-s", "best").version
    typed = to_typed(compose(["model=tiny", "eval.max_tokens=8"]))
    version = register_adapter(f"sqlite:///{tmp}/m.db", other.user_attrs["mlflow_run_id"],
                               Path(other.user_attrs["output_dir"]) / "adapter", typed,
                               "sweep-s", "best", {"sweep.trial": str(other.number)})
    now = client.get_model_version_by_alias("sweep-s", "best")
    assert str(now.version) == version and int(version) == int(before) + 1
    assert now.tags["sweep.trial"] == str(other.number)
