import json
from pathlib import Path

import pytest

from conftest import MEDMCQA, original_row, write_jsonl
from medtune.config import load_config
from medtune.data import DataError, MCQExample, dev_slice_size, example_from_input, load_examples, split_dev

ROOT = Path(__file__).resolve().parents[1]


def test_original_schema_parses_to_literal_example(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [original_row(1, cop=2), original_row(2, cop=0)])
    (example, _), report = load_examples(str(path))
    assert example == MCQExample("q1", "Question 1?", ("alpha 1", "beta 1", "gamma 1", "delta 1"), 2,
                                 "Because 1.", "Anatomy", "Limbs")
    assert report.answer_base == 0 and report.rows_loaded == 2


def test_reduced_schema_strips_letter_prefixes_and_makes_ids(tmp_path):
    row = {"question": "Q?", "choices": ["A. one", "B. two", "C. three", "D. four"], "answer": 3}
    (example,), _ = load_examples(str(write_jsonl(tmp_path / "val.jsonl", [row])), answer_base=0)
    assert example == MCQExample("val-00001", "Q?", ("one", "two", "three", "four"), 3)


def test_id_schema_reads_letter_answers(tmp_path):
    row = {"id": "x1", "question": "Q?", "options": {"A": "a", "B": "b", "C": "c"}, "answer": "C"}
    (example,), report = load_examples(str(write_jsonl(tmp_path / "ids.jsonl", [row])))
    assert example.options == ("a", "b", "c") and example.answer == 2
    assert report.answer_base is None


def test_real_files_load_with_expected_counts():
    validation, _ = load_examples(str(MEDMCQA / "validation.jsonl"))
    with_ids, _ = load_examples(str(MEDMCQA / "dev-ids-mirage.jsonl"))
    assert len(validation) == len(with_ids) == 4183
    assert [e.answer for e in validation] == [e.answer for e in with_ids]
    train, report = load_examples(str(MEDMCQA / "train-sample-original.jsonl"), skip_invalid=True)
    assert len(train) == 2179 and report.skipped == {"empty_option": 11}


def test_unlabeled_test_split_loads_without_answers_only_when_allowed():
    examples, _ = load_examples(str(MEDMCQA / "test.jsonl"), require_answer=False, limit=3)
    assert [e.answer for e in examples] == [None, None, None]
    with pytest.raises(DataError, match=r"test.jsonl:1: field 'answer': has no answer"):
        load_examples(str(MEDMCQA / "test.jsonl"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": "  "}, r"d.jsonl:2: field 'question': is empty"),
        ({"opc": ""}, r"d.jsonl:2: field 'opc': is empty"),
        ({"opb": None}, r"d.jsonl:2: field 'opb': is empty"),
        ({"cop": 7}, r"d.jsonl:2: field 'cop': 7 is out of range 0..3"),
        ({"cop": "two"}, r"d.jsonl:2: field 'cop': expected an integer"),
        ({"id": "q1"}, r"d.jsonl:2: field 'id': duplicate id 'q1' \(first at d.jsonl:1\)"),
    ],
)
def test_invalid_row_error_names_file_line_and_field(tmp_path, change, message):
    path = write_jsonl(tmp_path / "d.jsonl", [original_row(1), original_row(2, **change)])
    with pytest.raises(DataError, match=message):
        load_examples(str(path))


def test_wrong_option_count_is_refused(tmp_path):
    rows = [{"question": "Q?", "choices": ["A. only"], "answer": 0}]  # 0 present: 0-based
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'choices': has 1 options; expected 2 to 5"):
        load_examples(str(write_jsonl(tmp_path / "c.jsonl", rows)))


