"""`medtune eval --suite`: sources, skipped tasks, averages, shared questions, suite.json and the table."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from medtune import suite
from medtune.cli import main
from medtune.data import MCQExample
from medtune.tasks import SUITES, get_task

MEDICAL = SUITES["medical"]
MMLU_TASKS = [name for name in MEDICAL if name.startswith("mmlu_")]


def _example(id_: str, question: str, answer: int = 0) -> MCQExample:
    return MCQExample(id_, question, ("one", "two", "three", "four"), answer)


def _metrics(n: int, correct: int) -> dict:
    return {"n": n, "accuracy": correct / n, "correct": correct, "ci95": [0.0, 1.0],
            "baselines": {"random": 0.25, "majority": 0.5, "majority_letter": "A"}, "per_subject": {}}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune eval: error: ") and "\n" not in err and "Traceback" not in err
    return err


# ---------------------------------------------------------------- sources


def test_source_mmlu_names_all_six_mmlu_tasks(tmp_path):
    sources = suite.parse_sources([f"mmlu={tmp_path}"], "medical")
    assert sorted(sources) == sorted(MMLU_TASKS) and len(sources) == 6
    assert set(sources.values()) == {str(tmp_path)}


def test_a_later_source_for_one_task_overrides_the_group(tmp_path):
    other = tmp_path / "anatomy_test.csv"
    other.write_text("q,a,b,c,d,A\n", encoding="utf-8")
    sources = suite.parse_sources([f"mmlu={tmp_path}", f"mmlu_anatomy={other}"], "medical")
    assert sources["mmlu_anatomy"] == str(other) and sources["mmlu_college_biology"] == str(tmp_path)


@pytest.mark.parametrize(("pair", "words"), [
    ("medmcqa", "is not TASK=PATH"),
    ("medqa=x.jsonl", "'medqa' is not a task of the medical suite"),  # the 5-option file is not in the suite
    ("medmcqa=/nowhere/validation.jsonl", "does not exist"),
])
def test_a_bad_source_is_refused_with_a_sentence(pair, words):
    with pytest.raises((ValueError, FileNotFoundError), match=words):
        suite.parse_sources([pair], "medical")


def test_a_hub_task_that_cannot_be_reached_is_skipped_with_the_reason(monkeypatch):
    def offline(source, **options):
        raise ConnectionError("the Hugging Face Hub cannot be reached (offline)")

    monkeypatch.setattr("medtune.data.load_examples", offline)
    lines = []
    loaded, skipped = suite.load_suite(("medmcqa", "pubmedqa"), {}, None, report=lines.append)
    assert loaded == {} and list(skipped) == ["medmcqa", "pubmedqa"]
    assert skipped["pubmedqa"].startswith("the Hugging Face Hub cannot be reached (offline)")
    assert "--source pubmedqa=PATH" in skipped["pubmedqa"]
    assert lines[0] == "medmcqa: skipped (the reason is in the table below)"


def test_a_task_with_no_questions_is_skipped_not_scored(monkeypatch, tmp_path):
    monkeypatch.setattr("medtune.data.load_examples", lambda source, **options: ([], _Report()))
    loaded, skipped = suite.load_suite(("medmcqa",), {"medmcqa": str(tmp_path)}, None, report=lambda line: None)
    assert loaded == {} and "holds no labelled validation questions" in skipped["medmcqa"]
    assert "--source" not in skipped["medmcqa"]  # a local source: the advice is for Hub sources only


def test_each_task_is_read_with_its_own_reader_and_scored_split(monkeypatch, tmp_path):
    calls = []

    def record(source, **options):
        calls.append((source, options["task"], options["split"], options["limit"]))
        return [_example(f"{options['task']}-1", "q")], _Report()

    monkeypatch.setattr("medtune.data.load_examples", record)
    suite.load_suite(("medmcqa", "mmlu_anatomy"), {"mmlu_anatomy": str(tmp_path)}, 3, report=lambda line: None)
    assert calls == [(None, "medmcqa", "validation", 3), (str(tmp_path), "mmlu_anatomy", "test", 3)]


def test_few_shot_exemplars_come_from_the_same_source(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("medtune.data.load_examples", lambda source, **options: ([_example("t-1", "q")], _Report()))

    def fewshot(source, task_name, k, scored, **options):
        calls.append((source, task_name, k, [e.id for e in scored]))
        return [_example("d-1", "shot")], "dev"

    # by module: `medtune.evaluate` as an attribute path is the function the package exports
    monkeypatch.setattr(importlib.import_module("medtune.evaluate"), "load_fewshot", fewshot)
    rows = suite.load_task("mmlu_anatomy", str(tmp_path), None, num_fewshot=1)
    assert calls == [(str(tmp_path), "mmlu_anatomy", 1, ["t-1"])]
    assert [e.id for e in rows.fewshot[0]] == ["d-1"] and rows.fewshot[1] == "dev"


def test_each_task_gets_its_own_harness_prompt_and_its_exemplars():
    from medtune.prompts import PromptTemplate

    harness = PromptTemplate(format="harness")
    medqa = suite.task_template(harness, "medqa_4options", ([], None))
    anatomy = suite.task_template(harness, "mmlu_anatomy", ([_example("d-1", "shot")], "dev"))
    question = _example("q-1", "Which bone?")
    assert medqa.prompt(question).startswith("Question: Which bone?\nA. one")  # MedQA: no "Choices:" line
    assert anatomy.prompt(question).startswith("The following are multiple choice questions (with answers) about "
                                               "anatomy.\n\nshot\nA. one")
    assert anatomy.fewshot_split == "dev" and medqa.fewshot == ()


def test_a_run_is_warned_about_scored_rows_it_trained_on(tmp_path, capsys):
    from medtune.data.overlap import training_fingerprint

    trained = [_example("m-1", "Which nerve supplies the deltoid muscle in adults?")]
    (tmp_path / "training_fingerprint.json").write_text(json.dumps(training_fingerprint(trained)), encoding="utf-8")
    rows = {"medmcqa": suite.TaskRows(trained, {}), "pubmedqa": suite.TaskRows([_example("p-1", "Other?")], {})}
    suite.warn_if_trained_on(str(tmp_path), rows)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medtune eval: warning: medmcqa: 1 of 1 evaluated questions overlap")


class _Report:
    def to_dict(self) -> dict:
        return {"source": "test"}


# ---------------------------------------------------------------- the summary


def test_weighted_average_pools_questions_and_macro_averages_tasks():
    results = {"a": _metrics(100, 50), "b": _metrics(10, 10)}
    average = suite.averages(results)
    assert average["weighted"] == pytest.approx(60 / 110)
    assert average["macro"] == pytest.approx((0.5 + 1.0) / 2)


def test_no_scored_task_has_no_average():
    assert suite.averages({}) == {"weighted": None, "macro": None}


def test_questions_shared_by_tasks_are_counted_with_their_ids():
    examples = {
        "mmlu_clinical_knowledge": [_example("ck-1", "Which nerve?"), _example("ck-2", "Only here")],
        "mmlu_college_medicine": [_example("cm-7", "  which   NERVE?"), _example("cm-8", "Also only here")],
        "medmcqa": [_example("m-1", "Which nerve?")],
    }
    duplicates = suite.cross_task_duplicates(examples)
    assert duplicates["questions"] == 1 and duplicates["extra_scorings"] == 2
    assert duplicates["items"] == [{"mmlu_clinical_knowledge": ["ck-1"], "mmlu_college_medicine": ["cm-7"],
                                    "medmcqa": ["m-1"]}]
    assert duplicates["pairs"] == {"mmlu_clinical_knowledge & mmlu_college_medicine": 1,
                                   "mmlu_clinical_knowledge & medmcqa": 1, "mmlu_college_medicine & medmcqa": 1}


def test_the_same_question_with_other_options_is_not_a_duplicate():
    other = MCQExample("cm-1", "Which nerve?", ("one", "two", "three", "five"), 0)
    duplicates = suite.cross_task_duplicates({"a": [_example("a-1", "Which nerve?")], "b": [other]})
    assert duplicates["questions"] == 0 and duplicates["items"] == []


def test_suite_json_has_the_issue_shape():
    results = {"medmcqa": _metrics(4, 1), "pubmedqa": _metrics(2, 2)}
    duplicates = suite.cross_task_duplicates({})
    summary = suite.suite_summary("medical", results, {"mmlu_anatomy": "offline"}, duplicates, {"prompt": "x"})
    assert list(summary)[:3] == ["tasks", "average", "skipped"]
    assert summary["tasks"]["medmcqa"] == {"n": 4, "accuracy": 0.25, "ci95": [0.0, 1.0],
                                           "baselines": {"random": 0.25, "majority": 0.5, "majority_letter": "A"}}
    assert set(summary["average"]) == {"weighted", "macro"}
    assert summary["skipped"] == {"mmlu_anatomy": "offline"}
    assert summary["n"] == 6 and summary["prompt"] == "x" and summary["duplicates"]["questions"] == 0


def test_the_table_shows_each_task_both_averages_the_skips_and_the_shared_questions():
    examples = {"mmlu_clinical_knowledge": [_example("ck-1", "q")], "mmlu_college_medicine": [_example("cm-1", "q")]}
    summary = suite.suite_summary("medical", {"medmcqa": _metrics(4, 1), "pubmedqa": _metrics(2, 2)},
                                  {"mmlu_anatomy": "offline"}, suite.cross_task_duplicates(examples), {})
    lines = suite.format_table(summary).splitlines()
    assert lines[1].split()[:3] == ["medmcqa", "4", "0.250"]
    assert lines[2].split()[:3] == ["pubmedqa", "2", "1.000"]
    assert lines[3].split()[-2:] == ["6", f"{3 / 6:.3f}"]  # weighted: 3 of 6
    assert lines[4].split()[-2:] == ["2", f"{(0.25 + 1) / 2:.3f}"]  # macro
    assert lines[5] == "skipped mmlu_anatomy: offline"
    assert lines[6].startswith("1 questions appear in more than one task "
                               "(mmlu_clinical_knowledge & mmlu_college_medicine (1)); the averages count them 1")


# ---------------------------------------------------------------- the command line


def test_eval_refuses_data_and_suite_together(tmp_path, capsys):
    assert main(["eval", "--model", "m", "--suite", "medical", "--data", "x.jsonl", "--output", str(tmp_path)]) == 2
    assert "--suite scores each task's own split from its own source; drop --data" in _one_line_error(capsys)


def test_eval_refuses_a_split_with_suite(tmp_path, capsys):
    assert main(["eval", "--model", "m", "--suite", "medical", "--split", "test", "--output", str(tmp_path)]) == 2
    assert "drop --split" in _one_line_error(capsys)


def test_eval_needs_data_or_suite(tmp_path, capsys):
    assert main(["eval", "--model", "m", "--output", str(tmp_path)]) == 2
    assert "give --data" in _one_line_error(capsys)


def test_source_without_suite_is_refused(tmp_path, capsys):
    assert main(["eval", "--model", "m", "--data", "x.jsonl", "--source", f"mmlu={tmp_path}",
                 "--output", str(tmp_path)]) == 2
    assert "add --suite medical" in _one_line_error(capsys)


def test_suite_refuses_to_overwrite_an_earlier_suite(tmp_path, capsys):
    (tmp_path / "suite.json").write_text("{}", encoding="utf-8")
    assert main(["eval", "--model", "m", "--suite", "medical", "--output", str(tmp_path)]) == 2
    assert "already holds a suite evaluation" in _one_line_error(capsys)
    assert (tmp_path / "suite.json").read_text(encoding="utf-8") == "{}"


def test_a_bad_source_fails_before_the_model_loads(tmp_path, capsys):
    # "--model m" names no model: reaching the model load would fail with another message
    assert main(["eval", "--model", "m", "--suite", "medical", "--source", "medmcqa=/nowhere.jsonl",
                 "--output", str(tmp_path / "out")]) == 2
    assert "/nowhere.jsonl does not exist" in _one_line_error(capsys)
    assert not Path(tmp_path / "out").exists()


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- end to end, on files in each official layout

MEDMCQA_VALIDATION = Path("/work/shared/data/medmcqa/validation.jsonl")
SHARED_QUESTION = ["Which nerve supplies the deltoid muscle?", "Axillary", "Radial", "Median", "Ulnar", "A"]


def _mmlu_rows(subject: str) -> list[list[str]]:
    """Three headerless rows; one field spans lines (as in the release); clinical_knowledge and college_medicine
    share SHARED_QUESTION, as the real test files share items."""
    rows = [[f"In {subject}, which of these\nis listed first?", "first", "second", "third", "fourth", "A"],
            [f"{subject}: pick the third option.", "w", "x", "y", "z", "C"]]
    shared = subject in ("clinical_knowledge", "college_medicine")
    return rows + [SHARED_QUESTION if shared else [f"{subject}: the last one?", "p", "q", "r", "s", "D"]]


@pytest.fixture(scope="module")
def suite_sources(tmp_path_factory) -> dict[str, Path]:
    """MedQA (4 options) JSONL, PubMedQA's ori_pqal.json + test_ground_truth.json, and the six MMLU test CSVs."""
    import csv

    root = tmp_path_factory.mktemp("suite_sources")
    medqa = root / "medqa" / "test.jsonl"
    medqa.parent.mkdir()
    medqa.write_text("".join(json.dumps({
        "question": f"A {40 + i}-year-old man has chest pain. What is the next step?", "answer": option,
        "options": dict(zip("ABCD", ["ECG", "Aspirin", "Troponin", "CT"])), "meta_info": "step2&3",
        "answer_idx": letter, "metamap_phrases": ["chest pain"]}) + "\n"
        for i, (letter, option) in enumerate([("A", "ECG"), ("B", "Aspirin"), ("D", "CT")])), encoding="utf-8")
    pubmedqa = root / "pubmedqa"
    pubmedqa.mkdir()
    articles = {str(21645374 + i): {
        "QUESTION": f"Does treatment {i} reduce mortality?", "CONTEXTS": [f"Background {i}.", f"Results {i}."],
        "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Humans"], "YEAR": "2011",
        "reasoning_required_pred": decision, "reasoning_free_pred": decision, "final_decision": decision,
        "LONG_ANSWER": f"Treatment {i}: {decision}."} for i, decision in enumerate(["yes", "no", "maybe", "yes"])}
    (pubmedqa / "ori_pqal.json").write_text(json.dumps(articles), encoding="utf-8")
    test_ids = list(articles)[:3]
    (pubmedqa / "test_ground_truth.json").write_text(
        json.dumps({pmid: articles[pmid]["final_decision"] for pmid in test_ids}), encoding="utf-8")
    mmlu = root / "mmlu" / "data" / "test"
    mmlu.mkdir(parents=True)
    for name in MMLU_TASKS:
        subject = name.removeprefix("mmlu_")
        with open(mmlu / f"{subject}_test.csv", "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(_mmlu_rows(subject))
    return {"medmcqa": MEDMCQA_VALIDATION, "medqa_4options": medqa, "pubmedqa": pubmedqa / "ori_pqal.json",
            "mmlu": root / "mmlu"}


LIMIT = 3


@pytest.fixture(scope="module")
def suite_run(smollm2, suite_sources, tmp_path_factory) -> tuple[Path, str]:
    """The whole medical suite, every task from a local file, harness prompts, 3 questions a task."""
    import contextlib
    import io

    output = tmp_path_factory.mktemp("suite_run") / "out"
    printed = io.StringIO()
    argv = ["eval", "--model", str(smollm2), "--suite", "medical", "--prompt-format", "harness",
            "--limit-per-task", str(LIMIT), "--output", str(output)]
    for task, path in suite_sources.items():
        argv += ["--source", f"{task}={path}"]
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return output, printed.getvalue()


@pytest.mark.slow
def test_suite_scores_all_nine_tasks_from_local_files(suite_run):
    output, _ = suite_run
    summary = _json(output / "suite.json")
    assert list(summary["tasks"]) == list(MEDICAL) and summary["skipped"] == {}
    assert all(row["n"] == LIMIT for row in summary["tasks"].values())
    for task in MEDICAL:
        metrics = _json(output / task / "metrics.json")
        assert metrics["n"] == LIMIT and metrics["task"] == task and metrics["prompt_format"] == "harness"


@pytest.mark.slow
def test_suite_predictions_keep_input_order_with_letters_in_option_order(suite_run, suite_sources):
    from medtune.data import load_examples

    output, _ = suite_run
    for task in MEDICAL:
        source = suite_sources["mmlu" if task.startswith("mmlu_") else task]
        examples, _ = load_examples(str(source), task=task, split=get_task(task).split, limit=LIMIT)
        predictions = [json.loads(line) for line in (output / task / "predictions.jsonl").open(encoding="utf-8")]
        assert [p["id"] for p in predictions] == [e.id for e in examples]
        assert [p["gold"] for p in predictions] == ["ABCDE"[e.answer] for e in examples]
        assert all(list(p["probs"]) == list(e.letters) for p, e in zip(predictions, examples))
    pubmedqa = [json.loads(line) for line in (output / "pubmedqa" / "predictions.jsonl").open(encoding="utf-8")]
    assert [p["gold"] for p in pubmedqa] == ["A", "B", "C"]  # yes, no, maybe: the three test PMIDs in file order



@pytest.mark.slow
def test_suite_averages_equal_a_hand_count_of_the_prediction_files(suite_run):
    output, _ = suite_run
    counts = {}
    for task in MEDICAL:
        predictions = [json.loads(line) for line in (output / task / "predictions.jsonl").open(encoding="utf-8")]
        counts[task] = (sum(p["pred"] == p["gold"] for p in predictions), len(predictions))
    summary = _json(output / "suite.json")
    assert summary["average"]["weighted"] == pytest.approx(sum(c for c, _ in counts.values()) /
                                                           sum(n for _, n in counts.values()))
    assert summary["average"]["macro"] == pytest.approx(sum(c / n for c, n in counts.values()) / len(counts))
    for task, (correct, n) in counts.items():
        assert summary["tasks"][task]["accuracy"] == pytest.approx(correct / n)


@pytest.mark.slow
def test_suite_reports_the_question_mmlu_subjects_share(suite_run):
    output, printed = suite_run
    duplicates = _json(output / "suite.json")["duplicates"]
    assert duplicates["questions"] == 1 and duplicates["extra_scorings"] == 1
    assert duplicates["items"] == [{"mmlu_clinical_knowledge": ["clinical_knowledge_test-00003"],
                                    "mmlu_college_medicine": ["college_medicine_test-00003"]}]
    assert "1 questions appear in more than one task (mmlu_clinical_knowledge & mmlu_college_medicine (1))" \
        in printed


@pytest.mark.slow
def test_suite_prints_the_table(suite_run):
    _, printed = suite_run
    table = printed[printed.index("task "):]
    assert [line.split()[0] for line in table.splitlines()[1:10]] == list(MEDICAL)
    assert "average, weighted by n" in table and "average, macro (per task)" in table


@pytest.mark.slow
def test_suite_skips_tasks_the_offline_hub_cannot_serve_and_says_why(smollm2, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["eval", "--model", str(smollm2), "--suite", "medical", "--source",
                 f"medmcqa={MEDMCQA_VALIDATION}", "--limit-per-task", "2", "--output", str(output)]) == 0
    summary = _json(output / "suite.json")
    assert list(summary["tasks"]) == ["medmcqa"] and summary["tasks"]["medmcqa"]["n"] == 2
    assert list(summary["skipped"]) == list(MEDICAL[1:])
    for task, reason in summary["skipped"].items():
        assert "Hub is not reachable" in reason and f"give --source {task}=PATH" in reason
        assert not (output / task).exists()
    assert summary["average"]["weighted"] == summary["average"]["macro"] == summary["tasks"]["medmcqa"]["accuracy"]
    assert "skipped pubmedqa: " in capsys.readouterr().out


def test_suite_few_shot_takes_each_tasks_exemplars_from_its_own_dev_split(tiny_qwen3, tmp_path):
    fixtures = Path(__file__).parent / "fixtures" / "mmlu"
    output = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_qwen3), "--suite", "medical", "--prompt-format", "harness",
                 "--source", f"mmlu={fixtures}", "--num-fewshot", "2", "--limit-per-task", "2",
                 "--output", str(output)]) == 0
    summary = _json(output / "suite.json")
    assert summary["num_fewshot"] == 2
    assert summary["prompt"] == "harness: each task's own lm-evaluation-harness prompt, 2-shot"
    for task in MMLU_TASKS:
        subject = task.removeprefix("mmlu_")
        assert _json(output / task / "metrics.json")["fewshot"] == {
            "k": 2, "split": "dev", "ids": [f"{subject}_dev-00001", f"{subject}_dev-00002"]}
