"""``sweep-chat``: answers from an adapter, or from its base model alone (``adapter=none``),
streamed with mlx-lm's ``stream_generate`` and the model's own chat template.

Every turn the whole conversation (the system message, then the earlier turns when
``chat.history``) goes through the chat template again. mlx-lm's ``chat`` keeps a KV cache
and templates only the new message instead; with SmolLM2's template that repeats the
default system prompt each turn and leaves the previous answer without its end token.
"""

from __future__ import annotations

import re
import sys
from contextlib import closing, contextmanager
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    TextIO, Tuple)

from omegaconf import DictConfig

from sweep.targets import TargetError

if TYPE_CHECKING:
    from sweep.config.commands import ChatConfig
    from sweep.targets import Target

__all__ = ["load_chat_model", "chat_session", "Conversation", "answer", "chat_loop", "chat",
           "compare", "COMMANDS"]

COMMANDS = "/reset, /quit"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id, as sweep.targets reads it


def _base_only(adapter: Optional[str]) -> bool:
    return adapter is not None and str(adapter).strip().lower() == "none"


def _resolve(spec: str, key: str, tracking_uri: Optional[str]) -> "Target":
    from pathlib import Path

    from sweep.targets import resolve_target

    # only a run id needs the tracking store (a folder's run is for logging, and chat logs
    # nothing): no MLflow import, and no empty database created in the current folder
    uri = tracking_uri if _RUN_ID.match(spec) and not Path(spec).exists() else None
    try:
        return resolve_target(spec, uri)
    except TargetError as error:
        if key == "target":
            raise
        raise TargetError(str(error).replace(f"target={spec}", f"{key}={spec}", 1)) from None


def _phrase(description: str) -> str:
    return description if description.startswith("adapter ") else \
        f"the adapter of {description}"


def load_chat_model(cfg: DictConfig, overrides: Sequence[str] = ()) -> Tuple[Any, Any, str]:
    """The model to chat with, its tokenizer, and what it is (for the header line).

    ``target=`` gives the trained config (model, seed) and the adapter; ``adapter=none``
    keeps the base model alone, ``adapter=<folder or run id>`` loads that adapter
    instead. The command's overrides go on top of the trained config, as in
    ``sweep-eval`` (:func:`~sweep.evaluation.heldout.trial_config`)."""
    from sweep.config import to_typed
    from sweep.config.templates import use
    from sweep.evaluation.heldout import trial_config
    from sweep.models.loader import load_base
    from sweep.training.lora import load_adapter

    spec, adapter = cfg.get("target"), cfg.get("adapter")
    if not spec and not adapter:
        raise TargetError("target= is required: a sweep's output folder, an MLflow run id or "
                          "an adapter folder (adapter=none model=<name> chats with a base model)")
    tracking = cfg.mlflow.tracking_uri if cfg.mlflow.enabled else None
    target = _resolve(str(spec), "target", tracking) if spec else None
    if _base_only(adapter):
        chosen = None
    elif adapter:
        chosen = _resolve(str(adapter), "adapter", tracking)
    else:
        chosen = target
    trained = target or chosen
    typed = to_typed(trial_config(trained.config if trained else None, cfg, overrides))
    loaded = load_base(typed.model, typed.cache_dir, typed.seed)
    use(loaded.tokenizer, typed.data.template, typed.model.name)
    if chosen is None:
        description = f"the base model {typed.model.name} (no adapter)"
    else:
        load_adapter(loaded.model, chosen.adapter_dir, typed.model.name)
        description = f"{_phrase(chosen.description)} on {typed.model.name}"
    loaded.model.eval()  # the LoRA layers just added would otherwise apply dropout
    return loaded.model, loaded.tokenizer, description


