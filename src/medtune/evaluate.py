"""Score multiple-choice questions by the probabilities of each option's continuation after the prompt.

Where every option is one token (the letters " A".." E", and PubMedQA's " yes"/" no"/" maybe" in the tokenizers we
ship with), one forward pass per question (batched, longest first, left-padded so the scored position is the
last column), only that position's logits kept, restricted to the option tokens. Where an option is several
tokens (the harness format's words in some tokenizers), each (prompt + option) is scored in one batched pass
over the options and its tokens' log-probabilities summed, as lm-evaluation-harness does (`acc`: the argmax of
the summed log-likelihoods, no length normalisation). No free text is parsed.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medtune.data import LETTERS, MCQExample
from medtune.evaluation.calibration import calibration_line, calibration_metrics, scale_logprobs, top_confidence
from medtune.evaluation.prefix import Prefix, collate_suffixes, prefix_for, token_batches
from medtune.evaluation.selective import selective_metrics
from medtune.prompts import PromptTemplate
from medtune.tokenization import collate_prompts, encode_prompt, letter_token_ids, pad_token_id

STRICT_ANSWER = re.compile(r"^\s*Answer:\s*\(?([A-E])\)?(?=$|[\s).:,])")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def choice_logprobs(
    model, tokenizer, template: PromptTemplate, examples: list[MCQExample], batch_size: int = 16,
    progress: bool = False, batch_tokens: int | None = None, stats: dict | None = None,
) -> torch.Tensor:
    """Log-probabilities of each option's continuation (`template.choice_texts`), normalized over the
    example's options.

    Batches are formed longest first under a budget of padded tokens (`evaluation.prefix.token_batches`:
    `batch_tokens`, by default `batch_size` x the longest prompt). With few-shot exemplars, the token prefix
    every prompt shares is run once and its KV cache reused for every batch (`evaluation.prefix`); the scores
    equal the uncached path's (fp32: within 1e-4, tests/test_prefix_cache.py). 0-shot prompts take the plain
    path. `stats`, when given, is filled with the token counts (`_scoring_stats`).

    Returns float32 [n_examples, 5] on the CPU; columns past an example's option count are -inf; for harness
    PubMedQA columns A/B/C are yes/no/maybe. Single-token options are scored by fp32 logits (`letter_logits`);
    multi-token ones by an fp32 log-softmax over the vocabulary (`_summed_logprobs`).
    The evaluation, the training loop's dev check and the `Answerer` all score through this function.
    """
    if not examples:
        return torch.empty(0, len(LETTERS))
    if template.format == "harness":
        pairs = [[encode_pair(tokenizer, template.prompt(example), text, template.add_special_tokens)
                  for text in template.choice_texts(example)] for example in examples]
        choice_ids = _shared_single_tokens(pairs)
        if choice_ids is None:
            return _summed_logprobs(model, tokenizer, pairs, batch_size, progress, batch_tokens,
                                    bool(template.fewshot), stats)
        prompts = [choices[0][0] for choices in pairs]  # the context ids, as the harness splits them
    else:  # the run's own prompt: each letter must be one token after it (checked, else a sentence)
        choice_ids = letter_token_ids(tokenizer, template, len(LETTERS), sample=examples[0])
        prompts = [encode_prompt(tokenizer, template, example) for example in examples]
    return _single_token_logprobs(model, tokenizer, prompts, choice_ids, [len(e.options) for e in examples],
                                  batch_size, progress, batch_tokens, bool(template.fewshot), stats)


def encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-evaluation-harness 0.4.13 splits them (`_encode_pair`):
    trailing spaces of the context move onto the continuation, the whole text is encoded once, and the
    continuation is what follows the context's own encoding. So " yes" is scored as the tokens the model
    would read in the running text, even where the tokenizer merges across the boundary."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=add_special_tokens)
    context_ids = tokenizer.encode(context, add_special_tokens=add_special_tokens)
    return context_ids, whole[len(context_ids):]


def _shared_single_tokens(pairs: list[list[tuple[list[int], list[int]]]]) -> list[int] | None:
    """The option token ids when every option of every example is one token, the same id for the same column
    in every example (the letters, or yes/no/maybe); else None (score the multi-token way)."""
    ids: list[int] = []
    for choices in pairs:
        for column, (_, continuation) in enumerate(choices):
            if len(continuation) != 1:
                return None
            if column == len(ids):
                ids.append(continuation[0])
            elif ids[column] != continuation[0]:
                return None
    return ids


def _single_token_logprobs(model, tokenizer, prompts: list[list[int]], choice_ids: list[int], counts: list[int],
                           batch_size: int, progress: bool, batch_tokens: int | None = None,
                           share_prefix: bool = False, stats: dict | None = None) -> torch.Tensor:
    """One forward pass per prompt (after the shared prefix, when `share_prefix` and there is one); the
    options' fp32 logits at its last position, log-softmaxed over the example's `counts[i]` options: [n, 5]."""
    device, pad = model_device(model), pad_token_id(tokenizer)
    ids = torch.tensor(choice_ids, device=device)
    scores = torch.full((len(prompts), len(LETTERS)), -math.inf)
    was_training = model.training
    model.eval()
    prefix = prefix_for(model, prompts, [1] * len(prompts)) if share_prefix else None
    # whole lengths, prefix included, even when it is cached: each row of a batch holds its own copy of the
    # prefix's keys and values, so the budget bounds memory as it does without the cache
    batches = token_batches([len(p) for p in prompts], batch_size, batch_tokens)  # similar lengths together
    for rows in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
        batch = _model_inputs(prefix, [prompts[i] for i in rows], pad, device)
        letters = letter_logits(model, batch, ids).cpu()  # [batch, n_choices] fp32
        for row, index in enumerate(rows):
            k = counts[index]
            scores[index, :k] = torch.log_softmax(letters[row, :k], dim=-1)
    model.train(was_training)
    _scoring_stats(stats, prompts, batches, prefix)
    return scores


def _model_inputs(prefix: Prefix | None, rows: list[list[int]], pad: int, device) -> dict:
    """A batch's model inputs: the whole rows left-padded, or their suffixes after the cached prefix."""
    if prefix is None:
        return {k: v.to(device) for k, v in collate_prompts(rows, pad).items()}
    return collate_suffixes(prefix, [ids[prefix.length:] for ids in rows], pad, device)


