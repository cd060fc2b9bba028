"""Batches by a budget of padded tokens, longest first across a task: the grouping, and scores equal to the
count-batched path's (fp32 on the CPU, within TOLERANCE)."""

from __future__ import annotations

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import choice_logprobs, letter_logits
from medtune.evaluation.prefix import ROWS_PER_BATCH_FACTOR, token_batches
from medtune.modeling import load_base
from medtune.prompts import PromptTemplate
from medtune.tokenization import collate_prompts, encode_prompt, letter_token_ids, pad_token_id

TOLERANCE = 1e-4  # fp32; padding and batch composition change sums only in their last bits


def test_batches_are_longest_first_and_within_the_token_budget():
    lengths = [10, 50, 20, 50, 5, 30, 5, 5]
    batches = token_batches(lengths, batch_size=2, batch_tokens=60)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))  # every row once
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first
    assert all(lengths[batch[0]] == max(lengths[i] for i in batch) for batch in batches)
    assert all(len(batch) * lengths[batch[0]] <= 60 for batch in batches if len(batch) > 1)
    assert batches[0] == [1] and [len(b) for b in batches][-1] >= 3  # short rows share a batch


def test_the_default_budget_is_batch_size_times_the_longest_row_and_short_rows_fill_it():
    lengths = [100] * 4 + [10] * 100
    batches = token_batches(lengths, batch_size=2)
    assert batches[0] == [0, 1]  # the count-batched path's first batch: no more memory than before
    assert max(len(b) for b in batches) == ROWS_PER_BATCH_FACTOR * 2  # 200-token budget, capped at 8 x 2 rows


def test_a_row_longer_than_the_budget_is_a_batch_of_its_own_and_bad_budgets_are_refused():
    assert token_batches([500, 10, 10], batch_size=4, batch_tokens=100) == [[0], [1, 2]]
    assert token_batches([], batch_size=4) == []
    with pytest.raises(ValueError, match="--batch-tokens"):
        token_batches([3], batch_size=4, batch_tokens=0)
    with pytest.raises(ValueError, match="--batch-size"):
        token_batches([3], batch_size=0)


@pytest.fixture(scope="module")
def tiny(tiny_qwen3):
    model, tokenizer, _ = load_base(str(tiny_qwen3))
    return model, tokenizer


def _mixed(n: int) -> list[MCQExample]:
    """Short MMLU-like questions and long PubMedQA-like ones in one task."""
    return [MCQExample(f"q{i}", "Which nerve?" + " A long clinical vignette sentence." * (i % 3) * 6,
                       tuple(f"option {i} {j}" for j in range(2 + i % 3)), i % 2) for i in range(n)]


def _count_batched(model, tokenizer, template, examples, batch_size: int) -> torch.Tensor:
    """The earlier path: `batch_size` questions per pass, longest first, letters read at the last position."""
    prompts = [encode_prompt(tokenizer, template, e) for e in examples]
    ids = torch.tensor(letter_token_ids(tokenizer, template, 5, sample=examples[0]))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    scores = torch.full((len(examples), 5), -torch.inf)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with torch.no_grad():
            letters = letter_logits(model, collate_prompts([prompts[i] for i in rows], pad_token_id(tokenizer)), ids)
        for row, i in enumerate(rows):
            k = len(examples[i].options)
            scores[i, :k] = torch.log_softmax(letters[row, :k], dim=-1)
    return scores


@pytest.mark.parametrize("batch_tokens", [None, 40, 300, 100_000])
def test_token_batched_letter_scores_equal_the_count_batched_path(tiny, batch_tokens):
    model, tokenizer = tiny
    template = PromptTemplate(format="plain")
    examples = _mixed(9)
    stats = {}
    ours = choice_logprobs(model, tokenizer, template, examples, 3, batch_tokens=batch_tokens, stats=stats)
    assert torch.allclose(ours, _count_batched(model, tokenizer, template, examples, 3), atol=TOLERANCE)
    assert stats["padded_tokens"] >= stats["prompt_tokens"]


def test_token_batched_summed_scores_equal_one_row_at_a_time(tiny):
    model, tokenizer = tiny
    options = ("yes, clearly", "no", "maybe, the evidence is weak")
    examples = [MCQExample(f"p{i}", f"Is finding {i} real?", options, i % 3,
                           context="A trial found effects. " * (1 + 4 * (i % 2))) for i in range(4)]
    template = PromptTemplate(format="harness").for_task("pubmedqa")
    ours = choice_logprobs(model, tokenizer, template, examples, 2, batch_tokens=200)
    alone = choice_logprobs(model, tokenizer, template, examples, 1, batch_tokens=1)
    assert torch.allclose(ours, alone, atol=TOLERANCE)


def test_short_questions_share_bigger_batches_than_long_ones(tiny):
    """With the default budget, the short questions of a mixed task run more to a pass than the long ones."""
    model, tokenizer = tiny
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape[:2])))
    try:
        choice_logprobs(model, tokenizer, PromptTemplate(format="plain"), _mixed(12), 2)
    finally:
        hook.remove()
    assert shapes[0][0] == 2  # the longest prompts: --batch-size of them
    assert max(rows for rows, _ in shapes) > 2 and shapes[-1][1] < shapes[0][1]
    assert all(rows * width <= 2 * shapes[0][1] for rows, width in shapes)


def test_suite_reports_questions_per_second_and_mfu_per_task(tiny_qwen3, tmp_path, capsys):
    """suite.json's "throughput" and the printed table: each task's questions/s and MFU (2 x non-embedding
    parameters x computed tokens / seconds / the measured matmul peak); 2-shot MMLU reads its prefix once."""
    import json
    from pathlib import Path

    from medtune.cli import main

    mmlu = Path(__file__).parent / "fixtures" / "mmlu"
    output = tmp_path / "suite"
    assert main(["eval", "--model", str(tiny_qwen3), "--suite", "medical", "--prompt-format", "harness",
                 "--num-fewshot", "2", "--source", f"mmlu={mmlu}", "--limit-per-task", "3", "--batch-tokens", "4000",
                 "--output", str(output)]) == 0
    throughput = json.loads((output / "suite.json").read_text(encoding="utf-8"))["throughput"]
    assert throughput["peak_flops"] > 0 and throughput["non_embedding_parameters"] > 0
    # measured before and after scoring; the better of the two is MFU's denominator
    assert throughput["peak_flops"] == max(throughput["peak_flops_before_after"])
    assert throughput["peak_dtype"] == "float32"
    rows = throughput["tasks"]
    assert len(rows) == 6 and all(row["questions_per_second"] > 0 and 0 < row["mfu"] < 1 for row in rows.values())
    assert all(row["cached_prefix_tokens"] > 0 and row["computed_tokens"] < row["prompt_tokens"]
               for row in rows.values())
    row = rows["mmlu_anatomy"]
    expected = 2 * throughput["non_embedding_parameters"] * row["computed_tokens"] / row["seconds"]
    assert row["mfu"] == pytest.approx(expected / throughput["peak_flops"], abs=1e-4)
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("task "))
    assert header.split()[-2:] == ["q/s", "MFU"]
    anatomy = next(line for line in printed.splitlines() if line.startswith("mmlu_anatomy "))
    assert anatomy.split()[-1] == f"{row['mfu']:.1%}"
