"""Token ids for training and scoring, and the batches they travel in.

Prompt and target are tokenized separately and concatenated, exactly as scoring concatenates the prompt
with one letter token: the token the model is trained to put at the answer position is the token that
evaluation reads there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from medtune.data import LETTERS, MCQExample
from medtune.prompts import PromptTemplate

IGNORE = -100  # label value that cross-entropy skips: prompt tokens and padding


class PromptError(ValueError):
    """The prompt cannot be scored with this tokenizer, or an example does not fit the length limit.

    `reason` is the short key a skipped row is counted under: "too_long", "letter_token" or "prompt"."""

    def __init__(self, message: str, reason: str = "prompt"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE over the prompt; the first supervised label is the answer letter
    context_cut: int = 0  # tokens cut from the end of the example's context so that prompt + target fit


def encode_prompt(tokenizer, template: PromptTemplate, example: MCQExample) -> list[int]:
    return tokenizer.encode(template.prompt(example), add_special_tokens=template.add_special_tokens)


def letter_token_ids(tokenizer, template: PromptTemplate, n_options: int = len(LETTERS),
                     sample: MCQExample | None = None) -> list[int]:
    """The single token id of each answer letter (" A", " B", ...) as it follows the prompt.

    Raises `PromptError` when a letter is more than one token, or when, in the context of `sample`'s
    prompt, tokenizing prompt + letter does not give prompt ids + that one token.
    """
    ids = []
    for letter in LETTERS[:n_options]:
        pieces = tokenizer.encode(template.letter_text(letter), add_special_tokens=False)
        if len(pieces) != 1:
            raise PromptError(
                f"the answer letter {template.letter_text(letter)!r} is {len(pieces)} tokens with this tokenizer; "
                "scoring needs exactly one token per letter (try another --prompt-format)", "letter_token",
            )
        ids.append(pieces[0])
    if sample is not None:
        _check_letters_in_context(tokenizer, template, sample, ids)
    return ids


def _check_letters_in_context(tokenizer, template: PromptTemplate, sample: MCQExample, ids: list[int]) -> None:
    prompt = template.prompt(sample)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=template.add_special_tokens)
    for letter, letter_id in zip(LETTERS, ids):
        joined = tokenizer.encode(prompt + template.letter_text(letter), add_special_tokens=template.add_special_tokens)
        if joined != prompt_ids + [letter_id]:
            raise PromptError(
                f"after the prompt, {template.letter_text(letter)!r} does not tokenize as one separate token "
                f"(prompt ends {prompt[-20:]!r}); the scored position would not match natural text", "letter_token",
            )


def encode_example(
    tokenizer, template: PromptTemplate, example: MCQExample, letter_ids: list[int], max_len: int
) -> Encoded:
    """input_ids = prompt + target + EOS; labels = IGNORE over the prompt.

    When prompt + target exceed `max_len` and the example has a context (PubMedQA's abstract), the context
    gives way first (`fit_context`), so the answer and its explanation are kept whole. Only then is a target
    longer than the room left cut at its end (the explanation's tail), never at the letter.
    """
    prompt_ids = encode_prompt(tokenizer, template, example)
    target_ids = tokenizer.encode(template.target(example), add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    if target_ids[0] != letter_ids[example.answer]:
        raise PromptError(f"example {example.id!r}: the target does not start with the answer letter token",
                          "letter_token")
    cut = 0
    if example.context and len(prompt_ids) + len(target_ids) > max_len:
        prompt_ids, cut = fit_context(tokenizer, template, example, max_len - len(target_ids))
    room = max_len - len(prompt_ids)
    if room < 2:  # the letter and at least one more token (")")
        raise PromptError(
            f"example {example.id!r}: the prompt is {len(prompt_ids)} tokens, too long for max_seq_len={max_len}",
            "too_long",
        )
    target_ids = target_ids[:room]
    return Encoded(prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + target_ids, cut)


def fit_context(tokenizer, template: PromptTemplate, example: MCQExample, budget: int) -> tuple[list[int], int]:
    """The prompt ids of `example` with its context cut from the end until the prompt is at most `budget`
    tokens (or the context is gone), and how many context tokens were cut.

    Tokens rather than whole passages: a passage of an abstract runs to a hundred tokens or more, so dropping
    whole ones would throw away far more than the overflow. From the end, as tokenizers truncate by default:
    what remains is the abstract's opening, read in order. The tail it loses may hold results, so the run
    counts the rows cut (report.json) and a larger max_seq_len is the remedy. The context is re-tokenized
    inside the prompt after each cut, because tokens can merge across the cut; each pass cuts at least one
    more token, so the loop ends.
    """
    context_ids = tokenizer.encode(example.context, add_special_tokens=False)
    keep, prompt_ids = len(context_ids), encode_prompt(tokenizer, template, example)
    while len(prompt_ids) > budget and keep > 0:
        keep = max(0, keep - (len(prompt_ids) - budget))
        # a cut inside a multi-byte character decodes to U+FFFD: drop it rather than train on it
        shorter = tokenizer.decode(context_ids[:keep]).rstrip("\ufffd").rstrip()
        prompt_ids = encode_prompt(tokenizer, template, replace(example, context=shorter or None))
    return prompt_ids, len(context_ids) - keep


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item: input_ids, attention_mask, labels, each [batch, seq]."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        labels[row, :length] = torch.tensor(item.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts so every row's last prompt token sits in the last column (the scored position).

    Returns input_ids, attention_mask and position_ids [batch, seq]; position ids count real tokens only,
    so a padded row sees the same positions as it would alone.
    """
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def pad_token_id(tokenizer) -> int:
    """The id used for padding (never attended to, never a label): pad, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0