def _scoring_stats(stats: dict | None, rows: list[list[int]], batches: list[list[int]], prefix: Prefix | None):
    """Fill `stats`: prompt_tokens (every row's tokens), computed_tokens (the tokens the model ran: the prefix
    once, then the suffixes), padded_tokens (including the padding), the batches and the cached prefix's length."""
    if stats is None:
        return
    cut = prefix.length if prefix else 0
    stats.update(prompt_tokens=sum(map(len, rows)), computed_tokens=cut + sum(len(ids) - cut for ids in rows),
                 padded_tokens=cut + sum(len(batch) * (len(rows[batch[0]]) - cut) for batch in batches),
                 batches=len(batches), cached_prefix_tokens=cut)


def _summed_logprobs(model, tokenizer, pairs: list[list[tuple[list[int], list[int]]]], batch_size: int,
                     progress: bool, batch_tokens: int | None = None, share_prefix: bool = False,
                     stats: dict | None = None) -> torch.Tensor:
    """Options of several tokens: each (context + option) is one row, batched by `token_batches` (after the
    shared prefix, when `share_prefix` and there is one); an option's
    score is the sum of its tokens' log-probabilities (fp32 log-softmax over the vocabulary), then the
    example's options are normalized against each other: [n, 5].

    As in the harness, the model reads context + option without the option's last token; the option's
    tokens are predicted at the last len(option) positions, which left padding puts in the last columns."""
    rows = [(i, j, context + option[:-1], option) for i, choices in enumerate(pairs)
            for j, (context, option) in enumerate(choices)]
    inputs = [row[2] for row in rows]
    device, pad = model_device(model), pad_token_id(tokenizer)
    summed = torch.full((len(pairs), len(LETTERS)), -math.inf, dtype=torch.float64)
    was_training = model.training
    model.eval()
    prefix = prefix_for(model, inputs, [len(row[3]) for row in rows]) if share_prefix else None
    batches = token_batches([len(ids) for ids in inputs], batch_size, batch_tokens)
    for indices in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
        chunk = [rows[index] for index in indices]
        keep = max(len(option) for *_, option in chunk)
        batch = _model_inputs(prefix, [inputs[index] for index in indices], pad, device)
        logits = model(**batch, logits_to_keep=keep, use_cache=False).logits[:, -keep:]  # [batch, keep, vocab]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # fp32 whatever the model's dtype
        for row, (i, j, _, option) in enumerate(chunk):
            targets = torch.tensor(option, device=device)
            picked = logprobs[row, keep - len(option):].gather(-1, targets[:, None])  # [len(option), 1]
            summed[i, j] = picked.sum().item()
    model.train(was_training)
    _scoring_stats(stats, inputs, batches, prefix)
    scores = torch.full((len(pairs), len(LETTERS)), -math.inf)
    for i, choices in enumerate(pairs):
        scores[i, : len(choices)] = torch.log_softmax(summed[i, : len(choices)], dim=-1).float()
    return scores


