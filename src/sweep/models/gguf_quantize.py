"""A float32 GGUF file rewritten in another GGUF type (``f16``, ``bf16``, ``q8_0``, ``q4_0``,
``q4_1``, ``q5_0``, ``q5_1``) with llama.cpp's own Python package (``gguf``: its
``GGUFReader``, ``GGUFWriter`` and numpy quantizers), metadata copied as its
``gguf_new_metadata.py`` script copies it.

Which tensor gets which type follows llama.cpp's converter and ``llama-quantize``:

- one-dimensional tensors (the norms) stay float32;
- a row length that is not a multiple of the type's block (32) is written float16;
- for the 4- and 5-bit types, the output projection (``output.weight``, or
  ``token_embd.weight`` when the embeddings are tied, as in SmolLM2) is written ``q8_0``:
  ``llama-quantize`` gives it ``q6_k``, a K-quant that ``gguf`` can read but not write.

The K-quants (``q4_k_m``, ``q5_k_m``, ``q6_k``) need llama.cpp's ``llama-quantize``, which no
package from the registries here ships without compiling llama.cpp: ``k_quant_hint``
says how (``sweep.config.commands``), from the ``f16`` file this module writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

from sweep.config.commands import GGUF_TYPES

__all__ = ["convert", "tensor_type", "tensor_types"]

_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16",
               "q8_0": "MOSTLY_Q8_0", "q5_1": "MOSTLY_Q5_1", "q5_0": "MOSTLY_Q5_0",
               "q4_1": "MOSTLY_Q4_1", "q4_0": "MOSTLY_Q4_0"}
_OUTPUT = ("output.weight",)
_TIED_OUTPUT = "token_embd.weight"


def tensor_type(name: str, shape: tuple, gguf_type: str, has_output: bool):
    """The GGML type that tensor ``name`` (numpy ``shape``) is written in for ``gguf_type``."""
    from gguf import GGMLQuantizationType as T
    from gguf.constants import GGML_QUANT_SIZES

    wanted = T[gguf_type.upper()]
    if len(shape) < 2:
        return T.F32
    if GGUF_TYPES[gguf_type] < 8 and (name in _OUTPUT or (name == _TIED_OUTPUT and not has_output)):
        wanted = T.Q8_0
    block = GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        return T.F16
    return wanted


def convert(source: Path, out: Path, gguf_type: str) -> Path:
    """Write ``source`` (a float32 GGUF file) as ``out`` in ``gguf_type``; atomically."""
    import gguf
    import numpy as np
    from gguf.quants import quantize

    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # a line per file
    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[gguf_type]])
    names = {t.name for t in reader.tensors}
    for tensor in reader.tensors:
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{source}: {tensor.name} is {tensor.tensor_type.name}, "
                             "not F32 (convert from a float32 file)")
        data = np.asarray(tensor.data, dtype=np.float32)
        kind = tensor_type(tensor.name, data.shape, gguf_type, "output.weight" in names)
        writer.add_tensor(tensor.name, quantize(data, kind), raw_dtype=kind)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def tensor_types(path: Path) -> List[str]:
    """The GGML type names of a GGUF file's tensors, most common first (for the record)."""
    import collections

    import gguf

    counts = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
    return [name for name, _ in counts.most_common()]
