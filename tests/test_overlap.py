"""Overlap between training and evaluation rows: a hand-made case with every category (and a 12-gram that must
not count), the harness's normalisation, `medtune data overlap` text and --json, and the run's fingerprint."""

import base64
import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from medtune.cli import main
from medtune.data import MCQExample
from medtune.data.overlap import (
    exclude_overlap,
    find_overlap,
    ngrams,
    parse_source,
    trained_on,
    training_fingerprint,
    warn_if_trained_on,
)
from medtune.tasks import MMLU_MEDICAL

OPTIONS = ("Appendix", "Ileum", "Rectum", "Stomach")
# 20 words: long enough to hold a 13-gram that a training row shares
VIGNETTE = ("A 45 year old man presents with crushing chest pain radiating to the left arm and sweating for two "
            "hours. What is the first investigation?")


def mcq(example_id: str, question: str, options=OPTIONS) -> MCQExample:
    return MCQExample(example_id, question, tuple(options), 0)


def eval_rows() -> list[MCQExample]:
    return [
        mcq("e-exact", "What is the most common site of carcinoid tumour?"),
        mcq("e-question", "Which nerve supplies the deltoid muscle?", ("Axillary", "Radial", "Ulnar", "Median")),
        mcq("e-ngram", VIGNETTE, ("ECG", "Troponin", "Echo", "Chest X-ray")),
        mcq("e-twelve", "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"),
        mcq("e-clean", "Drug of choice for absence seizures?",
            ("Ethosuximide", "Phenytoin", "Valproate", "Lamotrigine")),
    ]


def train_rows() -> list[MCQExample]:
    return [
        # same key: case and runs of whitespace do not count
        mcq("t-exact", "what is the  most COMMON site of\ncarcinoid tumour?"),
        # same question once punctuation is deleted (as the harness does), with other options
        mcq("t-question", "Which nerve supplies the deltoid muscle :", ("Axillary", "Musculocutaneous", "Ulnar", "C5")),
        # the vignette's first 16 words, with other case and punctuation, inside a different question
        mcq("t-ngram", "Case 3: a 45 year old MAN presents, with crushing chest pain radiating to the LEFT arm; and "
                       "sweating. Which drug is given first?", ("Aspirin", "Heparin", "Morphine", "Nitrate")),
        # shares exactly 12 consecutive words with e-twelve: below the harness's 13
        mcq("t-twelve", "zero one two three four five six seven eight nine ten eleven twelve zzz fourteen"),
        mcq("t-clean", "Most common cause of community acquired pneumonia?", ("Pneumococcus", "H. influenzae",
                                                                          "Klebsiella", "Staphylococcus")),
    ]


# ------------------------------------------------------------------ what is compared


@pytest.mark.parametrize("text", [
    VIGNETTE,
    "Which of the following is NOT true: (a) anti-body; b) 5-HT3 antagonists...  Ondansetron's \"use\"?",
    "Café   ÉCLAIR\tnaïve\nwords — en-dash – and {braces} [x] <y> one two three four five six seven eight",
])
def test_ngrams_are_lm_eval_janitors(text):
    from lm_eval.decontamination.janitor import Janitor

    janitor = Janitor()  # 13-grams, string.punctuation deleted, ASCII lowercased: the harness's defaults
    janitor.register_contaminant_python(text)
    assert ngrams(text) == janitor.dirt_ngrams
    assert ngrams(text)  # every text above has 13 words or more


def test_question_of_twelve_words_has_no_ngram():
    assert ngrams("one two three four five six seven eight nine ten eleven twelve") == set()


# ------------------------------------------------------------------ the hand-made case


@pytest.fixture(scope="module")
def report():
    return find_overlap(train_rows(), eval_rows())


def test_exact_duplicate_despite_case_and_spacing(report):
    assert report.matches["exact"] == {"e-exact": ["t-exact"]}


def test_same_question_with_other_options_and_punctuation(report):
    assert report.matches["question"] == {"e-question": ["t-question"]}


def test_thirteen_gram_inside_a_longer_question_counts(report):
    assert report.matches["ngram"] == {"e-ngram": ["t-ngram"]}


def test_twelve_shared_words_do_not_count(report):
    assert "e-twelve" not in report.eval_ids() and "t-twelve" not in report.overlapping_train_ids