def letter_logits(model, batch: dict, letter_ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the letter tokens at the last position: [batch, n_letters].

    Why fp32: a bf16 head rounds each logit to 8 significant bits (steps of 0.06-0.125 at typical magnitudes),
    so two letters often tie exactly, and a tie broken by position favours "A". The head's input (the final
    hidden state, [batch, 1, hidden]) is caught on its way into the output layer and multiplied in fp32 by that
    layer's letter rows only (tied embeddings share those rows; they are copied, never changed). Catching the
    input keeps the model's own forward, whatever wraps it (PEFT, a 4-bit base). A head that is not a plain
    Linear (e.g. LoRA on lm_head, or none exposed) is used as it is, its output upcast.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1]
        return logits.index_select(-1, letter_ids).float()
    caught: dict = {}
    hook = head.register_forward_hook(lambda module, args, output: caught.update(hidden=args[0]))
    try:
        model(**batch, logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    with torch.autocast(letter_ids.device.type, enabled=False):  # an enclosing autocast would recast to 16 bits
        hidden = caught["hidden"][:, -1].float()  # [batch, hidden]
        rows = head.weight.index_select(0, letter_ids).float()  # [n_letters, hidden]
        logits = hidden @ rows.T
        if head.bias is not None:
            logits = logits + head.bias.index_select(0, letter_ids).float()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2 squashes logits
    return cap * torch.tanh(logits / cap) if cap else logits


def predicted_options(logprobs: torch.Tensor, examples: list[MCQExample]) -> list[int | None]:
    """The top option per question, or None where two or more options tie exactly for the top.

    A tie is counted wrong: any tie-break by position would favour one letter (argmax picks the first, "A",
    MedMCQA's most frequent answer, so it would inflate accuracy), and a random one would make a score
    depend on a seed. `evaluate` reports how many questions tied."""
    predicted = []
    for row, example in zip(logprobs, examples):
        options = row[: len(example.options)]
        top = (options == options.max()).nonzero().flatten().tolist()
        predicted.append(top[0] if len(top) == 1 else None)
    return predicted


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion: honest near 0 and 1 and for small n."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(examples: list[MCQExample], predicted: list[int | None], none_label: str = "unparseable") -> dict:
    """Accuracy with its 95% CI, the data's baselines, per-subject accuracy and the confusion matrix.

    `predicted[i]` is an option index, or None (counted wrong) for an answer that picks no letter: an
    unparseable generation, or a scored tie; `none_label` names it in the confusion matrix.
    """
    n = len(examples)
    gold = [example.answer for example in examples]
    correct = sum(p is not None and p == g for p, g in zip(predicted, gold))
    letter_counts = Counter(LETTERS[g] for g in gold)
    majority_letter, majority_count = letter_counts.most_common(1)[0] if n else ("A", 0)
    confusion: dict = {letter: {} for letter in sorted(letter_counts)}
    per_subject: dict = defaultdict(lambda: [0, 0])
    predicted_counts = Counter(LETTERS[p] if p is not None else none_label for p in predicted)
    for example, p in zip(examples, predicted):
        row = confusion[LETTERS[example.answer]]
        key = LETTERS[p] if p is not None else none_label
        row[key] = row.get(key, 0) + 1
        if example.subject:
            per_subject[example.subject][0] += int(p == example.answer)
            per_subject[example.subject][1] += 1
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "ci95": list(wilson_interval(correct, n)),
        "correct": correct,
        "baselines": {
            "random": sum(1 / len(e.options) for e in examples) / n if n else 0.0,
            "majority": majority_count / n if n else 0.0,
            "majority_letter": majority_letter,
        },
        "gold_distribution": dict(sorted(letter_counts.items())),
        "predicted_distribution": dict(sorted(predicted_counts.items())),
        "per_subject": {s: {"n": t, "accuracy": c / t} for s, (c, t) in sorted(per_subject.items())},
        "confusion": confusion,
        "warnings": _warnings(n, correct, predicted_counts, majority_letter, majority_count),
    }


