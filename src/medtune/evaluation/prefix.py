"""Scoring at prefix speed: the tokens every prompt of a task starts with are run through the model once, and
their keys and values (the model's KV cache) are reused by every batch of question suffixes; and batches formed
by a token budget rather than by a question count.

    shared_prefix_length   the longest run of token ids every row starts with, leaving each row's scored
                           positions outside it (so a tokenizer that merges across the exemplars' end only
                           shortens the prefix: no row is ever read as different tokens than without the cache)
    encode_prefix          one forward pass over the prefix -> its per-layer (keys, values), or None where the
                           model's cache is not the plain growing kind (sliding-window layers drop old keys)
    collate_suffixes       a batch of suffixes after the prefix: left-padded so the scored position stays the
                           last column; the pads sit between prefix and suffix, masked out, and the position ids
                           of real tokens continue from the prefix's length, so each row reads exactly
                           prefix + its own suffix, at the positions it has in the whole prompt
    token_batches          rows grouped longest first under a budget of padded tokens (rows x longest row)

A fresh `DynamicCache` is made per batch from views of the prefix's tensors: the cache's `update` concatenates
into new tensors, so the prefix is never written to and every batch starts from the same keys and values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MIN_PREFIX_TOKENS = 16  # a shorter shared prefix saves less than the extra forward pass and cache copies cost
ROWS_PER_BATCH_FACTOR = 8  # short rows fill a token budget up to this many times --batch-size rows


@dataclass(frozen=True)
class Prefix:
    """The shared prefix of a task's rows: its length and each decoder layer's (keys, values), [1, heads, n, dim]."""

    length: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def cache(self, rows: int):
        """A new cache holding the prefix for `rows` rows (views: nothing is copied until the model appends)."""
        from transformers import DynamicCache

        return DynamicCache([(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                             for keys, values in self.layers])


def shared_prefix_length(sequences: list[list[int]], scored: list[int]) -> int:
    """The number of leading token ids all `sequences` share, at most len(row) - scored[row] for every row (its
    last `scored[row]` positions are where its options are read, so they must run with the suffix)."""
    limit = min(len(ids) - keep for ids, keep in zip(sequences, scored))
    return max(0, min(limit, len(os.path.commonprefix(sequences))))  # commonprefix compares lists item by item


@torch.no_grad()
def encode_prefix(model, prefix_ids: list[int]) -> Prefix | None:
    """Run `prefix_ids` once and keep every layer's keys and values; None where the returned cache has a layer
    that is not a plain `DynamicLayer` (a sliding window, a quantized or offloaded cache): those keep or move
    keys in ways this module does not reproduce, so their rows are scored without the cache."""
    from transformers.cache_utils import DynamicLayer

    device = next(model.parameters()).device
    ids = torch.tensor([prefix_ids], device=device)
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or layer.keys is None for layer in layers):
        return None
    return Prefix(len(prefix_ids), tuple((layer.keys, layer.values) for layer in layers))


def prefix_for(model, sequences: list[list[int]], scored: list[int]) -> Prefix | None:
    """The cached prefix of a task's rows, or None when it is shorter than MIN_PREFIX_TOKENS or the model's cache
    cannot be reused (`encode_prefix`)."""
    if len(sequences) < 2:
        return None
    length = shared_prefix_length(sequences, scored)
    if length < MIN_PREFIX_TOKENS:
        return None
    return encode_prefix(model, sequences[0][:length])


def collate_suffixes(prefix: Prefix, suffixes: list[list[int]], pad_id: int, device) -> dict:
    """Model inputs for `suffixes` after the cached `prefix`: input_ids, attention_mask (prefix + suffix),
    position_ids (from prefix.length on, real tokens only) and the cache itself."""
    from medtune.tokenization import collate_prompts

    batch = {k: v.to(device) for k, v in collate_prompts(suffixes, pad_id).items()}
    rows = len(suffixes)
    prefix_mask = torch.ones((rows, prefix.length), dtype=batch["attention_mask"].dtype, device=device)
    batch["attention_mask"] = torch.cat([prefix_mask, batch["attention_mask"]], dim=1)
    batch["position_ids"] = batch["position_ids"] + prefix.length
    batch["cache"] = prefix.cache(rows)
    return batch


def token_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Row indices grouped into batches, longest first, each within a budget of padded tokens (rows x the
    longest row in the batch, which is its first).

    The budget is `batch_tokens`, or by default `batch_size` x the longest row: the first batch is then the one
    the count-batched path would make (no more memory than before). Shorter rows fill the budget, up to
    ROWS_PER_BATCH_FACTOR x `batch_size` rows either way (so per-row tensors, e.g. multi-token options' logits,
    stay bounded). A row longer than the budget is a batch of its own."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is not positive; give --batch-size 1 or more")
    if batch_tokens is not None and batch_tokens < 1:
        raise ValueError(f"--batch-tokens {batch_tokens} is not positive; give a budget of 1 or more tokens")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not order:
        return []
    budget = batch_tokens or batch_size * lengths[order[0]]
    most_rows = ROWS_PER_BATCH_FACTOR * batch_size
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < most_rows and (len(current) + 1) * lengths[current[0]] <= budget:
            current.append(index)
        else:
            batches.append([index])
    return batches
