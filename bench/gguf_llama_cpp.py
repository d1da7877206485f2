"""Does llama.cpp answer like the fused model? Runs an exported GGUF with llama.cpp
(through llama-cpp-python) on the questions `sweep-export` checked, greedy, with the chat
template stored in the GGUF, and compares with the fused mlx-lm model's answers recorded
in `sweep_export.json`. Not part of `make test`: llama-cpp-python compiles llama.cpp on
install (about 15 minutes on the 2-core development machine)::

    python3 -m venv /tmp/llenv && /tmp/llenv/bin/pip install llama-cpp-python
    /tmp/llenv/bin/python bench/gguf_llama_cpp.py exports/legal-smollm2 [model-q8_0.gguf]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    from llama_cpp import Llama, __version__

    out = Path(folder)
    record = json.loads((out / "sweep_export.json").read_text())
    check = record["check"]
    gguf = out / (sys.argv[2] if len(sys.argv) > 2 else record["ggufs"][0])
    llm = Llama(model_path=str(gguf), n_ctx=1024, verbose=False, seed=0)
    same = 0
    for question, want in zip(check["prompts"], check["answers"]["float"]):
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}],
                                           temperature=0.0, top_k=1, max_tokens=48)
        text = reply["choices"][0]["message"]["content"].strip()
        same += text == want
        print(f"{'same' if text == want else 'DIFFERENT'}: {question!r} -> {text[:100]!r}")
    print(f"llama.cpp (llama-cpp-python {__version__}): {same}/{len(check['prompts'])} "
          f"greedy answers identical to the fused mlx-lm model's ({gguf.name})")
    return 0 if same == len(check["prompts"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