COLLAPSE_SHARE = 0.8  # one letter answering more than this share of the questions is called a collapse


def _warnings(n: int, correct: int, predicted_counts: Counter, majority_letter: str, majority_count: int) -> list:
    """Sentences for results that look better than they are: a model collapsed onto one letter, and an accuracy
    not above the always-the-commonest-letter baseline beyond its 95% interval."""
    if not n:
        return []
    warnings = []
    letter, count = predicted_counts.most_common(1)[0]
    if count / n > COLLAPSE_SHARE:
        warnings.append(f"the model answered {letter!r} for {count} of {n} questions ({count / n:.1%}, more than "
                        f"{COLLAPSE_SHARE:.0%}): it has collapsed onto one answer, and its accuracy mostly reflects "
                        f"how often {letter!r} is right")
    low, high = wilson_interval(correct, n)
    if low <= majority_count / n:
        warnings.append(f"accuracy {correct / n:.3f} (95% CI {low:.3f}-{high:.3f}) is not above the always-"
                        f"{majority_letter} baseline {majority_count / n:.3f} beyond its interval: no evidence the "
                        "model does better than always giving the commonest answer")
    return warnings


def evaluate(
    model, tokenizer, template: PromptTemplate, examples: list[MCQExample], batch_size: int = 16,
    progress: bool = True, temperature: float | None = None, batch_tokens: int | None = None,
) -> tuple[dict, list[dict]]:
    """(metrics, predictions) for labelled examples, scored by `choice_logprobs` (`batch_tokens`: its token
    budget per pass; metrics["scoring"]: the tokens it read, computed and padded, and the cached prefix).

    A question whose top letters tie exactly gets "pred": null and counts as wrong (`predicted_options`);
    metrics["ties"] says how many did. With a `temperature` (the run's calibration.json), each prediction adds
    "probs_calibrated" and metrics["calibration"] reports both; the letter is always the raw argmax (scaling by
    T never changes it). metrics["selective"] ranks questions by the calibrated confidence when there is one."""
    started, scoring = time.perf_counter(), {}
    logprobs = choice_logprobs(model, tokenizer, template, examples, batch_size, progress, batch_tokens, scoring)
    seconds = time.perf_counter() - started
    predicted = predicted_options(logprobs, examples)
    predictions = [
        {"id": e.id, "gold": LETTERS[e.answer], "pred": LETTERS[p] if p is not None else None,
         "probs": {letter: round(math.exp(logprobs[i, j].item()), 6) for j, letter in enumerate(e.letters)},
         "subject": e.subject}  # null where the data has none; `medtune compare` compares per subject with it
        for i, (e, p) in enumerate(zip(examples, predicted))
    ]
    if temperature is not None:
        calibrated = scale_logprobs(logprobs, temperature)
        for i, (e, row) in enumerate(zip(examples, predictions)):
            row["probs_calibrated"] = {letter: round(math.exp(calibrated[i, j].item()), 6)
                                       for j, letter in enumerate(e.letters)}
    metrics = summarize(examples, predicted, none_label="tie")
    answers, subjects = [e.answer for e in examples], [e.subject for e in examples]
    metrics["calibration"] = calibration_metrics(logprobs, answers, predicted, subjects, temperature)
    metrics["selective"] = selective_metrics(
        top_confidence(calibrated if temperature is not None else logprobs),
        [p is not None and p == a for p, a in zip(predicted, answers)], "calibrated" if temperature else "raw")
    metrics.update(mode="scored", prompt_format=template.format, task=template.task, fewshot=fewshot_record(template),
                   ties=predicted.count(None), scoring=scoring,
                   tie_rule="a question whose top letters tie exactly is counted wrong", seconds=round(seconds, 3),
                   questions_per_second=round(len(examples) / seconds, 2) if seconds else None)
    return metrics, predictions


