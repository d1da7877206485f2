"""``sweep-export``: the fused mlx-lm folder, the GGUF read back by the project's own
importer and by llama.cpp's reader (gguf-py), the Modelfile, and bad targets and output
folders as one line and exit status 2 (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

EXPORT = [sys.executable, "-c", "from sweep.cli.export import main; main()"]


def _export(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPORT, "model=tiny", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tiny_sweep, tmp_path_factory):
    tmp, _, _ = tiny_sweep
    out = tmp_path_factory.mktemp("export") / "model"
    done = _export(f"target={tmp}/sweep", f"output={out}",
                   f"mlflow.tracking_uri=sqlite:///{tmp}/m.db")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_export_writes_a_fused_model_and_a_checked_gguf(exported) -> None:
    import mlx_lm

    out, done = exported
    for name in ("config.json", "model.safetensors", "tokenizer.json", "model.gguf",
                 "Modelfile", "sweep_export.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "sweep_export.json").read_text())
    check = record["check"]
    assert len(check["prompts"]) == 3 and check["max_weight_difference"] == 0
    assert check["answers"]["gguf (read back)"] == check["answers"]["fused"]
    assert "best trial" in record["target"] and record["adapter_config"]["lora_parameters"]
    assert "3/3 greedy answers identical" in done.stdout and "llama-cli" in done.stdout
    model, tokenizer = mlx_lm.load(str(out))  # a standalone mlx-lm model: no adapter
    assert not any("lora" in type(m).__name__.lower() for _, m in model.named_modules())
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.slow
def test_gguf_is_what_llama_cpp_reads(exported) -> None:
    from gguf import GGUFReader  # llama.cpp's own Python reader

    out, _ = exported
    reader = GGUFReader(str(out / "model.gguf"))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2"  # byte-level BPE, not SentencePiece
    assert len(field("tokenizer.ggml.merges")) > 40000
    assert "<|im_start|>" in field("tokenizer.chat_template")
    config = json.loads((out / "config.json").read_text())
    assert field("llama.block_count") == config["num_hidden_layers"]
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight" in names and "token_embd.weight" in names


@pytest.mark.slow
def test_a_wrong_gguf_fails_the_export(tiny_sweep, tmp_path: Path) -> None:
    """Without llama.cpp's q/k row permutation the read-back weights differ: the export
    fails and writes nothing."""
    tmp, _, _ = tiny_sweep
    script = ("import mlx_lm.gguf as g; g.permute_weights = lambda w, *a, **k: w; "
              "from sweep.cli.export import main; main()")
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-c", script, "model=tiny", f"target={tmp}/sweep",
                           f"output={out}", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "read back differs from the fused model in" in done.stdout + done.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "model"]


@pytest.mark.parametrize("target,output,message", [
    ("{tmp}/nothing", "{out}", "no such folder, and not an MLflow run id"),
    ("{tmp}", "{out}", "has no adapters.safetensors"),
    ("0123456789abcdef0123456789abcdef", "{out}", "no MLflow run with this id"),
    ("{sweep}", "{file}/sub", "cannot write in"),
    ("{sweep}", "{file}", "a file, not a folder"),
    ("{sweep}", "{full}", "not empty (export.overwrite=true replaces it)"),
    ("{sweep}", "", "output= is required"),
])
def test_bad_targets_and_outputs_are_one_line(tiny_sweep, tmp_path: Path, target, output,
                                              message) -> None:
    tmp, _, _ = tiny_sweep
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    values = {"tmp": tmp_path, "out": tmp_path / "out", "sweep": f"{tmp}/sweep",
              "file": tmp_path / "file", "full": tmp_path / "full"}
    args = [f"target={target.format(**values)}", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db"]
    if output:
        args.append(f"output={output.format(**values)}")
    done = _export(*args)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-2000:]
    assert message in said and "Traceback" not in said
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_adapter_for_another_base_model(tiny_sweep, tmp_path: Path) -> None:
    tmp, _, _ = tiny_sweep
    done = _export(f"target={tmp}/sweep", f"output={tmp_path / 'out'}",
                   f"mlflow.tracking_uri=sqlite:///{tmp}/m.db", "model.arch.hidden_size=96",
                   "model.arch.intermediate_size=192")
    said = done.stdout + done.stderr
    assert done.returncode == 2 and "another base model" in said, said[-2000:]
    assert "Traceback" not in said and not (tmp_path / "out").exists()
