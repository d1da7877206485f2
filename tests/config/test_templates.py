"""``data.template``: named and user prompt formats compiled to one Jinja chat template
(what training, evaluation, chat, the registered model and the export all render), the
Modelfile's Go template, and templates that cannot work as one line naming the key."""

from __future__ import annotations

import pytest

from sweep.config.templates import ollama_template, parse, template_text, use
from sweep.errors import InputError

SEED_003 = ("You are an expert on the Constitution of India. Answer the question.\n"
            "### Question: {}\n### Answer: {}")
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What does Article 21 protect?"},
            {"role": "assistant", "content": "Life and personal liberty."}]


def render(template: str, messages, **context) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as HF does
    return env.from_string(template_text(template)).render(messages=messages, eos_token="</s>",
                                                           **context)


def test_seed_003_prompt_renders_as_written() -> None:
    want = SEED_003.format("What does Article 21 protect?", "Life and personal liberty.")
    assert render(SEED_003, MESSAGES[1:]) == want + "</s>"
    prompt = render(SEED_003, MESSAGES[1:2], add_generation_prompt=True)
    assert prompt == SEED_003.format("What does Article 21 protect?", "")
    assert render(SEED_003, MESSAGES).startswith("Be brief.\n\nYou are an expert")


@pytest.mark.parametrize("template,text", [
    ("plain", "What does Article 21 protect?\nLife and personal liberty.</s>"),
    ("Q: {question} [{system}]\nA: {answer} ##", "Q: What does Article 21 protect? "
     "[Be brief.]\nA: Life and personal liberty. ##</s>"),
    ("{{literal}} {question}\n{answer}", "{literal} What does Article 21 protect?\n"
     "Life and personal liberty.</s>"),
])
def test_named_and_own_templates(template: str, text: str) -> None:
    messages = MESSAGES if "{system}" in template else MESSAGES[1:]
    assert render(template, messages) == text


def test_alpaca_keeps_instruction_and_input_apart() -> None:
    with_input = [{"role": "user", "content": "Summarise\n\nThe text.",
                   "instruction": "Summarise", "input": "The text."},
                  {"role": "assistant", "content": "Short."}]
    text = render("alpaca", with_input)
    assert "paired with an input" in text
    assert "### Instruction:\nSummarise\n\n### Input:\nThe text.\n\n### Response:\nShort.</s>" \
        in text
    alone = render("alpaca", MESSAGES[1:])  # a chat turn: the whole question, no input
    assert "### Instruction:\nWhat does Article 21 protect?\n\n### Response:\n" in alone
    assert "### Input" not in alone


@pytest.mark.parametrize("template,message", [
    ("{question}", "has no {answer} field"),
    ("{answer} then {question}", "{answer} must be the last field, once"),
    ("{q} {answer}", "unknown field {q}"),
    ("{} {} {}", "3 positional fields {}"),
    ("{input} {answer}", "has no {question} (or {instruction}) field"),
    ("{question!r} {answer}", "format specs and conversions are not supported"),
    ("{question {answer}", "write a literal brace as {{ or }}"),
])
def test_templates_that_cannot_work_name_the_key(template: str, message: str) -> None:
    with pytest.raises(InputError, match="data.template=") as error:
        parse(template)
    assert message in str(error.value)


def test_ollama_template_and_the_chat_default() -> None:
    go = ollama_template(SEED_003)
    assert "### Question: {{ .Content }}\n### Answer: {{ else if eq .Role \"assistant\" }}" in go
    assert ollama_template("chat") is None and template_text("chat") is None
    assert '{{ "{{" }}x' in ollama_template("{{{{x {question} {answer}")


class Tokenizer:
    chat_template = None
    has_chat_template = False
    add_bos_token = False


def test_use_sets_and_restores_and_a_model_without_template_is_one_line() -> None:
    tok = Tokenizer()
    use(tok, "plain")
    assert "message['content']" in tok.chat_template and tok.has_chat_template
    with pytest.raises(InputError, match="data.template=chat: tiny-base has no chat template"):
        use(tok, "chat", "tiny-base")  # the original (none) is restored, not the plain one
    llama = Tokenizer()
    llama.chat_template, llama.add_bos_token, llama.bos_token = "orig", True, "<s>"
    use(llama, SEED_003)
    assert llama.chat_template.startswith("{{ bos_token }}")
    use(llama, "chat")
    assert llama.chat_template == "orig"


def test_a_bad_template_in_the_config_is_one_line() -> None:
    from sweep.config import compose, to_typed
    from sweep.config.checks import ConfigError

    with pytest.raises((ConfigError, InputError), match="data.template='{question}'"):
        to_typed(compose(["model=tiny", "data.template='{question}'"]))


def test_ollama_answers_end_with_eos_and_triple_quotes_are_refused() -> None:
    go = ollama_template("plain", "</s>")
    assert '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}' in go
    with pytest.raises(InputError, match="a Modelfile TEMPLATE cannot hold"):
        ollama_template('"""{question}"""\n{answer}')


def test_plain_text_data_has_no_prompt_format() -> None:
    from sweep.config import compose, to_typed
    from sweep.config.checks import ConfigError

    with pytest.raises(ConfigError, match="data.template='plain': plain text"):
        to_typed(compose(["model=tiny", "data.format=text", "data.mask_prompt=false",
                          "data.template=plain"]))