def fewshot_record(template: PromptTemplate) -> dict:
    """What metrics.json says about the exemplars: K, the split they came from and their ids."""
    if not template.fewshot:
        return {"k": 0}
    return {"k": len(template.fewshot), "split": template.fewshot_split, "ids": [e.id for e in template.fewshot]}


def fewshot_exemplars(pool: list[MCQExample], k: int, scored: list[MCQExample]) -> list[MCQExample]:
    """The first `k` rows of `pool`, the few-shot split (lm-evaluation-harness's `first_n` sampler, which MMLU
    uses with its `dev` split; for its other tasks the harness draws a fresh random sample per question, which
    medtune does not copy: the same K exemplars precede every question, so a result is reproducible from the
    ids in metrics.json). Exemplars that are also scored questions (same id or same question and options)
    are refused: a model shown the answer would be scored on it."""
    if k < 0:
        raise ValueError(f"--num-fewshot {k} is negative; give 0 (the default) or more exemplars")
    if k > len(pool):
        raise ValueError(f"--num-fewshot {k} asks for more exemplars than the {len(pool)} labelled rows of the "
                         "few-shot split; give a smaller K")
    chosen = pool[:k]
    scored_ids, scored_keys = {e.id for e in scored}, {e.key() for e in scored}
    clash = [e.id for e in chosen if e.id in scored_ids or e.key() in scored_keys]
    if clash:
        raise ValueError(f"few-shot exemplar(s) {', '.join(clash[:5])} are also scored questions; take exemplars "
                         "from another split or file (--fewshot-data)")
    return chosen


def load_fewshot(source: str | None, task_name: str | None, k: int, scored: list[MCQExample],
                 **load_options) -> tuple[list[MCQExample], str]:
    """(exemplars, the split they came from) for `medtune eval --num-fewshot K`: the first K labelled rows of
    the task's few-shot split (`tasks.Task.fewshot_split`: MMLU `dev`, the others `train`) of `source` (a Hub
    id, a local file or folder, or None: the task's Hub copy). A file that is one split ("all") can serve only
    when it is not the scored file (`fewshot_exemplars` refuses exemplars that are scored questions). Prints
    which split and rows, as metrics.json records them. `load_options` go to `load_examples`."""
    from medtune.data import load_examples
    from medtune.tasks import get_task

    wanted = get_task(task_name or "medmcqa").fewshot_split  # a plain --data file is read as MedMCQA
    pool, report = load_examples(source, task=task_name, split=wanted, limit=k, **load_options)
    exemplars = fewshot_exemplars(pool, k, scored)
    split = report.split or wanted
    print(f"few-shot: the first {k} rows of split {split!r} of {report.source} "
          f"({', '.join(e.id for e in exemplars)}), before every question")
    return exemplars, split


def task_of(layout: str | None, examples: list[MCQExample]) -> str | None:
    """The benchmark a loaded data set is, from the reader that read it (`LoadReport.layout`), so the harness
    format uses that benchmark's text: MMLU's names its subject, which must be one (the harness scores each
    subject as its own task). None for a layout that is no benchmark (--columns)."""
    if layout in ("medmcqa", "pubmedqa"):
        return layout
    if layout == "medqa":
        return "medqa" if any(len(e.options) == 5 for e in examples) else "medqa_4options"
    if layout != "mmlu":
        return None
    subjects = sorted({e.subject for e in examples})
    if len(subjects) != 1:
        raise ValueError(f"the MMLU rows hold {len(subjects)} subjects ({', '.join(map(str, subjects[:4]))}); the "
                         "harness prompt names one: give one subject's file, or use --suite medical")
    return f"mmlu_{subjects[0]}"


def _distribution(counts: dict) -> str:
    return ", ".join(f"{letter} {count}" for letter, count in counts.items())


def parse_strict_answer(text: str, n_options: int) -> int | None:
    """The option index from text that starts with 'Answer: X'; None for anything else."""
    match = STRICT_ANSWER.match(text)
    if not match or LETTERS.index(match.group(1)) >= n_options:
        return None
    return LETTERS.index(match.group(1))


