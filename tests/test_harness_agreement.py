"""medtune's `--prompt-format harness` against lm-evaluation-harness 0.4.13 itself, on the real SmolLM2-135M.

Each task family gets a small fixture in the layout the harness's own task reads (the Hub schema), a task YAML
that `include`s the installed task (so its doc_to_text, choices, description and few-shot sampler are the
harness's, not a copy) and reads the local JSON file instead of the Hub, and the same rows as `MCQExample`s.
One `simple_evaluate` call scores every task (log_samples=True); each test then checks, for its task, that

- the harness's context string equals `template.prompt(example)` and its continuations `template.choice_texts`;
- the predicted option (argmax of the harness's log-likelihoods, `acc`) equals medtune's on every row: the issue
  asks for >= 99.5%, which on 10 rows means all of them (no near-tie here: the closest top two are 0.014 apart);
- the log-probabilities agree: the harness's per-choice log-likelihoods, normalized over the question's choices
  (ll - logsumexp(ll), what `choice_logprobs` returns), within 1e-4 (fp32 on the CPU; the two differ only in
  padding side and batch composition: at most 2e-5 measured).

Runtime: about 80 s on 2 shared CPU cores (one model load, one harness run for every task).

The 5-option MedQA text has no harness task (the harness ships medqa_4options only); its YAML mirrors
medqa_4options' doc_to_text with an E line. Fixture text comes from real MedMCQA rows (../shared/data/medmcqa)
recast into each layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import choice_logprobs, fewshot_exemplars, predicted_options
from medtune.prompts import PromptTemplate

pytestmark = pytest.mark.slow

MEDMCQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
LOGPROB_TOLERANCE = 1e-4
ROWS = 10  # per task: a spread of answers, few enough forward passes for about a minute of CPU


def _harness_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _medmcqa_rows(name: str, n: int, skip: int = 0) -> list[dict]:
    """Rows `skip`.. of a MedMCQA file in the original schema, keeping short questions with an explanation
    (the real model's forward passes are what this file's runtime is made of)."""
    with open(MEDMCQA / name, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][skip:]
    short = [row for row in rows if row["exp"] and len(row["question"]) + sum(len(row[k] or "") for k in
                                                                             ("opa", "opb", "opc", "opd")) <= 200]
    return short[:n]


def _write(path: Path, docs: list[dict]) -> str:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return str(path)


def _yaml(folder: Path, name: str, include: str, data_files: dict, **extra) -> None:
    """A task that reads local JSON files; `include` is an installed task's YAML (absolute path)."""
    import yaml

    config = {"include": include, "task": name, "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": data_files}, "training_split": None, "validation_split": None, **extra}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


# ---------------------------------------------------------------- fixtures: docs in the harness's layout + examples


def _medmcqa_fixture(folder: Path) -> list[MCQExample]:
    docs = _medmcqa_rows("dev-original-partial.jsonl", ROWS)  # the Hub's original schema, as the harness reads it
    path = _write(folder / "medmcqa.jsonl", docs)
    _yaml(folder, "fx_medmcqa", str(_harness_tasks() / "medmcqa" / "medmcqa.yaml"), {"validation": path},
          test_split="validation")
    return [MCQExample(d["id"], d["question"], (d["opa"], d["opb"], d["opc"], d["opd"]), d["cop"]) for d in docs]


def _medqa_fixture(folder: Path, n_options: int) -> list[MCQExample]:
    """GBaker/MedQA-USMLE-4-options-hf's schema (sent1, ending0.., label); a fifth ending for the 5-option text."""
    rows = _medmcqa_rows("train-sample-original.jsonl", ROWS, skip=20 * n_options)
    docs = []
    for i, row in enumerate(rows):
        endings = [row["opa"], row["opb"], row["opc"], row["opd"], f"None of the above ({row['topic_name']})"]
        docs.append({"id": f"medqa-{i}", "sent1": row["question"], "label": row["cop"],
                     **{f"ending{j}": endings[j] for j in range(n_options)}})
    name = "fx_medqa_4options" if n_options == 4 else "fx_medqa_5options"
    path = _write(folder / f"{name}.jsonl", docs)
    if n_options == 4:
        _yaml(folder, name, str(_harness_tasks() / "medqa" / "medqa.yaml"), {"test": path}, test_split="test")
    else:  # medqa_4options' doc_to_text with an E line: the harness has no 5-option MedQA task
        letters = "\\n".join(f"{letter}. {{{{ending{j}}}}}" for j, letter in enumerate("ABCDE"))
        text = f"Question: {{{{sent1}}}}\\n{letters}\\nAnswer:"
        (folder / f"{name}.yaml").write_text(
            f'task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\n'
            f'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{text}"\ndoc_to_target: label\n'
            'doc_to_choice: ["A", "B", "C", "D", "E"]\nmetric_list:\n  - metric: acc\n', encoding="utf-8")
    return [MCQExample(d["id"], d["sent1"], tuple(d[f"ending{j}"] for j in range(n_options)), d["label"])
            for d in docs]


