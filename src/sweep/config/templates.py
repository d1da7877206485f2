"""``data.template``: how a record becomes the text the model sees.

- ``chat`` (the default): the model's own chat template;
- ``alpaca``: Stanford Alpaca's instruction / input / response layout (seed 004);
- ``plain``: the question, a newline, the answer;
- or the user's own string with ``{question}`` (or ``{instruction}`` and ``{input}``),
  optionally ``{system}``, and ``{answer}`` last; two positional fields ``{}`` are the
  question and the answer, so seed 003's prompt is written as it is.

A format other than ``chat`` is compiled into an equivalent Jinja chat template and set as
the tokenizer's ``chat_template`` (:func:`use`). Every consumer already formats through
``tokenizer.apply_chat_template``: training and its prompt masking, evaluation, validation
answers, ``sweep-chat``, the registered model, and the export, whose tokenizer files, GGUF
``tokenizer.chat_template`` and Modelfile ``TEMPLATE`` carry it, so the tokens are the same
in every command by construction. The end-of-sequence token follows each answer so that
the model learns to stop.
"""

from __future__ import annotations

import json
import string
import weakref
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from sweep.errors import InputError

__all__ = ["NAMED", "PromptFormat", "parse", "use", "ollama_template"]

_ALPACA_HEAD = ("Below is an instruction that describes a task{with_input}. Write a response "
                "that appropriately completes the request.\n\n")
_ALPACA_INPUT = (_ALPACA_HEAD.format(with_input=", paired with an input that provides further "
                                     "context") +
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                 "### Response:\n{answer}")
NAMED = {
    # a record with an input gets _ALPACA_INPUT instead (template_text); chat turns have none
    "alpaca": _ALPACA_HEAD.format(with_input="") + "### Instruction:\n{instruction}\n\n"
                                                   "### Response:\n{answer}",
    "plain": "{question}\n{answer}",
}
_PROMPT_FIELDS = ("question", "instruction", "input", "system")
_originals: "weakref.WeakKeyDictionary[Any, Optional[str]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PromptFormat:
    """A parsed template: literal text and fields before the answer, and after it."""

    source: str
    prompt: Tuple[Tuple[str, Optional[str]], ...]  # (literal, field or None), in order
    suffix: str  # literal text after {answer}

    @property
    def fields(self) -> List[str]:
        return [f for _, f in self.prompt if f]


def parse(template: str) -> PromptFormat:
    """A user template; raises InputError naming ``data.template`` when it cannot work."""
    key = f"data.template={template!r}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise InputError(f"{key}: {error} (write a literal brace as {{{{ or }}}})") from None
    names = [p[1] for p in parts if p[1] is not None]
    if names and all(n == "" for n in names):  # positional: {} question, {} answer
        if len(names) != 2:
            raise InputError(f"{key}: {len(names)} positional fields {{}}; two are the "
                             "question and the answer")
        names = ["question", "answer"]
    if "answer" not in names:
        raise InputError(f"{key}: has no {{answer}} field (where the answer goes, last)")
    unknown = [n for n in names if n not in (*_PROMPT_FIELDS, "answer")]
    if unknown:
        raise InputError(f"{key}: unknown field {{{unknown[0]}}} (fields: {{question}}, "
                         "{instruction}, {input}, {system}, {answer})")
    if names[-1] != "answer" or names.count("answer") != 1:
        raise InputError(f"{key}: {{answer}} must be the last field, once")
    if not any(n in ("question", "instruction") for n in names):
        raise InputError(f"{key}: has no {{question}} (or {{instruction}}) field")
    fields = iter(names)
    segments: List[Tuple[str, Optional[str]]] = []
    for literal, field, spec, conversion in parts:
        if spec or conversion:
            raise InputError(f"{key}: format specs and conversions are not supported")
        if segments and segments[-1][1] is None:  # "{{" comes as literals of its own
            literal = segments.pop()[0] + literal
        segments.append((literal, None if field is None else next(fields)))
    at = next(i for i, (_, f) in enumerate(segments) if f == "answer")
    prompt = tuple(segments[:at]) + ((segments[at][0], None),)
    return PromptFormat(template, prompt, "".join(lit for lit, _ in segments[at + 1:]))


