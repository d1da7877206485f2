"""``sweep-chat``: one answer with ``prompt=``, the adapter's own greedy answer (and the base
model's with ``adapter=none``), multi-turn history through the chat template, piped input,
the terminal loop's commands, and bad targets as one line with exit status 2 (tiny model,
one trial of a one-trial sweep, so both a sweep folder and a trial folder are targets)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

import harness
from conftest import ROOT, compose_config
from sweep.shipping.chat import Conversation, chat_loop, chat_session

CHAT = [sys.executable, "-m", "sweep.cli.chat"]
QUESTION = "What does Article 21 protect?"
SECOND = "Which article abolishes untouchability?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-trial sweep on the tiny model, trained enough (lr 5e-3, 16 iterations) that it
    answers with words: after a few iterations at the usual rates it answers newlines."""
    tmp = tmp_path_factory.mktemp("chat")
    out = harness.run(harness.worded_sweep(tmp, "registry.after_sweep=false"), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, tmp / "sweep", tmp / "sweep" / "0"


def run_chat(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*CHAT, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=600)


def expected_answer(trial: Path, question: str, adapter: bool, max_tokens: int) -> str:
    """The greedy answer of mlx-lm itself, from the trial's model folder (and adapter)."""
    import mlx_lm

    from sweep.config import to_typed
    from sweep.models.loader import prepare_model_dir

    typed = to_typed(compose_config(["model=tiny"]))
    model_dir = prepare_model_dir(typed.model, typed.cache_dir, typed.seed)
    model, tokenizer = mlx_lm.load(model_dir,
                                   adapter_path=str(trial / "adapter") if adapter else None)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           add_generation_prompt=True)
    return mlx_lm.generate(model, tokenizer, prompt, max_tokens=max_tokens)


