"""Readers of every source family, on small fixtures in each exact official layout (tests/fixtures/), and the Hub
schemas fed as rows to the same parsers (no network)."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import MEDMCQA, write_jsonl
from medtune.data import DataError, MCQExample, load_examples, sources
from medtune.data.schema import RawRow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MEDQA4 = FIXTURES / "medqa" / "medqa_4options_test.jsonl"
MEDQA5 = FIXTURES / "medqa" / "medqa_5options_test.jsonl"
PUBMEDQA_SPLIT = FIXTURES / "pubmedqa" / "with_split"
PUBMEDQA_SINGLE = FIXTURES / "pubmedqa" / "single"
MMLU = FIXTURES / "mmlu"
BANK = FIXTURES / "columns" / "bank.csv"
BANK_COLUMNS = "question=stem,options=opt1|opt2|opt3|opt4|opt5,answer=key,explanation=rationale,subject=area,id=qid"
BANK_ANSWERS = [1, 2, 2, 0, 3, 1]


# ---------------------------------------------------------------- MedQA


def test_medqa_four_option_jsonl_parses_to_literal_example():
    examples, report = load_examples(str(MEDQA4))
    assert examples[1] == MCQExample(
        "medqa_4options_test-00002",
        "A 58-year-old man has crushing substernal chest pain for 40 minutes. ECG shows ST elevation in leads II, "
        "III and aVF. Which coronary artery is most likely occluded?",
        ("Left anterior descending artery", "Left circumflex artery", "Right coronary artery",
         "Left main coronary artery"), 2, None, "step2&3")
    assert len(examples) == 7 and report.layout == "medqa" and report.split == "all"


def test_medqa_five_option_jsonl_reads_option_e():
    examples, _ = load_examples(str(MEDQA5), task="medqa")
    assert {len(e.options) for e in examples} == {5}
    assert [e.letters[e.answer] for e in examples] == ["A", "D", "B", "C", "E", "B"]
    assert examples[4].options[4] == "Small cell carcinoma"


def test_medqa_answer_text_that_disagrees_with_answer_idx_is_a_row_error(tmp_path):
    rows = [json.loads(line) for line in MEDQA4.read_text().splitlines()]
    rows[2]["answer"] = "Thyroid peroxidase"  # answer_idx says B, the TSH receptor
    path = write_jsonl(tmp_path / "medqa.jsonl", rows)
    with pytest.raises(DataError, match=r"medqa.jsonl:3: field 'answer': 'Thyroid peroxidase' is not option B "
                                        r"\('TSH receptor'\)"):
        load_examples(str(path), task="medqa_4options")


def test_medqa_hub_rows_in_gbaker_schema_parse():
    from medtune.data import medqa

    row = {"id": "test-00007", "sent1": "Which vitamin deficiency causes night blindness?", "sent2": "",
           "ending0": "Vitamin A", "ending1": "Vitamin B1", "ending2": "Vitamin C", "ending3": "Vitamin D", "label": 0}
    example = medqa.parse_row(RawRow("GBaker[test]:row 7", row), "test-00007")
    assert example == MCQExample("test-00007", "Which vitamin deficiency causes night blindness?",
                                 ("Vitamin A", "Vitamin B1", "Vitamin C", "Vitamin D"), 0)


# ---------------------------------------------------------------- PubMedQA


def test_pubmedqa_folder_with_ground_truth_scores_exactly_its_pmids_as_test():
    truth = json.loads((PUBMEDQA_SPLIT / "test_ground_truth.json").read_text())
    test, report = load_examples(str(PUBMEDQA_SPLIT), task="pubmedqa")  # default: the task's split, test
    train, _ = load_examples(str(PUBMEDQA_SPLIT), task="pubmedqa", split="train")
    everything = json.loads((PUBMEDQA_SPLIT / "ori_pqal.json").read_text())
    assert [e.id for e in test] == list(truth) and report.split == "test"
    assert [e.id for e in train] == [pmid for pmid in everything if pmid not in truth]


def test_pubmedqa_row_becomes_yes_no_maybe_with_abstract_and_long_answer():
    (example, *_), _ = load_examples(str(PUBMEDQA_SINGLE / "ori_pqal.json"))
    entry = json.loads((PUBMEDQA_SINGLE / "ori_pqal.json").read_text())["30112233"]
    assert example == MCQExample("30112233", entry["QUESTION"], ("yes", "no", "maybe"), 0, entry["LONG_ANSWER"],
                                 context="\n".join(entry["CONTEXTS"]))


def test_pubmedqa_without_ground_truth_is_one_split_all_and_another_split_is_refused():
    examples, report = load_examples(str(PUBMEDQA_SINGLE), task="pubmedqa")
    assert len(examples) == 5 and report.split == "all"
    assert [e.answer for e in examples] == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match=r"is one split, 'all' \(no test_ground_truth.json beside it separates "
                                         r"test from train\), not 'test'"):
        load_examples(str(PUBMEDQA_SINGLE), task="pubmedqa", split="test")


def test_pubmedqa_row_error_names_file_line_pmid_and_field(tmp_path):
    document = json.loads((PUBMEDQA_SINGLE / "ori_pqal.json").read_text())
    document["29887766"]["final_decision"] = "probably"
    (tmp_path / "ori_pqal.json").write_text(json.dumps(document, indent=4))
    line = next(number for number, text in enumerate((tmp_path / "ori_pqal.json").read_text().splitlines(), 1)
                if '"29887766"' in text)
    with pytest.raises(DataError, match=rf"ori_pqal.json:{line} \(PMID 29887766\): field 'final_decision': "
                                        "expected yes, no or maybe"):
        load_examples(str(tmp_path))


def test_pubmedqa_label_that_disagrees_with_test_ground_truth_is_a_row_error(tmp_path):
    shutil.copytree(PUBMEDQA_SPLIT, tmp_path / "pqa")
    (tmp_path / "pqa" / "test_ground_truth.json").write_text(json.dumps(
        {"29887766": "yes", "27650012": "yes", "26778123": "maybe", "33990045": "yes"}))
    with pytest.raises(DataError, match=r"PMID 29887766\): field 'final_decision': 'no' disagrees"):
        load_examples(str(tmp_path / "pqa"), task="pubmedqa")


@pytest.mark.parametrize("schema", ["bigbio_source", "qiaojin_pqa_labeled"])
def test_pubmedqa_hub_rows_parse(schema):
    from medtune.data import pubmedqa

    contexts = ["Statins lower cholesterol.", "Mortality was lower in users."]
    if schema == "bigbio_source":  # bigbio yields the PMID as the example key, not as a field
        row = {"QUESTION": "Do statins help?", "CONTEXTS": contexts, "LABELS": ["A", "B"], "MESHES": [],
               "YEAR": "2016", "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
               "final_decision": "maybe", "LONG_ANSWER": "Perhaps."}
        expected_id = "test-00003"
    else:
        row = {"pubid": 27650012, "question": "Do statins help?", "long_answer": "Perhaps.",
               "context": {"contexts": contexts, "labels": ["A", "B"], "meshes": []}, "final_decision": "maybe"}
        expected_id = "27650012"
    example = pubmedqa.parse_row(RawRow("hub:row 3", row), "test-00003")
    assert example == MCQExample(expected_id, "Do statins help?", ("yes", "no", "maybe"), 2, "Perhaps.",
                                 context="Statins lower cholesterol.\nMortality was lower in users.")


def test_pubmedqa_json_list_of_hub_rows_reads_as_one_split(tmp_path):
    rows = [{"pubid": 7, "question": "Q?", "context": {"contexts": ["c"]}, "long_answer": "L",
             "final_decision": "yes"}]
    (tmp_path / "pqa_labeled.json").write_text(json.dumps(rows))
    (example,), report = load_examples(str(tmp_path / "pqa_labeled.json"), task="pubmedqa")
    assert (example.id, example.answer, report.split) == ("7", 0, "all")


# ---------------------------------------------------------------- MMLU


def test_mmlu_headerless_csv_keeps_fields_with_newlines():
    examples, report = load_examples(str(MMLU / "test" / "anatomy_test.csv"))
    assert len(examples) == 6  # the first line is a question, not a header
    assert examples[3] == MCQExample(
        "anatomy_test-00004", "A patient cannot abduct the arm beyond 15 degrees.\nWhich nerve is most likely injured?",
        ("Axillary nerve", "Suprascapular nerve", "Long thoracic nerve", "Musculocutaneous nerve"), 1, None, "anatomy")
    assert (report.layout, report.split) == ("mmlu", "test")


@pytest.mark.parametrize("subject", ["anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                                     "medical_genetics", "professional_medicine"])
def test_mmlu_folder_is_searched_for_each_subject_and_split(subject):
    test, report = load_examples(str(MMLU), task=f"mmlu_{subject}", split="test")
    dev, _ = load_examples(str(MMLU), task=f"mmlu_{subject}", split="dev")
    assert len(dev) == 5 and 5 <= len(test) <= 7
    assert {e.subject for e in test + dev} == {subject} and test[0].id == f"{subject}_test-00001"
    assert report.sha256 is not None and report.split == "test"


def test_mmlu_other_split_is_found_in_the_release_sibling_folder():
    examples, report = load_examples(str(MMLU / "test" / "anatomy_test.csv"), task="mmlu_anatomy", split="dev")
    assert report.split == "dev" and examples[0].id == "anatomy_dev-00001"


def test_mmlu_clinical_knowledge_and_college_medicine_share_questions_as_in_the_release():
    clinical, _ = load_examples(str(MMLU), task="mmlu_clinical_knowledge", split="test")
    medicine, _ = load_examples(str(MMLU), task="mmlu_college_medicine", split="test")
    assert len({e.key() for e in clinical} & {e.key() for e in medicine}) == 2


def test_mmlu_error_names_the_line_a_multiline_record_starts_on(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["Line one\nline two?", "a", "b", "c", "d", "A"],
                                      ["Second?", "a", "b", "c", "d", "F"]])
    with pytest.raises(DataError, match=r"anatomy_test.csv:3: field 'answer': expected one of ABCD, got 'F'"):
        load_examples(str(path), task="mmlu_anatomy")
    examples, report = load_examples(str(path), task="mmlu_anatomy", skip_invalid=True)
    assert len(examples) == 1 and report.skipped == {"answer_out_of_range": 1}


def test_mmlu_folder_without_a_task_asks_for_the_subject():
    with pytest.raises(ValueError, match=r"holds many subjects; name one with --task mmlu_<subject>"):
        load_examples(str(MMLU))


def test_mmlu_subject_other_than_the_task_is_refused():
    with pytest.raises(ValueError, match=r"holds MMLU subject 'anatomy' \(by its name\), not 'college_biology'"):
        load_examples(str(MMLU / "test" / "anatomy_test.csv"), task="mmlu_college_biology")


def test_mmlu_hub_rows_in_cais_schema_parse():
    from medtune.data import mmlu

    row = {"question": "Which bone is in the wrist?", "subject": "anatomy",
           "choices": ["Femur", "Scaphoid", "Tibia", "Patella"], "answer": 1}
    example = mmlu.parse_row(RawRow("cais/mmlu[anatomy:test]:row 1", row), "anatomy_test-00001")
    assert example == MCQExample("anatomy_test-00001", "Which bone is in the wrist?",
                                 ("Femur", "Scaphoid", "Tibia", "Patella"), 1, None, "anatomy")


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(("path", "layout", "reason"), [
    (MEDQA4, "medqa", "'options' and 'answer_idx'"),
    (MEDQA5, "medqa", "'options' and 'answer_idx'"),
    (PUBMEDQA_SPLIT, "pubmedqa", "the folder holds ori_pqal.json"),
    (PUBMEDQA_SINGLE / "ori_pqal.json", "pubmedqa", "a JSON object keyed by PMID"),
    (MMLU / "dev" / "medical_genetics_dev.csv", "mmlu", "headerless 6-column CSV named <subject>_<split>.csv"),
    (MEDMCQA / "validation.jsonl", "medmcqa", "MedMCQA's reduced schema"),
    (MEDMCQA / "train-sample-original.jsonl", "medmcqa", "MedMCQA's original schema"),
])
def test_layout_is_detected_and_the_reason_stated(path, layout, reason):
    _, report = load_examples(str(path), limit=2)
    assert (report.layout, report.task) == (layout, None) and reason in report.layout_reason


def test_task_picks_the_reader_and_says_so():
    _, report = load_examples(str(MEDQA4), task="medqa_4options")
    assert (report.task, report.layout, report.layout_reason) == ("medqa_4options", "medqa", "--task medqa_4options")


@pytest.mark.parametrize("name", ["bank.jsonl", "bank.csv"])
def test_a_file_that_matches_no_layout_gets_one_sentence_naming_what_was_expected(tmp_path, name):
    rows = [{"stem": "Q?", "a": "x", "b": "y", "key": "A"}]
    path = write_jsonl(tmp_path / name, rows) if name.endswith("jsonl") else tmp_path / name
    if name.endswith("csv"):
        path.write_text("stem,a,b,key\nQ?,x,y,A\n")
    with pytest.raises(ValueError, match=r"matches no known layout; expected MedMCQA rows .* MedQA JSONL .* "
                                         r"ori_pqal.json .* <subject>_<split>.csv .* --columns") as error:
        load_examples(str(path))
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- your own columns


def _bank_rows() -> list[dict]:
    with open(BANK, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_bank(tmp_path: Path, answers: list) -> Path:
    rows = _bank_rows()
    for row, answer in zip(rows, answers):
        row["key"] = answer
        row["opt5"] = row["opt5"] or None
    return write_jsonl(tmp_path / "bank.jsonl", rows)


def test_columns_map_a_csv_bank_with_letter_answers():
    examples, report = load_examples(str(BANK), columns=BANK_COLUMNS)
    assert examples[0] == MCQExample("cb-001", "Which drug reverses opioid-induced respiratory depression?",
                                     ("Flumazenil", "Naloxone", "Atropine", "Protamine"), 1,
                                     "Naloxone is a competitive mu-opioid receptor antagonist.", "Pharmacology")
    assert len(examples[2].options) == 5 and [e.answer for e in examples] == BANK_ANSWERS  # a 4/5-option mix
    assert (report.layout, report.answer_form) == ("columns", "letter") and "letters" in report.answer_base_reason


@pytest.mark.parametrize(("form", "to_answer", "base"), [
    ("index", lambda row, i: i, 0),
    ("index", lambda row, i: str(i + 1), 1),
    ("text", lambda row, i: [row[f"opt{n}"] for n in range(1, 6)][i], None),
])
def test_columns_answer_as_index_or_text_is_detected_and_stated(tmp_path, form, to_answer, base):
    answers = [to_answer(row, index) for row, index in zip(_bank_rows(), BANK_ANSWERS)]
    examples, report = load_examples(str(_write_bank(tmp_path, answers)), columns=BANK_COLUMNS)
    assert [e.answer for e in examples] == BANK_ANSWERS
    assert (report.answer_form, report.answer_base) == (form, base)
    assert f"'key' holds {'an index' if form == 'index' else 'the option text'}" in report.answer_base_reason


def test_columns_options_may_name_one_list_column_and_a_dict_spec_works(tmp_path):
    rows = [{"stem": "Q1?", "choices": ["x", "y", "z"], "key": "z"}, {"stem": "Q2?", "choices": ["p", "q"], "key": "p"}]
    examples, report = load_examples(str(write_jsonl(tmp_path / "b.jsonl", rows)),
                                     columns={"question": "stem", "options": "choices", "answer": "key"})
    assert [(e.options, e.answer) for e in examples] == [(("x", "y", "z"), 2), (("p", "q"), 0)]
    assert report.answer_form == "text"


def test_columns_answers_that_fit_two_forms_must_be_declared(tmp_path):
    rows = [{"stem": f"Q{i}?", "choices": ["1", "2", "3", "4"], "key": str(i)} for i in (1, 2, 3)]
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(DataError, match=r"field 'key': every answer fits index and text .* answer_form=index\|text "
                                        r"in --columns or --answer-base 0\|1"):
        load_examples(str(path), columns="question=stem,options=choices,answer=key")
    examples, _ = load_examples(str(path), columns="question=stem,options=choices,answer=key,answer_form=text")
    assert [e.answer for e in examples] == [0, 1, 2]
    examples, _ = load_examples(str(path), columns="question=stem,options=choices,answer=key", answer_base=0)
    assert [e.answer for e in examples] == [1, 2, 3]


def test_columns_answer_base_does_not_turn_letter_answers_into_an_index():
    # a recipe's answer_base (set for MedMCQA) must not misread a bank of letters
    examples, report = load_examples(str(BANK), columns=BANK_COLUMNS, answer_base=1)
    assert [e.answer for e in examples] == BANK_ANSWERS and report.answer_form == "letter"


def test_columns_answers_that_mix_forms_are_refused(tmp_path):
    rows = [{"stem": "Q1?", "choices": ["x", "y"], "key": "B"}, {"stem": "Q2?", "choices": ["p", "q"], "key": "q"}]
    with pytest.raises(DataError, match=r"field 'key': mixes answer forms \(1 as letter, 1 as text\)"):
        load_examples(str(write_jsonl(tmp_path / "b.jsonl", rows)), columns="question=stem,options=choices,answer=key")


def test_columns_naming_a_missing_column_lists_the_files_columns():
    with pytest.raises(ValueError, match=r"bank.csv: --columns names 'question_text', which the file does not have; "
                                         r"its columns are: area, key, opt1, opt2, opt3, opt4, opt5, qid, rationale, "
                                         r"stem"):
        load_examples(str(BANK), columns="question=question_text,options=opt1|opt2|opt3|opt4,answer=key")


def test_columns_unknown_key_is_refused_with_the_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) stem; the keys are question, options, answer"):
        load_examples(str(BANK), columns="stem=stem,options=opt1|opt2")


def test_columns_row_error_names_file_line_and_column(tmp_path):
    (tmp_path / "bank.csv").write_text(BANK.read_text().replace("Atropine", ""))
    with pytest.raises(DataError, match=r"bank.csv:2: field 'opt3': is empty"):
        load_examples(str(tmp_path / "bank.csv"), columns=BANK_COLUMNS)


# ---------------------------------------------------------------- Hub sources (rows served by a stand-in reader)


@pytest.fixture
def hub_rows(monkeypatch):
    """Replace the Hub download: records (dataset, config, split) and serves the given rows."""
    calls, served = [], {}

    def fake_read_hub(dataset_id, split, config=None):
        calls.append((dataset_id, config, split))
        return [RawRow(f"{dataset_id}[{split}]:row {n}", row) for n, row in enumerate(served["rows"], 1)], \
            {"revision": "abc", "fingerprint": "f"}

    monkeypatch.setattr(sources, "_read_hub", fake_read_hub)
    return calls, served


def test_task_without_a_source_reads_its_hub_config_and_split(hub_rows):
    calls, served = hub_rows
    served["rows"] = [{"question": "Which bone is in the wrist?", "subject": "anatomy",
                       "choices": ["Femur", "Scaphoid", "Tibia", "Patella"], "answer": 1}]
    (example,), report = load_examples(None, task="mmlu_anatomy")
    assert calls == [("cais/mmlu", "anatomy", "test")]
    assert example.id == "anatomy_test-00001" and example.answer == 1
    assert (report.layout, report.split, report.revision, report.answer_base) == ("mmlu", "test", "abc", 0)


def test_hub_id_with_a_config_is_read_and_its_schema_detected(hub_rows):
    calls, served = hub_rows
    served["rows"] = [{"pubid": 1, "question": "Q?", "context": {"contexts": ["c"]}, "long_answer": "L",
                       "final_decision": "no"}]
    (example,), report = load_examples("qiaojin/PubMedQA:pqa_labeled", split="train")
    assert calls == [("qiaojin/PubMedQA", "pqa_labeled", "train")]
    assert (example.id, example.answer, report.layout) == ("1", 1, "pubmedqa")


def test_task_with_no_hub_copy_asks_for_a_local_file():
    with pytest.raises(ValueError, match="task medqa has no Hub copy; pass its local file"):
        load_examples(None, task="medqa")


# ---------------------------------------------------------------- the command line reaches the readers


def test_eval_task_and_columns_reach_the_reader(tiny_qwen3, tmp_path):
    from medtune.cli import main

    base = ["eval", "--model", str(tiny_qwen3), "--batch-size", "8"]
    assert main([*base, "--data", str(MMLU), "--task", "mmlu_anatomy", "--split", "dev",
                 "--output", str(tmp_path / "mmlu")]) == 0
    data = json.loads((tmp_path / "mmlu" / "metrics.json").read_text())["data"]
    assert (data["task"], data["layout"], data["split"], data["rows_loaded"]) == ("mmlu_anatomy", "mmlu", "dev", 5)
    assert main([*base, "--data", str(BANK), "--columns", BANK_COLUMNS, "--output", str(tmp_path / "bank")]) == 0
    data = json.loads((tmp_path / "bank" / "metrics.json").read_text())["data"]
    assert (data["layout"], data["answer_form"], data["rows_loaded"]) == ("columns", "letter", 6)

