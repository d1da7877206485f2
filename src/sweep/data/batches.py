"""Tokenize examples with the model's chat template and cut them into padded batches.

Tokenization reuses mlx-lm's ``ChatDataset``/``TextDataset``, except that with prompt
masking the answer is tokenized after the prompt, as generation will see it: mlx-lm
tokenizes the whole conversation and cuts it at the prompt's length, which is off by a
token when the answer starts with two blanks (BPE merges them with the prompt's last "\n").
The batch iterator is this project's own: mlx-lm's reseeds NumPy's *global* RNG and
prints a warning per truncated batch; this one takes a private ``Generator`` so that the
validation batches are the same at every evaluation and the train order follows ``seed``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset, TextDataset

from sweep.data.records import DataError, Example

__all__ = ["tokenize", "iterate_batches", "count_batches", "eval_batches", "Truncation",
           "truncation", "Subset", "unencodable"]

log = logging.getLogger(__name__)

PAD_MULTIPLE = 32


class _ChatDataset(ChatDataset):
    def process(self, d):
        messages = d[self.chat_key]
        if not self.mask_prompt or messages[-1].get("role") != "assistant":
            return super().process(d)
        render = self.tokenizer.apply_chat_template
        prompt = render(messages[:-1], add_generation_prompt=True, tokenize=False)
        whole = render(messages, tokenize=False)
        if not whole.startswith(prompt):  # a template that renders earlier turns differently
            return super().process(d)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return ids + self.tokenizer.encode(whole[len(prompt):], add_special_tokens=False), len(ids)


def _strings(example: Example) -> Iterator[str]:
    if "text" in example:
        yield example["text"]
    for message in example.get("messages", ()):
        yield message["content"]


def unencodable(examples: List[Example], tokenizer: Any) -> Dict[str, int]:
    """Characters the tokenizer drops or garbles, and in how many examples each is.
    SmolLM2's byte-level vocabulary lacks 6 control characters and the lead bytes of
    U+40000-U+BFFFF: without a check they vanish from the tokens and nothing says so."""
    seen: Counter = Counter()
    for example in examples:
        seen.update(set("".join(_strings(example))))
    bad = {c for c in seen if tokenizer.decode(tokenizer.encode(c, add_special_tokens=False)) != c}
    return {c: seen[c] for c in sorted(bad)}


def tokenize(examples: List[Example], tokenizer: Any, mask_prompt: bool) -> CacheDataset:
    """A lazily tokenized dataset of ``(tokens, prompt_length)`` pairs."""
    bad = unencodable(examples, tokenizer)
    if bad:
        shown = ", ".join(f"U+{ord(c):04X} in {n} example(s)" for c, n in list(bad.items())[:8])
        log.warning("%d character(s) that the tokenizer cannot encode are left out of the "
                    "tokens: %s%s", len(bad), shown, ", ..." if len(bad) > 8 else "")
    if examples and "text" in examples[0]:
        return CacheDataset(TextDataset(examples, tokenizer))
    return CacheDataset(_ChatDataset(examples, tokenizer, mask_prompt=mask_prompt))


def count_batches(dataset: CacheDataset, batch_size: int) -> int:
    return len(dataset) // batch_size


def iterate_batches(
    dataset: CacheDataset,
    batch_size: int,
    max_seq_length: int,
    *,
    rng: Optional[np.random.Generator] = None,
    loop: bool = False,
    name: str = "train",
    skip: int = 0,
) -> Iterator[Tuple[mx.array, mx.array, int]]:
    """Yield ``(tokens [B, L], positions [N], n_tokens)``: the counted positions are
    :func:`answer_positions` (from each row's prompt offset and length).

    Examples are sorted by length and grouped so a batch pads little; the order of the
    batches is shuffled by ``rng`` every pass (kept as is when ``rng`` is None). ``skip``
    leaves out the first batches of that order without building them (a resumed run).
    """
    if len(dataset) < batch_size:
        raise DataError(
            f"the {name} split has {len(dataset)} example(s), fewer than "
            f"train.batch_size={batch_size}"
        )
    order = _by_length(dataset)
    groups = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    while True:
        sequence = rng.permutation(len(groups)) if rng is not None else range(len(groups))
        for g in sequence:
            if skip > 0:
                skip -= 1
                continue
            tokens, bounds, _, n_tokens = _pack(dataset, groups[g], batch_size, max_seq_length)
            yield mx.array(tokens), mx.array(answer_positions(bounds, tokens.shape[1])), n_tokens
        if not loop:
            return


def _by_length(dataset: CacheDataset) -> List[int]:
    """Example indexes sorted by token count (tokenizing once; CacheDataset keeps it).
    mlx-lm's own ``itemlen`` measures the raw record (a dict), which sorts nothing."""
    lengths = [len(dataset[i][0]) for i in range(len(dataset))]
    return sorted(range(len(dataset)), key=lengths.__getitem__)


def _pack(dataset: CacheDataset, group: Sequence[int], batch_size: int, max_seq_length: int):
    """One padded batch: tokens [B, L], (offset, length) bounds [B, 2], the example
    indexes [B] (-1 for empty rows) and the number of real tokens."""
    items = [dataset[j] for j in group]
    lengths = [min(len(tokens), max_seq_length) for tokens, _ in items]
    width = min(PAD_MULTIPLE * -(-max(lengths) // PAD_MULTIPLE) + 1, max_seq_length)
    tokens = np.zeros((batch_size, width), np.int32)
    bounds = np.zeros((batch_size, 2), np.int32)
    indexes = np.full(batch_size, -1, np.int64)
    for row, ((ids, offset), length) in enumerate(zip(items, lengths)):
        tokens[row, :length] = ids[:length]
        bounds[row] = (min(offset, length), length)
        indexes[row] = group[row]
    return tokens, bounds, indexes, int(sum(lengths))


def answer_positions(bounds: np.ndarray, width: int) -> np.ndarray:
    """The positions a batch's loss counts, as flat indexes into its next-token targets
    ``[B, width - 1]``: row ``r``'s targets ``offset - 1 .. length - 2`` (the tokens
    ``offset .. length - 1``, the answer when the prompt is masked). Padded with -1 to a
    multiple of ``PAD_MULTIPLE``, so that few distinct shapes are compiled."""
    targets = width - 1
    flat = [r * targets + np.arange(max(int(o) - 1, 0), int(n) - 1)
            for r, (o, n) in enumerate(bounds)]
    counted = np.concatenate(flat) if flat else np.zeros(0, np.int64)
    size = max(PAD_MULTIPLE * -(-len(counted) // PAD_MULTIPLE), PAD_MULTIPLE)
    out = np.full(size, -1, np.int32)
    out[:len(counted)] = counted
    return out


def eval_batches(
    dataset: CacheDataset,
    batch_size: int,
    max_seq_length: int,
    max_batches: int = -1,
) -> Iterator[Tuple[mx.array, mx.array, np.ndarray]]:
    """Yield ``(tokens [B, L], positions [N], indexes [B])`` covering *every* example
    once, in a fixed order: sorted by length, full batches shuffled by a fixed seed, then
    the partial one (padded with empty rows, index -1). ``max_batches`` > 0 keeps the first ones:
    the same subset at every evaluation."""
    order = _by_length(dataset)
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    full = len(order) // batch_size  # the partial batch (if any) comes last
    sequence = list(np.random.default_rng(0).permutation(full)) + list(range(full, len(groups)))
    if max_batches > 0:
        sequence = sequence[:max_batches]
    for g in sequence:
        tokens, bounds, indexes, _ = _pack(dataset, groups[g], batch_size, max_seq_length)
        yield mx.array(tokens), mx.array(answer_positions(bounds, tokens.shape[1])), indexes


@dataclass(frozen=True)
class Truncation:
    """What ``train.max_seq_length`` cuts from a split (answer = trained-on tokens)."""

    examples: int
    cut_examples: int  # longer than max_seq_length
    answer_tokens: int  # before cutting
    answer_tokens_lost: int
    empty_examples: int  # no answer token left after cutting
    long_indexes: Tuple[int, ...]

    @property
    def answer_tokens_kept(self) -> int:
        return self.answer_tokens - self.answer_tokens_lost


def truncation(dataset: CacheDataset, max_seq_length: int) -> Truncation:
    """Count what cutting at ``max_seq_length`` loses. The loss is taken on positions
    ``offset <= p < length`` (next-token targets), so an example's answer has
    ``length - offset`` target tokens."""
    cut = answer = lost = empty = 0
    long = []
    for i in range(len(dataset)):
        ids, offset = dataset[i]
        offset = max(offset, 1)  # targets start at position 1 (the first token has none)
        full = max(len(ids) - min(offset, len(ids)), 0)
        length = min(len(ids), max_seq_length)
        kept = max(length - min(offset, length), 0)
        answer, lost = answer + full, lost + full - kept
        if len(ids) > max_seq_length:
            cut += 1
            long.append(i)
        if kept == 0:
            empty += 1
    return Truncation(len(dataset), cut, answer, lost, empty, tuple(long))


class Subset:
    """Some examples of a tokenized dataset, with the same interface."""

    def __init__(self, dataset: Any, indexes: Sequence[int]):
        self.dataset, self.indexes = dataset, list(indexes)

    def __getitem__(self, i: int):
        return self.dataset[self.indexes[i]]

    def __len__(self) -> int:
        return len(self.indexes)