@torch.no_grad()
def evaluate_generative(
    model, tokenizer, template: PromptTemplate, examples: list[MCQExample], max_new_tokens: int = 16,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Greedy generation from the prompt without its answer prefix, parsed only as a strict 'Answer: X'.

    Unparseable output is wrong and reported as such; it is never mapped to a default letter.
    """
    started = time.perf_counter()
    device, predicted, predictions = model_device(model), [], []
    for example in tqdm(examples, desc="generating", unit="q", disable=not progress):
        context = template.prompt(example)[: -len(template.answer_prefix)]
        ids = tokenizer(context, add_special_tokens=template.add_special_tokens, return_tensors="pt").to(device)
        output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=pad_token_id(tokenizer))
        text = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        choice = parse_strict_answer(text, len(example.options))
        predicted.append(choice)
        predictions.append({"id": example.id, "gold": LETTERS[example.answer],
                            "pred": LETTERS[choice] if choice is not None else None, "text": text})
    seconds = time.perf_counter() - started
    metrics = summarize(examples, predicted)
    unparseable = sum(p is None for p in predicted)
    metrics.update(mode="generative", prompt_format=template.format, unparseable=unparseable,
                   unparseable_rate=unparseable / len(examples) if examples else 0.0, seconds=round(seconds, 3),
                   questions_per_second=round(len(examples) / seconds, 2) if seconds else None)
    return metrics, predictions


def check_output(output: Path, overwrite: bool = False) -> None:
    """Refuse to write over the results of an earlier evaluation unless asked to."""
    if not overwrite and (output / "metrics.json").exists():
        raise FileExistsError(f"{output} already holds an evaluation (metrics.json); choose another --output "
                              "or pass --overwrite to replace it")


def evaluate_to_dir(answerer, examples: list[MCQExample], output: Path, batch_size: int = 16,
                    data: dict | None = None, generative_tokens: int | None = None, overwrite: bool = False,
                    permutations: str | None = None, batch_tokens: int | None = None) -> dict:
    """Score `examples` with an `Answerer`'s model and prompt; write predictions.jsonl and metrics.json
    under `output` and print a one-line summary. Used by `medtune eval` and the quickstart.

    `data` (the data report) is stored in the metrics; with `generative_tokens`, `evaluate_generative` runs
    too, its metrics go under "generative" and its texts to generations.jsonl. An `output` that already
    holds metrics.json is refused unless `overwrite`. With `permutations` "cyclic", every cyclic shift of the
    options is scored too (`evaluation.robustness`): metrics["robustness"] and permutations.jsonl."""
    from medtune.evaluation.robustness import check_permutations, score_permutations
    from medtune.rundir import write_json

    check_output(output, overwrite)
    permute = check_permutations(permutations, answerer.template)  # a refusal before minutes of scoring
    temperature = getattr(answerer, "temperature", None)  # the run's calibration.json; None for a bare model
    metrics, predictions = evaluate(answerer.model, answerer.tokenizer, answerer.template, examples, batch_size,
                                    temperature=temperature, batch_tokens=batch_tokens)
    metrics["calibration"]["temperature_file"] = answerer.description.get("calibration")
    metrics["model"] = answerer.description
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "predictions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(p) + "\n" for p in predictions)
    low, high = metrics["ci95"]
    baselines, model = metrics["baselines"], answerer.description
    ties = f"; {metrics['ties']} tied, counted wrong" if metrics["ties"] else ""
    print(f"accuracy {metrics['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) on {metrics['n']} questions{ties}; "
          f"baselines: random {baselines['random']:.3f}, always-{baselines['majority_letter']} "
          f"{baselines['majority']:.3f}; {model['dtype']} on {model['device']} ({model.get('dtype_reason', '')}); "
          f"{metrics['questions_per_second']} questions/s -> {output}")
    print(f"answers given: {_distribution(metrics['predicted_distribution'])}; gold: "
          f"{_distribution(metrics['gold_distribution'])}")
    print(calibration_line(metrics))
    for warning in metrics["warnings"]:
        print(f"warning: {warning}")
    if data is not None:
        metrics["data"] = data
    if generative_tokens:
        metrics["generative"], generations = evaluate_generative(answerer.model, answerer.tokenizer,
                                                                 answerer.template, examples, generative_tokens)
        with open(output / "generations.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(g) + "\n" for g in generations)
    if permute:
        metrics["robustness"] = score_permutations(answerer, examples, output, batch_size)
    write_json(output / "metrics.json", metrics)
    return metrics