class Conversation:
    """A system message, the turns so far, and :meth:`ask` for the next answer."""

    def __init__(self, model: Any, tokenizer: Any, settings: "ChatConfig", seed: int = 0):
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p)
        self.messages: List[Dict[str, str]] = []
        self.last_prompt: List[int] = []  # the tokens of the latest question's prompt
        mx.random.seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the earlier turns (the system message stays)."""
        system = self.settings.system
        self.messages = [{"role": "system", "content": system}] if system else []

    def prompt(self, text: str) -> List[int]:
        """The tokens the model sees for ``text``: the conversation so far and the new
        question, through the chat template, up to the start of the answer."""
        messages = self.messages + [{"role": "user", "content": text}]
        tokens = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if isinstance(tokens, dict) or hasattr(tokens, "input_ids"):
            tokens = tokens["input_ids"]
        return list(tokens)

    def ask(self, text: str) -> Iterator[str]:
        """The answer to ``text``, piece by piece as it is decoded. It joins the history
        once it has ended; an answer stopped half-way (the iterator closed) does not."""
        from mlx_lm import stream_generate

        self.last_prompt = self.prompt(text)
        pieces = []
        for response in stream_generate(self.model, self.tokenizer, self.last_prompt,
                                        max_tokens=self.settings.max_tokens,
                                        sampler=self.sampler):
            pieces.append(response.text)
            yield response.text
        if self.settings.history:
            self.messages += [{"role": "user", "content": text},
                              {"role": "assistant", "content": "".join(pieces)}]


@contextmanager
def chat_session(cfg: DictConfig,
                 overrides: Sequence[str] = ()) -> Iterator[Tuple[Conversation, str]]:
    """A :class:`Conversation` with the model ``cfg`` names, and its description.
    Meanwhile the float LoRA layers are fused into their base layers for decoding
    (:func:`~sweep.evaluation.answers.fused_adapters`), and taken apart again after, so the
    process's cached base model stays the base."""
    from sweep.config import to_typed
    from sweep.evaluation.answers import fused_adapters

    settings = to_typed(cfg).chat
    model, tokenizer, description = load_chat_model(cfg, overrides)
    with fused_adapters(model):
        yield Conversation(model, tokenizer, settings, int(cfg.seed)), description


def answer(conversation: Conversation, text: str, out: TextIO) -> str:
    """Stream the answer to ``text`` into ``out``, end it with a newline, return it."""
    pieces = []
    try:
        with closing(conversation.ask(text)) as stream:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
    finally:
        out.write("\n")
        out.flush()
    return "".join(pieces)


def chat_loop(conversation: Conversation, read: Callable[[], str], out: TextIO,
              err: TextIO) -> None:
    """Answer each line ``read`` returns until ``/quit``, end of input (``EOFError``) or
    Ctrl-C at the prompt. ``/reset`` forgets the history; Ctrl-C during an answer stops
    that answer only."""
    while True:
        try:
            line = read()
        except (EOFError, KeyboardInterrupt):
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            conversation.reset()
            print("(history cleared)", file=err, flush=True)
            continue
        try:
            answer(conversation, text, out)
        except KeyboardInterrupt:
            print("(answer stopped; it is not part of the history)", file=err, flush=True)


def _terminal_reader(out: TextIO, err: TextIO) -> Callable[[], str]:
    try:
        import readline  # noqa: F401  (line editing and recall for input())
    except ImportError:
        pass
    prompt_to_stdout = out.isatty()  # else stdout is a file: keep it to answers

    def read() -> str:
        try:
            if prompt_to_stdout:
                return input("> ")
            err.write("> ")
            err.flush()
            return input()
        except (EOFError, KeyboardInterrupt):
            err.write("\n")  # leave the shell's prompt on a line of its own
            raise

    return read


def _line_reader(stream: TextIO) -> Callable[[], str]:
    lines = iter(stream)

    def read() -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return read


def chat(cfg: DictConfig, overrides: Sequence[str] = (), stdin: Optional[TextIO] = None,
         out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> None:
    """``sweep-chat``: one answer to ``prompt=``; else a session in the terminal, or one
    answer per line of piped input. Only answers go to ``out`` (stdout); the header
    line and notes go to ``err`` (stderr)."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    prompt = cfg.get("prompt")
    if cfg.get("compare"):
        if prompt is None:
            raise TargetError("compare= answers one question side by side: give prompt=...")
        compare(cfg, overrides, str(prompt), out, err)
        return
    with chat_session(cfg, overrides) as (conversation, description):
        if prompt is not None:
            print(f"chatting with {description}", file=err, flush=True)
            answer(conversation, str(prompt), out)
            return
        print(f"chatting with {description}; {COMMANDS}", file=err, flush=True)
        read = _terminal_reader(out, err) if stdin.isatty() else _line_reader(stdin)
        chat_loop(conversation, read, out, err)


def compare(cfg: DictConfig, overrides: Sequence[str], prompt: str, out: TextIO,
            err: TextIO) -> List[str]:
    """``prompt=`` answered by the target's adapter, then by each of ``compare=`` (seed
    004 switches adapters on one base so): one model at a time on the shared base, each
    answer under a ``== <model> ==`` line. Every adapter is resolved before any answer."""
    from omegaconf import OmegaConf

    tracking = cfg.mlflow.tracking_uri if cfg.mlflow.enabled else None
    specs = [cfg.get("adapter")] + [str(s) for s in cfg.compare]
    for spec in specs[1:]:
        if not _base_only(spec):
            _resolve(spec, "compare", tracking)
    answers = []
    for spec in specs:
        one = OmegaConf.merge(cfg, {"adapter": spec, "compare": None})
        with chat_session(one, overrides) as (conversation, description):
            print(f"== {description} ==", file=out, flush=True)
            answers.append(answer(conversation, prompt, out))
    print(f"compared {len(specs)} models on one question", file=err, flush=True)
    return answers