def test_counts_and_ids(report):
    data = report.to_dict()
    assert (data["train_rows"], data["eval_rows"]) == (5, 5)
    assert (data["overlapping_eval_rows"], data["overlapping_train_rows"]) == (3, 3)
    assert {c: (data[c]["eval_rows"], data[c]["pairs"]) for c in ("exact", "question", "ngram")} == {
        "exact": (1, 1), "question": (1, 1), "ngram": (1, 1)}
    assert data["overlapping_train_ids"] == ["t-exact", "t-ngram", "t-question"]
    json.dumps(data)  # a manifest can store it


def test_a_pair_is_counted_in_its_strongest_category_only():
    # an exact duplicate also has the same question and the same 13-grams: it is one exact pair, nothing else
    long = mcq("e", VIGNETTE)
    found = find_overlap([mcq("t", VIGNETTE.upper())], [long])
    assert {c: found.matches[c] for c in ("exact", "question", "ngram")} == {
        "exact": {"e": ["t"]}, "question": {}, "ngram": {}}


def test_every_training_row_that_overlaps_is_listed_for_its_eval_row():
    found = find_overlap([mcq(f"t{i}", "What is the most common site of carcinoid tumour?") for i in range(3)],
                         eval_rows())
    assert found.matches["exact"] == {"e-exact": ["t0", "t1", "t2"]}
    assert found.counts()["exact"] == {"eval_rows": 1, "pairs": 3}


def test_context_passages_count_towards_ngrams():
    abstract = "Aspirin reduced the rate of recurrent stroke in the trial of two thousand patients over five years"
    evaluated = MCQExample("pmid-1", "Does aspirin help?", ("yes", "no", "maybe"), 0, context=abstract)
    trained = MCQExample("t", "Summarise the abstract.", ("yes", "no", "maybe"), 0, context=abstract + " indeed")
    assert find_overlap([trained], [evaluated]).matches["ngram"] == {"pmid-1": ["t"]}


def test_exclude_overlap_drops_overlapping_rows_by_position_not_id():
    # two sources both holding an id "r1": only the overlapping one is dropped
    train = [mcq("r1", "What is the most common site of carcinoid tumour?"), mcq("r1", "Another question here?")]
    kept, dropped = exclude_overlap(train, eval_rows())
    assert [e.question for e in kept] == ["Another question here?"]
    assert dropped.overlapping_train_rows == 1


def test_train_side_is_read_once_as_a_stream():
    found = find_overlap(iter(train_rows()), eval_rows())
    assert found.train_rows == 5 and len(found.eval_ids()) == 3


def test_summary_shows_a_bounded_number_of_rows():
    evaluated = [mcq(f"e{i:02d}", f"Question number {i} about anatomy?") for i in range(15)]
    found = find_overlap([mcq(f"t{i:02d}", f"question number {i} about anatomy?") for i in range(15)], evaluated)
    text = found.summary()
    assert "e09 <- t09" in text and "e10 <- t10" not in text and "... 5 more (all of them with --json)" in text
    assert len(found.to_dict()["exact"]["matches"]) == 15


# ------------------------------------------------------------------ sources and the command line


def test_parse_source_reads_task_equals_path():
    assert parse_source("pubmedqa=data/ori_pqal.json") == ("pubmedqa", "data/ori_pqal.json")
    assert parse_source("mmlu=folder") == ("mmlu", "folder")
    assert parse_source("train.jsonl") == (None, "train.jsonl")
    assert parse_source("weird=name.jsonl") == (None, "weird=name.jsonl")  # not a task: a file name


def _as_rows(examples: list[MCQExample]) -> list[dict]:
    return [{"id": e.id, "question": e.question, "options": dict(zip("ABCD", e.options)), "answer": "A"}
            for e in examples]


@pytest.fixture
def files(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", _as_rows(train_rows())),
            write_jsonl(tmp_path / "valid.jsonl", _as_rows(eval_rows())))