def test_letter_answer_outside_options_is_refused(tmp_path):
    rows = [{"id": "a", "question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "C"}]
    with pytest.raises(DataError, match=r"field 'answer': expected one of AB, got 'C'"):
        load_examples(str(write_jsonl(tmp_path / "i.jsonl", rows)))


def test_bad_json_line_is_reported_with_its_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(original_row(1)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"b.jsonl:2: field '\(row\)': not valid JSON"):
        load_examples(str(path))


def test_skip_invalid_counts_skipped_rows_by_reason(tmp_path):
    rows = [original_row(1), original_row(2, opa=""), original_row(3, cop=9), original_row(4, id="q1"),
            original_row(5, question=""), original_row(6)]
    examples, report = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)), skip_invalid=True)
    assert [e.id for e in examples] == ["q1", "q6"]
    assert report.skipped == {"empty_option": 1, "answer_out_of_range": 1, "duplicate_id": 1, "empty_question": 1}


def test_one_based_cop_is_detected_and_stated(tmp_path):
    rows = [original_row(1, cop=1), original_row(2, cop=4), original_row(3, cop=2)]
    examples, report = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert [e.answer for e in examples] == [0, 3, 1]
    assert report.answer_base == 1 and "1-based" in report.answer_base_reason


def test_ambiguous_cop_is_refused_unless_declared(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [original_row(1, cop=1), original_row(2, cop=3)])
    with pytest.raises(DataError, match="fit both 0-based and 1-based.*--answer-base"):
        load_examples(str(path))
    examples, report = load_examples(str(path), answer_base=1)
    assert [e.answer for e in examples] == [0, 2] and "declared" in report.answer_base_reason


def test_csv_and_parquet_files_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [original_row(1, cop=1), original_row(2, cop=0)]
    expected, _ = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    header = list(rows[0])
    csv_lines = [",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]
    (tmp_path / "d.csv").write_text("\n".join(csv_lines) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for suffix in ("parquet", "csv", "json"):
        assert load_examples(str(tmp_path / f"d.{suffix}"))[0] == expected


def test_csv_error_names_its_line(tmp_path):
    (tmp_path / "d.csv").write_text("id,question,opa,opb,opc,opd,cop\nq1,Q?,a,b,c,d,0\nq2,Q?,a,,c,d,1\n")
    with pytest.raises(DataError, match=r"d.csv:3: field 'opb': is empty"):
        load_examples(str(tmp_path / "d.csv"))


def test_dev_slice_never_overlaps_excluded_rows():
    examples = [MCQExample(f"q{i}", f"Q{i}", ("a", "b"), 0) for i in range(100)]
    excluded = {examples[i].key() for i in range(95)}
    train, dev = split_dev(examples, dev_size=8, seed=0, exclude=excluded)
    assert {e.id for e in dev} <= {f"q{i}" for i in range(95, 100)} and len(dev) == 5
    assert len(train) + len(dev) == 100 and not {e.id for e in train} & {e.id for e in dev}


def test_dev_slice_is_capped_at_a_tenth_of_the_rows():
    # `train --limit 64` with the default dev_size 64 used to keep 63 rows for dev and train on 1
    examples = [MCQExample(f"q{i}", f"Q{i}", ("a", "b"), 0) for i in range(64)]
    train, dev = split_dev(examples, dev_size=64, seed=0)
    assert (len(train), len(dev)) == (58, 6)
    assert not {e.id for e in train} & {e.id for e in dev}


@pytest.mark.parametrize(("rows", "dev_size", "expected"),
                         [(64, 64, 6), (2190, 64, 64), (2190, 256, 219), (9, 64, 0), (1000, 0, 0)])
def test_dev_slice_size_is_the_smaller_of_dev_size_and_a_tenth(rows, dev_size, expected):
    assert dev_slice_size(rows, dev_size) == expected


def test_user_input_with_duplicate_options_is_refused():
    with pytest.raises(DataError, match=r"field 'options': contains the same option twice"):
        example_from_input("Q?", ["a", "a"])
    with pytest.raises(DataError, match=r"field 'options': has 6 options"):
        example_from_input("Q?", list("abcdef"))


def test_hub_dataset_offline_fails_fast_with_a_sentence(monkeypatch):
    from medtune.modeling import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    with pytest.raises(ConnectionError, match="Hub is not reachable .* Pass a local JSONL"):
        load_examples("openlifescienceai/medmcqa", split="validation")
    hub_reachable.cache_clear()


def test_recipe_config_skips_and_counts_the_real_train_splits_invalid_rows():
    config = load_config(str(ROOT / "configs" / "qwen3-1.7b-lora.yaml"))
    examples, report = load_examples(str(MEDMCQA / "train-sample-original.jsonl"),
                                     skip_invalid=config.skip_invalid, answer_base=config.answer_base)
    assert (report.rows_read, len(examples), sum(report.skipped.values())) == (2190, 2179, 11)
    assert report.skipped == {"empty_option": 11}


def test_invalid_rows_do_not_vote_on_the_answer_base(tmp_path):
    # a row with an empty option is rejected anyway: its 0 must not make the 1-based file 0-based
    rows = [original_row(1, cop=1), original_row(2, cop=4), original_row(3, cop=2), original_row(4, cop=0, opa="")]
    examples, report = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)), skip_invalid=True)
    assert [e.answer for e in examples] == [0, 3, 1] and report.answer_base == 1
    assert report.skipped == {"empty_option": 1}


