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
                   f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
                   "export.gguf_type=[f32,f16,q8_0,q4_0]")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_export_writes_a_fused_model_and_checked_ggufs(exported) -> None:
    import mlx_lm

    out, done = exported
    for name in ("config.json", "model.safetensors", "tokenizer.json", "model-f32.gguf",
                 "model-f16.gguf", "model-q8_0.gguf", "model-q4_0.gguf", "Modelfile",
                 "sweep_export.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "sweep_export.json").read_text())
    check, formats = record["check"], {f["name"]: f for f in record["formats"]}
    assert len(check["prompts"]) == 3 and check["float_test_ppl"] > 1
    assert list(formats) == ["mlx float32", "gguf f32", "gguf f16", "gguf q8_0", "gguf q4_0"]
    f32 = formats["gguf f32"]
    assert f32["max_weight_difference"] == 0 and f32["answers"] == check["answers"]["float"]
    assert f32["ppl_increase"] == pytest.approx(0, abs=1e-6) and f32["agreement"] == 3
    for name, f in formats.items():  # every one read back and scored on the test split
        assert f["bytes"] > 0 and f["test_ppl"] > 1 and abs(f["ppl_increase"]) < 0.25, name
        assert f["bytes"] == (out / f["file"]).stat().st_size or f["file"] == "."
    sizes = {t: formats[f"gguf {t}"]["bytes"] / f32["bytes"] for t in ("f16", "q8_0", "q4_0")}
    # the tiny model's tokenizer metadata and tied embeddings (written q8_0) weigh as much
    # as its layers: SmolLM2's ratios are in docs/shipping.md
    assert sizes["f16"] < 0.6 and sizes["q8_0"] < 0.4 and sizes["q4_0"] < sizes["q8_0"], sizes
    assert formats["gguf q4_0"]["tensor_types"][0] in ("Q4_0", "F32"), formats["gguf q4_0"]
    assert "Q8_0" in formats["gguf q4_0"]["tensor_types"]  # the tied output projection
    assert "best trial" in record["target"] and record["adapter_config"]["lora_parameters"]
    assert "gguf q4_0" in done.stdout and "llama-cli" in done.stdout
    model, tokenizer = mlx_lm.load(str(out))  # a standalone mlx-lm model: no adapter
    assert not any("lora" in type(m).__name__.lower() for _, m in model.named_modules())
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-f32.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.slow
def test_ggufs_are_what_llama_cpp_reads(exported) -> None:
    from gguf import GGUFReader  # llama.cpp's own Python reader

    out, _ = exported
    for kind, file_type in (("f32", 0), ("f16", 1), ("q8_0", 7), ("q4_0", 2)):
        reader = GGUFReader(str(out / f"model-{kind}.gguf"))
        field = lambda key: reader.fields[key].contents()  # noqa: E731
        assert field("general.architecture") == "llama"
        assert field("general.file_type") == file_type, kind
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
                           f"output={out}", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
                           "export.gguf_type=f32"],
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


@pytest.mark.parametrize("setting,message", [
    ("export.gguf_type=q3_0", "export.gguf_type='q3_0': must be among f32, f16, bf16, q8_0"),
    ("export.gguf_type=[q8_0,q4_k_m]", "llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M"),
    ("export.gguf_type=[q8_0,q8_0]", "lists a type twice"),
    ("export.mlx_bits=7", "export.mlx_bits=7: must be null or one of 2, 3, 4, 5, 6, 8"),
    ("export.mlx_dtype=float8", "export.mlx_dtype='float8'"),
    ("export.max_ppl_increase=-1", "export.max_ppl_increase=-1"),
    ("data.template='### Q: {question}'", "has no {answer} field (where the answer goes, last)"),
])
def test_bad_export_settings_are_one_line(tiny_sweep, tmp_path: Path, setting, message) -> None:
    tmp, _, _ = tiny_sweep
    done = _export(f"target={tmp}/sweep", f"output={tmp_path / 'out'}",
                   f"mlflow.tracking_uri=sqlite:///{tmp}/m.db", setting)
    said = done.stdout + done.stderr
    assert done.returncode == 2 and message in said, said[-2000:]
    assert "Traceback" not in said and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_mlx_quantized_folder_and_the_perplexity_bound(tiny_sweep, tmp_path: Path) -> None:
    """mlx-lm's 4-bit folder and a GGUF type MLX cannot read (q5_1, read with llama.cpp's
    gguf package) are checked like the others; a bound no 4-bit file meets fails the export
    and writes nothing."""
    import mlx_lm

    tmp, _, _ = tiny_sweep
    out = tmp_path / "model"
    common = [f"target={tmp}/sweep", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db"]
    done = _export(*common, f"output={out}", "export.gguf_type=q5_1", "export.mlx_bits=4")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "sweep_export.json").read_text())
    formats = {f["name"]: f for f in record["formats"]}
    assert list(formats) == ["mlx 4-bit", "gguf q5_1"] and record["ggufs"] == ["model-q5_1.gguf"]
    assert formats["gguf q5_1"]["tensor_types"][0] == "Q5_1"
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    model, _ = mlx_lm.load(str(out))
    assert any(type(m).__name__ == "QuantizedLinear" for _, m in model.named_modules())
    for f in formats.values():
        assert 0 < f["ppl_increase"] < 0.25 and f["agreement"] >= 0, f
    strict = _export(*common, f"output={tmp_path / 'strict'}", "export.gguf_type=q4_0",
                     "export.max_ppl_increase=0")
    said = strict.stdout + strict.stderr
    assert strict.returncode == 2, said[-2000:]
    assert "export.max_ppl_increase allows 0%); nothing was written" in said
    assert not (tmp_path / "strict").exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("model",)]


def test_a_gguf_type_for_an_architecture_without_a_writer() -> None:
    from types import SimpleNamespace

    from sweep.errors import InputError
    from sweep.shipping.export import _gguf_wanted

    typed = SimpleNamespace(export=SimpleNamespace(gguf=True, gguf_type=["q8_0"]))
    assert _gguf_wanted(typed, "llama", []) == ""
    assert "not 'qwen2'" in _gguf_wanted(typed, "qwen2", [])  # the default: a note
    with pytest.raises(InputError, match="export.gguf_type=q8_0: mlx-lm writes GGUF for "):
        _gguf_wanted(typed, "qwen2", ["export.gguf_type=q8_0"])
    typed.export.gguf = False
    assert "export.gguf=false" in _gguf_wanted(typed, "qwen2", ["export.gguf_type=q8_0"])