def test_cli_prints_counts_and_ids(files, capsys):
    train, valid = files
    assert main(["data", "overlap", "--train", str(train), "--eval", str(valid)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5 training rows vs 5 evaluation rows: 3 evaluation rows overlap, through 3 training rows")
    assert "exact duplicates (question + options): 1 evaluation rows, 1 pairs\n    e-exact <- t-exact" in out
    assert "e-question <- t-question" in out and "e-ngram <- t-ngram" in out


def test_cli_json_is_the_whole_report(files, capsys):
    train, valid = files
    assert main(["data", "overlap", "--train", str(train), "--eval", str(valid), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["question"]["matches"] == {"e-question": ["t-question"]}
    assert data["sources"]["train"] == [{"source": str(train), "task": None, "split": "all", "rows": 5,
                                         "skipped": {}}]


def test_cli_several_training_sources_label_their_ids(files, tmp_path, capsys):
    train, valid = files
    more = write_jsonl(tmp_path / "more.jsonl", _as_rows([mcq("t-exact", "Drug of choice for absence seizures?",
                                                              eval_rows()[4].options)]))
    assert main(["data", "overlap", "--train", str(train), "--train", str(more), "--eval", str(valid),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exact"]["matches"] == {"e-clean": ["more.jsonl:t-exact"], "e-exact": ["train.jsonl:t-exact"]}


def test_cli_missing_file_is_one_sentence(files, tmp_path, capsys):
    assert main(["data", "overlap", "--train", str(tmp_path / "nope.jsonl"), "--eval", str(files[1])]) == 2
    assert capsys.readouterr().err.startswith("medtune data: error: ")


# ------------------------------------------------------------------ what a run remembers of its rows


@pytest.fixture(scope="module")
def fingerprint():
    return json.loads(json.dumps(training_fingerprint(train_rows())))  # as stored in and read from the run folder


def test_fingerprint_finds_trained_rows_per_category(fingerprint):
    assert trained_on(fingerprint, eval_rows()) == {"exact": ["e-exact"], "question": ["e-question"],
                                                    "ngram": ["e-ngram"]}


def test_fingerprint_warning_is_one_sentence_with_counts(fingerprint):
    warning = warn_if_trained_on(fingerprint, eval_rows())
    assert warning.startswith("3 of 5 evaluated questions overlap the rows this run trained on (1 exact duplicates, "
                              "1 with the same question and other options, 1 sharing a 13-gram)")


def test_fingerprint_is_silent_on_rows_never_trained_on(fingerprint):
    assert warn_if_trained_on(fingerprint, [eval_rows()[3], eval_rows()[4]]) is None


def test_fingerprint_holds_hashes_not_text(fingerprint):
    assert fingerprint["rows"] == 5
    assert "carcinoid" not in json.dumps(fingerprint).lower()
    assert len(base64.b64decode(fingerprint["keys"])) == len(base64.b64decode(fingerprint["questions"])) == 5 * 6


def test_fingerprint_of_another_format_is_refused(fingerprint):
    with pytest.raises(ValueError, match="another medtune version"):
        trained_on({**fingerprint, "format": "something-else/9"}, eval_rows())


def test_packed_hashes_come_back_sorted_and_whole():
    from medtune.data.overlap import _hash48, _pack, _unpack

    hashes = [_hash48(str(i)) for i in range(1000)] + [_hash48("0")]
    assert _unpack(_pack(hashes)).tolist() == sorted(set(hashes))
    assert _unpack(_pack([])).tolist() == []


FIXTURES = Path(__file__).parent / "fixtures"


def test_cli_reads_task_equals_path_with_the_tasks_splits(capsys):
    pubmedqa = FIXTURES / "pubmedqa" / "with_split" / "ori_pqal.json"
    assert main(["data", "overlap", "--train", f"pubmedqa={pubmedqa}", "--eval", f"pubmedqa={pubmedqa}",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["task"], s["split"]) for s in data["sources"]["train"] + data["sources"]["eval"]] == [
        ("pubmedqa", "train"), ("pubmedqa", "test")]
    assert data["overlapping_eval_rows"] == 0  # the official train and test halves are disjoint PMIDs


def test_cli_mmlu_folder_is_every_subject_and_finds_the_shared_items(capsys):
    clinical = FIXTURES / "mmlu" / "test" / "clinical_knowledge_test.csv"
    assert main(["data", "overlap", "--train", str(clinical), "--eval", f"mmlu={FIXTURES / 'mmlu' / 'test'}",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["task"] for s in data["sources"]["eval"]] == [f"mmlu_{s}" for s in MMLU_MEDICAL]
    college = {k: v for k, v in data["exact"]["matches"].items() if k.startswith("mmlu_college_medicine:")}
    assert len(college) == 2 and all(ids[0].startswith("clinical_knowledge_test-") for ids in college.values())