def _lit(text: str) -> str:
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _field(name: str) -> str:
    if name == "system":
        return "{{ system }}"
    if name == "input":
        return "{{ message['input'] if 'input' in message else '' }}"
    if name == "instruction":
        return ("{{ message['instruction'] if 'instruction' in message "
                "else message['content'] }}")
    return "{{ message['content'] }}"


def jinja(fmt: PromptFormat) -> str:
    """The Jinja chat template that renders ``fmt``: each user turn as the prompt, each
    assistant turn as the answer, the suffix and the end-of-sequence token."""
    prompt = "".join(_lit(lit) + (_field(f) if f else "") for lit, f in fmt.prompt)
    system_first = "" if "system" in fmt.fields else \
        "{% if system %}{{ system }}{{ '\\n\\n' }}{% endif %}"
    return ("{%- set system = messages[0]['content'] if messages and messages[0]['role'] == "
            "'system' else '' -%}" + system_first +
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}" + prompt +
            "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}"
            + _lit(fmt.suffix) + "{{ eos_token }}{%- endif -%}{%- endfor -%}")


def _jinja_alpaca() -> str:
    a, b = jinja(parse(_ALPACA_INPUT)), jinja(parse(NAMED["alpaca"]))
    return ("{%- if messages | selectattr('input', 'defined') | selectattr('input') | list -%}"
            + a + "{%- else -%}" + b + "{%- endif -%}")


def template_text(template: str) -> Optional[str]:
    """The Jinja chat template of ``data.template`` (None for ``chat``)."""
    if template == "chat":
        return None
    if template == "alpaca":
        return _jinja_alpaca()
    return jinja(parse(NAMED.get(template, template)))


def use(tokenizer: Any, template: str, model_name: str = "the model") -> Any:
    """Set ``tokenizer``'s chat template to ``data.template``'s (the original for ``chat``).
    A tokenizer is shared by the loads of one base model, hence the restore."""
    if tokenizer not in _originals:
        _originals[tokenizer] = getattr(tokenizer, "chat_template", None)
    text = template_text(template)
    if text is None:
        text = _originals[tokenizer]
        if not text:
            raise InputError(f"data.template=chat: {model_name} has no chat template; use "
                             "data.template=plain, alpaca or your own '...{question}..."
                             "{answer}'")
    elif getattr(tokenizer, "add_bos_token", False) and getattr(tokenizer, "bos_token", None):
        text = "{{ bos_token }}" + text  # as Llama's own templates start
    tokenizer.chat_template = text
    tokenizer.has_chat_template = True
    return tokenizer


def ollama_template(template: str, eos: str = "") -> Optional[str]:
    """The Modelfile ``TEMPLATE`` (Go template) of ``data.template``, each earlier answer
    ended with ``eos`` as in training; None for ``chat``."""
    if template == "chat":
        return None
    if '"""' in template:
        raise InputError(f"data.template={template!r}: a Modelfile TEMPLATE cannot hold "
                         '\"\"\" (three double quotes)')
    fmt = parse(NAMED.get(template, template))

    def go(text: str) -> str:
        return text.replace("{{", '{{ "{{" }}')

    prompt = "".join(go(lit) + ("{{ .Content }}" if f in ("question", "instruction") else
                                "{{ $.System }}" if f == "system" else "")
                     for lit, f in fmt.prompt)
    head = "" if "system" in fmt.fields else "{{- if .System }}{{ .System }}\n\n{{ end }}"
    return (head + "{{ range .Messages }}{{ if eq .Role \"user\" }}" + prompt +
            "{{ else if eq .Role \"assistant\" }}{{ .Content }}" + go(fmt.suffix) + go(eos) +
            "{{ end }}{{ end }}")
