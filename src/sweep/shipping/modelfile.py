"""The Ollama ``Modelfile`` written beside an exported GGUF (seed 001 runs its model so)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["write_modelfile"]


def _default_system(tokenizer) -> Optional[str]:
    """The system message a ChatML template adds when a conversation has none."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                         add_generation_prompt=True)
    head = "<|im_start|>system\n"
    if isinstance(text, str) and text.startswith(head) and "<|im_end|>" in text:
        return text[len(head):text.index("<|im_end|>")]
    return None


def write_modelfile(folder: Path, tokenizer, gguf_name: str, data_template: str = "chat",
                    system: Optional[str] = None) -> Path:
    """``folder/Modelfile`` for ``ollama create``: the GGUF, and the prompt format in
    Ollama's own template language: ``data.template``'s when it is not ``chat``; for a
    ChatML template (what SmolLM2 and Qwen use) the same template, stop token and default
    system prompt; otherwise Ollama reads the GGUF's template."""
    from sweep.config.templates import ollama_template

    template = getattr(tokenizer, "chat_template", None) or ""
    lines = ["# Ollama: ollama create <name> -f Modelfile && ollama run <name>",
             f"FROM ./{gguf_name}"]
    own = ollama_template(data_template, tokenizer.eos_token or "")
    if own is not None:
        lines += [f'TEMPLATE """{own}"""', f'PARAMETER stop "{tokenizer.eos_token}"']
        if system:  # data.system_prompt, as the registered model asks with it
            lines.append(f'SYSTEM """{system}"""')
    elif "<|im_start|>" in template:  # ChatML, as the model was trained with
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system',
                  '{{ .System }}<|im_end|>', '{{ end }}{{- range .Messages }}<|im_start|>'
                  '{{ .Role }}', '{{ .Content }}<|im_end|>', '{{ end }}<|im_start|>assistant',
                  '"""', 'PARAMETER stop "<|im_end|>"']
        system = _default_system(tokenizer)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    else:
        lines.append("# the chat template is the GGUF's tokenizer.chat_template, which "
                     "Ollama reads")
    lines.append("PARAMETER temperature 0")
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path