def test_prompt_prints_the_adapters_answer(trained) -> None:
    tmp, sweep_dir, trial = trained
    out = run_chat(f"target={trial}", f"prompt={QUESTION}", "chat.max_tokens=24", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip(), "an empty answer"
    assert out.stdout == expected_answer(trial, QUESTION, True, 24) + "\n"  # stdout: answers only
    assert f"chatting with adapter {trial / 'adapter'} on tiny" in out.stderr
    # the sweep's folder names its best trial: the same adapter, the same answer
    swept = run_chat(f"target={sweep_dir}", f"prompt={QUESTION}", "chat.max_tokens=24", cwd=tmp)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert swept.stdout == out.stdout
    assert "chatting with the adapter of best trial 0 of study 's'" in swept.stderr
    # and the trial's MLflow run id names it too
    import optuna

    run_id = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db").best_trial \
        .user_attrs["mlflow_run_id"]
    by_id = run_chat(f"target={run_id}", f"mlflow.tracking_uri=sqlite:///{tmp}/m.db",
                     f"prompt={QUESTION}", "chat.max_tokens=24", cwd=tmp)
    assert by_id.returncode == 0, by_id.stderr[-3000:]
    assert by_id.stdout == out.stdout and f"MLflow run {run_id}" in by_id.stderr
    assert not (tmp / "mlruns").exists()  # a folder target opens no tracking store


def answers(conversation: Conversation, *questions: str) -> List[str]:
    return ["".join(conversation.ask(q)) for q in questions]


def test_adapter_and_base_answers_are_mlx_lms_own(trained) -> None:
    _, _, trial = trained
    overrides = [f"target={trial}", "chat.max_tokens=24"]
    with chat_session(compose_config(overrides), overrides) as (conversation, description):
        (adapter_answer,) = answers(conversation, QUESTION)
    assert description == f"adapter {trial / 'adapter'} on tiny"
    assert adapter_answer == expected_answer(trial, QUESTION, True, 24)
    overrides = [f"target={trial}", "adapter=None", "chat.max_tokens=24"]
    with chat_session(compose_config(overrides), overrides) as (conversation, description):
        (base_answer,) = answers(conversation, QUESTION)
    assert description == "the base model tiny (no adapter)"
    assert base_answer == expected_answer(trial, QUESTION, False, 24)
    # adapter=<folder> names the adapter explicitly (its config is beside it)
    overrides = [f"adapter={trial / 'adapter'}", "chat.max_tokens=24"]
    with chat_session(compose_config(overrides), overrides) as (conversation, _):
        assert answers(conversation, QUESTION) == [adapter_answer]


def test_history_goes_through_the_chat_template_and_reset_clears_it(trained) -> None:
    _, _, trial = trained
    overrides = [f"target={trial}", "chat.max_tokens=12", "chat.system=Answer briefly."]
    with chat_session(compose_config(overrides), overrides) as (conversation, _):
        tokenizer = conversation.tokenizer
        first, _ = answers(conversation, QUESTION, SECOND)
        turns = [{"role": "system", "content": "Answer briefly."},
                 {"role": "user", "content": QUESTION}, {"role": "assistant", "content": first},
                 {"role": "user", "content": SECOND}]
        assert conversation.last_prompt == tokenizer.apply_chat_template(
            turns, add_generation_prompt=True)
        text = tokenizer.decode(conversation.last_prompt)
        assert first.strip() and first in text and QUESTION in text
        assert len(conversation.messages) == 5
        conversation.reset()
        assert conversation.prompt(SECOND) == tokenizer.apply_chat_template(
            [turns[0], turns[3]], add_generation_prompt=True)
    overrides = [f"target={trial}", "chat.max_tokens=4", "chat.history=false"]
    with chat_session(compose_config(overrides), overrides) as (conversation, _):
        answers(conversation, QUESTION)
        assert QUESTION not in conversation.tokenizer.decode(conversation.prompt(SECOND))


def test_piped_lines_get_one_answer_each(trained) -> None:
    tmp, _, trial = trained
    overrides = [f"target={trial}", "chat.max_tokens=16"]
    with chat_session(compose_config(overrides), overrides) as (conversation, _):
        first, second = answers(conversation, QUESTION, SECOND)
    out = run_chat(*overrides, cwd=tmp, stdin=f"{QUESTION}\n\n{SECOND}\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == f"{first}\n{second}\n"
    assert "/reset, /quit" in out.stderr


class FakeConversation:
    """Answers "<question>!" piece by piece; "stop" in a question is Ctrl-C half-way."""

    def __init__(self) -> None:
        self.resets = 0
        self.asked: List[str] = []

    def reset(self) -> None:
        self.resets += 1

    def ask(self, text: str) -> Iterator[str]:
        self.asked.append(text)
        yield text
        if "stop" in text:
            raise KeyboardInterrupt
        yield "!"


def reader(*lines: object):
    queue = list(lines)

    def read() -> str:
        item = queue.pop(0) if queue else EOFError()
        if isinstance(item, BaseException):
            raise item
        return str(item)

    return read


@pytest.mark.parametrize("lines,answered,rest", [
    (["a", "", "/reset", "b"], "a!\nb!\n", 0),  # then end of input
    (["a", "/quit", "b"], "a!\n", 1),
    (["a", KeyboardInterrupt(), "b"], "a!\n", 1),  # Ctrl-C at the prompt: leave
    (["please stop", "b"], "please stop\nb!\n", 0),  # Ctrl-C in an answer: only that one
])
def test_chat_loop(lines, answered: str, rest: int) -> None:
    conversation, out, err = FakeConversation(), io.StringIO(), io.StringIO()
    read = reader(*lines)
    chat_loop(conversation, read, out, err)  # type: ignore[arg-type]
    assert out.getvalue() == answered
    assert conversation.resets == ("/reset" in lines)
    assert ("answer stopped" in err.getvalue()) == ("please stop" in lines)
    left = 0
    try:
        while True:
            read()
            left += 1
    except EOFError:
        pass
    assert left == rest


def test_bad_targets_are_one_line_and_status_2(trained, tmp_path: Path) -> None:
    tmp, _, trial = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([f"target={tmp_path}/missing"], "no such folder, and not an MLflow run id"),
        ([f"target={empty}"], "has no adapters.safetensors"),
        ([f"target={'ab' * 16}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"],
         "no MLflow run with this id"),
        ([f"target={trial}", "model.arch.hidden_size=96", "model.arch.intermediate_size=192"],
         "does not fit tiny.*another base model"),
        ([f"target={trial}", f"adapter={empty}"], f"adapter={re.escape(str(empty))}: .* has no "),
        ([], "target= is required"),
    ]
    for args, message in cases:
        out = run_chat(*args, "prompt=hi", "chat.max_tokens=2", cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert out.stdout == "" and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        errors = [line for line in out.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, (args, out.stderr[-2000:])
        assert re.search(message, errors[0]), (message, errors[0])
    assert not (tmp_path / "mlruns").exists()  # only a run id opens the tracking store


def test_console_script_and_cfg_job() -> None:
    assert 'sweep-chat = "sweep.cli.chat:main"' in (ROOT / "pyproject.toml").read_text()
    job = subprocess.run([*CHAT, "--cfg", "job", "target=x", "chat.temperature=0.7"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0 and "temperature: 0.7" in job.stdout


@pytest.mark.slow
def test_compare_answers_one_question_with_each_adapter(trained, tmp_path: Path) -> None:
    tmp, sweep_dir, trial = trained
    out = run_chat(f"target={sweep_dir}", f"prompt={QUESTION}", "chat.max_tokens=24",
                   f"compare=[none,{trial / 'adapter'}]", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    adapter = expected_answer(trial, QUESTION, True, 24)
    base = expected_answer(trial, QUESTION, False, 24)
    assert adapter != base
    lines = out.stdout.split("\n")
    assert lines[0].startswith("== the adapter of best trial 0 of study 's' (val_loss ")
    assert "\n".join(lines[1:]) == (f"{adapter}\n== the base model tiny (no adapter) ==\n{base}\n"
                                    f"== adapter {trial / 'adapter'} on tiny ==\n{adapter}\n")
    bad = run_chat(f"target={sweep_dir}", f"prompt={QUESTION}", f"compare=[{tmp_path}]",
                   cwd=tmp)
    assert bad.returncode == 2 and f"compare={tmp_path}" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr and "==" not in bad.stdout
    alone = run_chat(f"target={sweep_dir}", "compare=[none]", cwd=tmp)
    assert alone.returncode == 2 and "give prompt=" in alone.stderr, alone.stderr[-2000:]
