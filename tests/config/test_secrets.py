"""No secret is written anywhere: a password in a URL is refused before Hydra, the sweeper
or MLflow copy it (one line naming the key, exit 2, no file written), and a sweep run
with tokens in its environment leaves none of them in any file, log, param or tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_overrides
from sweep.secrets import SecretInConfig, password_in, refuse_in_argv, refuse_in_values

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("value,scheme", [
    ("postgresql://optuna:pw@db.example:5432/optuna", "postgresql"),
    ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg"),
    ("mysql+pymysql://root:x@127.0.0.1/optuna", "mysql+pymysql"),
    ("https://me:tok@mlflow.example", "https"),
    ("postgresql://optuna@db.example/optuna", None),  # a user, no password
    ("sqlite:////tmp/a:b@c/o.db", None),
    ("http://127.0.0.1:5000", None),
    ("file:///tmp/mlruns", None),
    ("just text with a:colon@at", None),
    (42, None),
])
def test_password_in(value, scheme) -> None:
    assert password_in(value) == scheme


def test_the_message_names_the_key_and_where_the_password_goes() -> None:
    with pytest.raises(SecretInConfig) as caught:
        refuse_in_values([("seed", 1), ("hydra.sweeper.storage", f"postgresql://u:{SECRET}@h/d")])
    message = str(caught.value)
    assert message.startswith("hydra.sweeper.storage: ") and "PGPASSWORD" in message
    assert SECRET not in message
    with pytest.raises(SecretInConfig, match="MLFLOW_TRACKING_PASSWORD"):
        refuse_in_values([("mlflow.tracking_uri", f"http://u:{SECRET}@h")])


def test_refuse_in_argv(capsys) -> None:
    refuse_in_argv("sweep", ["-m", "lora.rank=8", "mlflow.tracking_uri=http://h:5000"])
    with pytest.raises(SystemExit) as stopped:
        refuse_in_argv("sweep", ["-m", f"+hydra.sweeper.storage=postgresql://u:{SECRET}@h/d"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("sweep: hydra.sweeper.storage: ")
    assert SECRET not in err


def _run(args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _files_with(folder: Path, needle: str):
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path.relative_to(folder)))
    return hits


@pytest.mark.parametrize("how", ["sweep-storage", "sweep-tracking", "run-tracking"])
def test_a_password_on_the_command_line_is_refused_before_anything_is_written(
        tmp_path: Path, qa_file: Path, how: str) -> None:
    storage = f"hydra.sweeper.storage=postgresql://optuna:{SECRET}@127.0.0.1:1/optuna"
    tracking = f"mlflow.tracking_uri=http://me:{SECRET}@127.0.0.1:1"
    args = {"sweep-storage": ["-m", storage, f"hydra.sweep.dir={tmp_path}/out"],
            "sweep-tracking": ["-m", tracking, f"hydra.sweep.dir={tmp_path}/out"],
            "run-tracking": [tracking, f"hydra.run.dir={tmp_path}/out"]}[how]
    base = tiny_overrides(tmp_path, qa_file)  # its last override: the tracking URI
    out = _run([*(base if how == "sweep-storage" else base[:-1]), *args])
    text = out.stdout + out.stderr
    key = "hydra.sweeper.storage" if how == "sweep-storage" else "mlflow.tracking_uri"
    assert out.returncode == 2 and f"{key}: " in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    assert SECRET not in text and not (tmp_path / "out").exists()
    assert _files_with(tmp_path, SECRET) == []


def test_a_password_from_a_config_file_stops_the_sweep_before_its_jobs(tmp_path: Path,
                                                                      qa_file: Path) -> None:
    """Not on the command line: in a YAML of the user's own config folder, through
    ``${oc.env:}``. The sweeper refuses it before multirun.yaml and the first job."""
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "conf" / "hparams_search" / "remote.yaml").write_text(
        "# @package _global_\ndefaults:\n  - lora\n  - _self_\nhydra:\n  sweeper:\n"
        "    storage: postgresql://optuna:${oc.env:SWEEP_TEST_PW}@127.0.0.1:1/optuna\n")
    env = {**os.environ, "SWEEP_TEST_PW": SECRET}
    out = _run(["-m", f"--config-dir={tmp_path}/conf", "hparams_search=remote",
                *tiny_overrides(tmp_path, qa_file), f"hydra.sweep.dir={tmp_path}/out"], env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "hydra.sweeper.storage: " in text, text[-2000:]
    assert "Traceback" not in text and SECRET not in text
    assert not (tmp_path / "out" / "multirun.yaml").exists() and not (tmp_path / "mlflow").exists()
    assert _files_with(tmp_path, SECRET) == []


@pytest.mark.slow
def test_tokens_in_the_environment_reach_no_file_log_param_or_tag(tmp_path: Path,
                                                                   qa_file: Path) -> None:
    """A whole sweep (2 trials, the winner evaluated and registered) with credentials in
    its environment, as a sweep against PostgreSQL and a tracking server is run."""
    tokens = {"PGPASSWORD": "pg-" + SECRET, "MLFLOW_TRACKING_PASSWORD": "ml-" + SECRET,
              "MLFLOW_TRACKING_TOKEN": "tok-" + SECRET, "HF_TOKEN": "hf-" + SECRET,
              "AWS_SECRET_ACCESS_KEY": "aws-" + SECRET}
    out = _run(["-m", *tiny_overrides(tmp_path, qa_file), "hydra.sweeper.n_trials=2",
                "lora.rank=choice(4,8)", "data.test_fraction=0.2", "eval.max_tokens=4",
                f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db", "hydra.sweeper.study_name=s",
                f"hydra.sweep.dir={tmp_path}/out"], env={**os.environ, **tokens})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "mlflow" / "m.db").exists() and (tmp_path / "out" / "multirun.yaml").exists()
    for token in tokens.values():
        assert token not in out.stdout + out.stderr
        assert _files_with(tmp_path, token) == [], token
    assert SECRET not in json.dumps(sorted(str(p) for p in tmp_path.rglob("*")))