def _pubmedqa_fixture(folder: Path) -> list[MCQExample]:
    """bigbio/pubmed_qa's source schema (QUESTION, CONTEXTS, final_decision), which the harness's task reads."""
    rows = _medmcqa_rows("train-sample-original.jsonl", ROWS, skip=200)
    docs = []
    for i, row in enumerate(rows):
        explanation = (row["exp"] or "No explanation.")[:320]
        half = len(explanation) // 2
        docs.append({"PUBMED_ID": str(30000000 + i), "QUESTION": f"Is it true that {row['opa']}?",
                     "CONTEXTS": [explanation[:half].strip(), explanation[half:].strip()],
                     "final_decision": ("yes", "no", "maybe")[i % 3]})
    path = _write(folder / "pubmedqa.jsonl", docs)
    _yaml(folder, "fx_pubmedqa", str(_harness_tasks() / "pubmedqa" / "pubmedqa.yaml"), {"test": path},
          test_split="test")
    return [MCQExample(d["PUBMED_ID"], d["QUESTION"], ("yes", "no", "maybe"), ("yes", "no", "maybe").index(
        d["final_decision"]), context="\n".join(d["CONTEXTS"])) for d in docs]


def _mmlu_docs(subject: str, rows: list[dict]) -> list[dict]:
    """cais/mmlu's schema (question, subject, choices, answer); some questions carry the stray whitespace the
    harness strips."""
    return [{"question": (" " if i % 3 == 0 else "") + row["question"] + ("\n" if i % 4 == 0 else ""),
             "subject": subject, "choices": [row["opa"], row["opb"], row["opc"], row["opd"]], "answer": row["cop"]}
            for i, row in enumerate(rows)]


def _mmlu_examples(docs: list[dict], prefix: str) -> list[MCQExample]:
    return [MCQExample(f"{prefix}-{i}", d["question"], tuple(d["choices"]), d["answer"], subject=d["subject"])
            for i, d in enumerate(docs)]


def _mmlu_fixture(folder: Path, subject: str, fewshot: int) -> tuple[list[MCQExample], list[MCQExample]]:
    rows = _medmcqa_rows("train-sample-original.jsonl", ROWS + 5, skip=400 + 40 * fewshot)
    test, dev = _mmlu_docs(subject, rows[:ROWS]), _mmlu_docs(subject, rows[ROWS:])
    files = {split: _write(folder / f"{subject}_{split}.jsonl", docs) for split, docs in (("test", test), ("dev", dev))}
    extra = {"num_fewshot": fewshot} if fewshot else {}
    _yaml(folder, f"fx_mmlu_{subject}", str(_harness_tasks() / "mmlu" / "default" / f"mmlu_{subject}.yaml"), files,
          **extra)
    return _mmlu_examples(test, "test"), _mmlu_examples(dev, "dev")