def test_out_of_range_answer_does_not_prove_one_based(tmp_path):
    # 7 is out of range in either base for 4 options, so 1, 2, 3 remain ambiguous
    rows = [original_row(1, cop=1), original_row(2, cop=2), original_row(3, cop=3), original_row(4, cop=7)]
    with pytest.raises(DataError, match=r"values \[1, 2, 3\] fit both 0-based and 1-based"):
        load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)), skip_invalid=True)


def test_four_does_not_prove_one_based_in_five_option_rows(tmp_path):
    rows = [original_row(i, cop=cop, ope=f"epsilon {i}") for i, cop in enumerate([1, 2, 4], start=1)]
    with pytest.raises(DataError, match=r"values \[1, 2, 4\] fit both 0-based and 1-based"):
        load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_five_proves_one_based_in_five_option_rows(tmp_path):
    rows = [original_row(i, cop=cop, ope=f"epsilon {i}") for i, cop in enumerate([1, 5, 4], start=1)]
    examples, report = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert [e.answer for e in examples] == [0, 4, 3] and report.answer_base == 1
    assert "the value 5 occurs in 1 row(s) with 5 options" in report.answer_base_reason


def test_zero_and_a_one_based_proof_together_are_refused(tmp_path):
    rows = [original_row(1, cop=0), original_row(2, cop=4), original_row(3, cop=2)]
    message = r"both a 0 \(1 row\(s\)\) and a 1-based-only value \(1 row\(s\) whose.*--answer-base"
    with pytest.raises(DataError, match=message):
        load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_integral_float_answers_are_accepted(tmp_path):
    # pandas writes an integer column that has a null as floats: 2.0 in Parquet, "2.0" in CSV
    rows = [original_row(1, cop=2.0), original_row(2, cop="3.0"), original_row(3, cop=0.0)]
    examples, report = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert [e.answer for e in examples] == [2, 3, 0] and report.answer_base == 0


def test_parquet_float_answer_column_with_a_null_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [original_row(1, cop=2.0), original_row(2, cop=None), original_row(3, cop=0.0)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert pa.Table.from_pylist(rows).schema.field("cop").type == pa.float64()
    examples, _ = load_examples(str(tmp_path / "d.parquet"), require_answer=False)
    assert [e.answer for e in examples] == [2, None, 0]


@pytest.mark.parametrize("cop", [2.5, "2.5", "two", True, float("nan")])
def test_non_integral_answer_is_refused(tmp_path, cop):
    rows = [original_row(1, cop=0), original_row(2, cop=cop)]
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'cop': expected an integer"):
        load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_names_other_modules_import_from_medtune_data_stay_public():
    import medtune.data

    names = {"DEFAULT_HUB_DATASET", "LETTERS", "LOCAL_SUFFIXES", "MAX_OPTIONS", "MIN_OPTIONS", "DataError",
             "LoadReport", "MCQExample", "dev_slice_size", "example_from_input", "file_sha256", "is_local",
             "load_examples", "split_dev"}
    assert names <= set(medtune.data.__all__) and all(hasattr(medtune.data, name) for name in names)