@pytest.fixture(scope="module")
def agreement(smollm2, tmp_path_factory):
    """Every fixture task scored once by lm-evaluation-harness (HFLM over medtune's loaded model):
    (model, tokenizer, {task: (examples, template, harness samples by doc_id)}, HFLM)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from medtune.modeling import load_base

    folder = tmp_path_factory.mktemp("harness-tasks")
    model, tokenizer, _ = load_base(str(smollm2))  # fp32 on the CPU, as `medtune eval` loads it
    harness = PromptTemplate(format="harness")
    anatomy, anatomy_dev = _mmlu_fixture(folder, "anatomy", fewshot=2)
    cases = {
        "fx_medmcqa": (_medmcqa_fixture(folder), harness.for_task("medmcqa")),
        "fx_medqa_4options": (_medqa_fixture(folder, 4), harness.for_task("medqa_4options")),
        "fx_medqa_5options": (_medqa_fixture(folder, 5), harness.for_task("medqa")),
        "fx_pubmedqa": (_pubmedqa_fixture(folder), harness.for_task("pubmedqa")),
        "fx_mmlu_clinical_knowledge": (_mmlu_fixture(folder, "clinical_knowledge", 0)[0],
                                       harness.for_task("mmlu_clinical_knowledge")),
        "fx_mmlu_anatomy": (anatomy, harness.for_task("mmlu_anatomy").with_fewshot(
            fewshot_exemplars(anatomy_dev, 2, anatomy), "dev")),
    }
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
    results = lm_eval.simple_evaluate(model=lm, tasks=list(cases), task_manager=TaskManager(include_path=str(folder)),
                                      log_samples=True, verbosity="WARNING")
    by_task = {name: (examples, template, sorted(results["samples"][name], key=lambda s: s["doc_id"]))
               for name, (examples, template) in cases.items()}
    return model, tokenizer, by_task, lm


def _check_task(agreement, name: str) -> None:
    model, tokenizer, by_task, _ = agreement
    examples, template, samples = by_task[name]
    assert len(samples) == len(examples) == ROWS
    assert [s["arguments"][0][0] for s in samples] == [template.prompt(e) for e in examples]  # the exact text
    assert [[c for _, c in s["arguments"]] for s in samples] == [template.choice_texts(e) for e in examples]
    ours = choice_logprobs(model, tokenizer, template, examples, batch_size=8)
    lls = [torch.tensor([r[0] for r in s["filtered_resps"]], dtype=torch.float64) for s in samples]
    theirs = [int(torch.argmax(ll)) for ll in lls]  # the harness's `acc`: argmax of the summed log-likelihoods
    assert predicted_options(ours, examples) == theirs
    assert [s["acc"] for s in samples] == [float(p == e.answer) for p, e in zip(theirs, examples)]
    for row, ll in zip(ours, lls):
        normalized = ll - torch.logsumexp(ll, dim=0)
        assert torch.allclose(row[: len(ll)].double(), normalized, atol=LOGPROB_TOLERANCE)


def test_medmcqa_agrees_with_lm_evaluation_harness(agreement):
    _check_task(agreement, "fx_medmcqa")


def test_medqa_4options_agrees_with_lm_evaluation_harness(agreement):
    _check_task(agreement, "fx_medqa_4options")


def test_medqa_5options_agrees_with_the_harness_text_with_an_e_line(agreement):
    _check_task(agreement, "fx_medqa_5options")


def test_pubmedqa_agrees_with_lm_evaluation_harness(agreement):
    _check_task(agreement, "fx_pubmedqa")


def test_mmlu_clinical_knowledge_with_its_description_agrees_with_lm_evaluation_harness(agreement):
    _check_task(agreement, "fx_mmlu_clinical_knowledge")


def test_mmlu_two_shot_from_dev_agrees_with_lm_evaluation_harness(agreement):
    _, _, by_task, _ = agreement
    _, template, samples = by_task["fx_mmlu_anatomy"]
    assert [e.id for e in template.fewshot] == ["dev-0", "dev-1"]  # first_n: the first two rows of dev
    assert samples[0]["arguments"][0][0].count("\nAnswer:") == 3  # two exemplars and the question
    _check_task(agreement, "fx_mmlu_anatomy")


def test_multi_token_choices_agree_with_the_harness_loglikelihood(agreement):
    """Options of several tokens (none of the shipped tasks has one with SmolLM2's tokenizer): medtune's summed
    path against HFLM.loglikelihood on the same (context, continuation) requests."""
    from lm_eval.api.instance import Instance

    model, tokenizer, by_task, lm = agreement
    examples, template, _ = by_task["fx_pubmedqa"]
    options = ("yes, clearly", "no", "maybe, the evidence is weak")
    examples = [MCQExample(e.id, e.question, options, e.answer, context=e.context[:120]) for e in examples[:3]]
    assert len(tokenizer.encode(" maybe, the evidence is weak", add_special_tokens=False)) > 1
    requests = [Instance("loglikelihood", {}, (template.prompt(e), text), idx)
                for e in examples for idx, text in enumerate(template.choice_texts(e))]
    lls = torch.tensor([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)], dtype=torch.float64)
    expected = torch.log_softmax(lls.view(len(examples), len(options)), dim=-1)
    ours = choice_logprobs(model, tokenizer, template, examples, batch_size=5)[:, : len(options)].double()
    assert torch.allclose(ours, expected, atol=LOGPROB_TOLERANCE)
    assert predicted_options(ours, examples) == expected.argmax(dim=-1).tolist()
    assert not math.isclose(expected[0, 0].item(), expected[0, 2].item())  # the rows are not degenerate
