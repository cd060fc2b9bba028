"""Training on several sources: the mixture's manifest and batches, weights, PubMedQA's abstract under max_seq_len,
and the overlap between the rows a run trains on and the rows it is scored on. The tiny random Qwen3, a few steps."""

import json
import sys
from collections import Counter

import pytest
import yaml

from conftest import original_row, write_jsonl
from medtune.cli import main
from medtune.config import DataSource, TrainConfig
from medtune.data import file_sha256, load_examples
from medtune.data.overlap import trained_on
from medtune.mixture import draw_counts, epoch_order
from medtune.train import train

trainer = sys.modules["medtune.train"]
DECISIONS = ("yes", "no", "maybe")


def pubmedqa_folder(folder, n: int, n_test: int, passage_words: int = 6):
    """An official-layout PubMedQA folder: ori_pqal.json keyed by PMID, and (when n_test) test_ground_truth.json
    naming the first `n_test` PMIDs, so split `train` is the other n - n_test; without it the file is split `all`."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i in range(n):
        passages = [" ".join(f"{part}{i}w{k}" for k in range(passage_words)) for part in ("background", "results")]
        entries[str(10_000_000 + i)] = {
            "QUESTION": f"Does treatment {i} improve outcome {i}?", "CONTEXTS": passages,
            "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Humans"], "reasoning_required_pred": "yes",
            "reasoning_free_pred": "yes", "final_decision": DECISIONS[i % 3], "LONG_ANSWER": f"It does {i}."}
    (folder / "ori_pqal.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    if n_test:
        truth = {pmid: entry["final_decision"] for pmid, entry in list(entries.items())[:n_test]}
        (folder / "test_ground_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    return folder / "ori_pqal.json"


@pytest.fixture
def medmcqa(tmp_path):
    return write_jsonl(tmp_path / "medmcqa.jsonl", [original_row(i, cop=i % 4) for i in range(24)])


@pytest.fixture
def pubmedqa(tmp_path):
    return pubmedqa_folder(tmp_path / "pubmedqa", n=16, n_test=8)


def _config(model, data, output, **changes) -> TrainConfig:
    values = dict(model=str(model), data=data, output=str(output), max_steps=4, batch_size=8, grad_accum=1,
                  dev_size=0, eval_every=0, save_every=0, learning_rate=5e-3, lora_dropout=0.0, device="cpu",
                  dtype="fp32")
    return TrainConfig(**(values | changes))


def _record_batches(monkeypatch) -> list[tuple[list[int], list[int]]]:
    """Each optimizer step's rows, with the source of every row (from the arguments step_batch is given)."""
    seen, real = [], trainer.step_batch

    def step_batch(step, n, global_batch, seed, source_of=None, weights=None):
        rows = real(step, n, global_batch, seed, source_of, weights)
        seen.append((rows, [source_of[i] for i in rows]))
        return rows

    monkeypatch.setattr(trainer, "step_batch", step_batch)
    return seen


# ------------------------------------------------------------------ a mixture of two layouts


def test_a_mixture_manifest_records_each_source_with_rows_hash_reader_and_share(tiny_qwen3, medmcqa, pubmedqa,
                                                                                tmp_path):
    data = [{"source": str(medmcqa), "weight": 1}, {"source": str(pubmedqa), "task": "pubmedqa", "weight": 1}]
    run = train(_config(tiny_qwen3, data, tmp_path / "run"), progress=False)
    sources = json.loads(run.manifest.read_text())["data"]["sources"]
    assert [(s["source"], s["layout"], s["rows_loaded"], s["trained_rows"], s["weight"], s["share"])
            for s in sources] == [(str(medmcqa), "medmcqa", 24, 24, 1.0, 0.5),
                                  (str(pubmedqa), "pubmedqa", 8, 8, 1.0, 0.5)]
    assert sources[0]["sha256"] == file_sha256(medmcqa) and sources[1]["sha256"] == file_sha256(pubmedqa)
    assert sources[1]["task"] == "pubmedqa" and sources[1]["split"] == "train"  # the 8 PMIDs outside the test set


def test_weighted_batches_draw_from_each_source_by_its_weight(tiny_qwen3, medmcqa, pubmedqa, tmp_path, monkeypatch):
    # 24 + 8 rows = one epoch of 32 = 4 steps of 8; weights 1:1 draw 16 rows from each source in that epoch, so
    # the 8 PubMedQA rows are each seen twice and 16 of the 24 MedMCQA rows once
    seen = _record_batches(monkeypatch)
    data = [{"source": str(medmcqa), "weight": 1}, {"source": str(pubmedqa), "task": "pubmedqa", "weight": 1}]
    train(_config(tiny_qwen3, data, tmp_path / "run"), progress=False)
    rows = [row for batch, _ in seen for row in batch]
    sources = Counter(source for _, batch_sources in seen for source in batch_sources)
    assert len(seen) == 4 and sources == {0: 16, 1: 16}
    pubmedqa_rows = Counter(row for row, source in zip(rows, [s for _, b in seen for s in b]) if source == 1)
    assert sorted(pubmedqa_rows.values()) == [2] * 8
    assert all(set(batch_sources) == {0, 1} for _, batch_sources in seen[:1])  # mixed within a batch


def test_an_unweighted_mixture_uses_every_row_once_per_epoch(tiny_qwen3, medmcqa, pubmedqa, tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    train(_config(tiny_qwen3, [str(medmcqa), f"pubmedqa={pubmedqa}"], tmp_path / "run"), progress=False)
    assert sorted(row for batch, _ in seen for row in batch) == list(range(32))


def test_draw_counts_add_up_and_follow_the_weights():
    assert draw_counts(32, (1.0, 1.0)) == [16, 16]
    assert draw_counts(10, (2.0, 1.0)) == [7, 3]  # 6.67 and 3.33: the larger remainder gets the leftover row
    assert sum(draw_counts(1001, (0.3, 0.5, 0.2))) == 1001


def test_a_weighted_epoch_is_reproducible_from_the_seed_and_differs_between_epochs():
    source_of = [0] * 20 + [1] * 4
    assert epoch_order(3, source_of, (1.0, 1.0), seed=7) == epoch_order(3, source_of, (1.0, 1.0), seed=7)
    assert epoch_order(0, source_of, (1.0, 1.0), seed=7) != epoch_order(1, source_of, (1.0, 1.0), seed=7)


def test_several_data_flags_train_on_a_mixture_and_resume_restores_it(tiny_qwen3, medmcqa, pubmedqa, tmp_path,
                                                                     monkeypatch):
    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_qwen3), "--data", str(medmcqa), "--data", f"pubmedqa={pubmedqa}",
            "--output", str(run), "--max-steps", "4", "--quiet", "--device", "cpu", "--dtype", "fp32",
            "dev_size=0", "batch_size=8", "grad_accum=1", "save_every=2", "eval_every=0"]
    real = trainer.learning_rate

    def interrupt_at_step_3(step, *rest):
        if step == 2:
            raise KeyboardInterrupt
        return real(step, *rest)

    monkeypatch.setattr(trainer, "learning_rate", interrupt_at_step_3)
    assert main(args) == 130
    monkeypatch.setattr(trainer, "learning_rate", real)
    seen = _record_batches(monkeypatch)
    assert main(["train", "--output", str(run), "--resume", "--quiet"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved == [{"source": str(medmcqa)}, {"source": str(pubmedqa), "task": "pubmedqa"}]
    sources = json.loads((run / "manifest.json").read_text())["data"]["sources"]
    assert [s["source"] for s in sources] == [str(medmcqa), str(pubmedqa)]
    assert len(seen) == 2 and {s for _, batch in seen for s in batch} <= {0, 1}


def test_a_weight_that_cannot_work_is_refused_before_training(tiny_qwen3, medmcqa, tmp_path, capsys):
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"data": [{"source": str(medmcqa), "weight": -1}]}))
    code = main(["train", "--model", str(tiny_qwen3), "--config", str(config), "--output", str(tmp_path / "run")])
    assert code == 2
    assert "data[0].weight=-1.0 cannot work: a weight is a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ PubMedQA's abstract under max_seq_len


def test_pubmedqa_abstracts_are_cut_to_fit_and_counted(tiny_qwen3, tmp_path, capsys):
    source = pubmedqa_folder(tmp_path / "long", n=16, n_test=0, passage_words=120)  # ~500 tokens of abstract
    run = train(_config(tiny_qwen3, f"pubmedqa={source}", tmp_path / "run", max_steps=1, max_seq_len=256,
                        train_split="all"), progress=False)
    report = json.loads(run.report.read_text())["data"]
    assert report["train_rows"] == 16 and report["context_truncated"]["rows"] == 16
    assert report["context_truncated"]["tokens"] > 16 * 200
    assert "16 rows had their context cut to fit max_seq_len 256" in capsys.readouterr().out


# ------------------------------------------------------------------ overlap with the evaluation data


@pytest.fixture
def eval_overlapping(tmp_path):
    """Rows 1-3 of the training file copied exactly, row 4's question with other options, and one new row."""
    rows = [original_row(i, cop=i % 4) for i in (1, 2, 3)]
    rows += [original_row(4, opa="other"), original_row(500, cop=1)]
    return write_jsonl(tmp_path / "eval.jsonl", [dict(row, id=f"eval-{row['id']}") for row in rows])


def test_overlap_with_eval_data_is_recorded_in_the_manifest(tiny_qwen3, medmcqa, eval_overlapping, tmp_path):
    run = train(_config(tiny_qwen3, str(medmcqa), tmp_path / "run", max_steps=1, eval_data=str(eval_overlapping)),
                progress=False)
    data = json.loads(run.manifest.read_text())["data"]
    assert data["overlap"]["overlapping_train_ids"] == ["q1", "q2", "q3", "q4"]
    assert (data["overlap"]["exact"]["eval_rows"], data["overlap"]["question"]["eval_rows"]) == (3, 1)
    assert data["train_rows"] == 24 and data["excluded_overlap"] == 0


def test_exclude_overlap_drops_exactly_the_overlapping_rows(tiny_qwen3, medmcqa, eval_overlapping, tmp_path):
    run = train(_config(tiny_qwen3, str(medmcqa), tmp_path / "run", max_steps=1, eval_data=str(eval_overlapping),
                        exclude_overlap=True), progress=False)
    report = json.loads(run.report.read_text())["data"]
    assert report["excluded_overlap"] == 4 and report["train_rows"] == 20
    fingerprint = json.loads(run.fingerprint.read_text())  # the rows trained on: all but q1..q4
    assert fingerprint["rows"] == 20
    found = trained_on(fingerprint, load_examples(str(medmcqa))[0])
    assert set(found["exact"]) == {f"q{i}" for i in (0, *range(5, 24))}


def test_eval_of_a_run_warns_when_the_rows_overlap_what_it_trained_on(tiny_run, tmp_path, capsys):
    trained = write_jsonl(tmp_path / "again.jsonl", [original_row(i, cop=i % 4) for i in range(6)])
    assert main(["eval", str(tiny_run), "--data", str(trained), "--output", str(tmp_path / "e1"), "--device", "cpu",
                 "--dtype", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "medtune eval: warning: 6 of 6 evaluated questions overlap the rows this run trained on" in err


def test_eval_of_a_run_is_silent_on_rows_it_never_saw(tiny_run, tmp_path, capsys):
    fresh = write_jsonl(tmp_path / "fresh.jsonl", [original_row(100 + i, cop=i % 4) for i in range(6)])
    assert main(["eval", str(tiny_run), "--data", str(fresh), "--output", str(tmp_path / "e2"), "--device", "cpu",
                 "--dtype", "fp32"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_single_source_run_records_one_source_as_before(tiny_qwen3, medmcqa, tmp_path):
    run = train(_config(tiny_qwen3, str(medmcqa), tmp_path / "run", max_steps=1), progress=False)
    data = json.loads(run.manifest.read_text())["data"]
    assert data["train"]["source"] == str(medmcqa) and data["train"]["sha256"] == file_sha256(medmcqa)
    assert [(s["source"], s["share"]) for s in data["sources"]] == [(str(medmcqa), 1.0)]
    assert TrainConfig(data=str(medmcqa)).sources() == (DataSource(str(medmcqa)),)


def test_columns_name_a_question_banks_own_columns_for_one_data_file(tiny_qwen3, tmp_path):
    bank = tmp_path / "bank.csv"
    bank.write_text("stem,o1,o2,o3,key\n" + "".join(f"Question {i}?,yes {i},no {i},maybe {i},{'ABC'[i % 3]}\n"
                                                    for i in range(8)))
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_qwen3), "--data", str(bank), "--columns",
                 "question=stem,options=o1|o2|o3,answer=key", "--output", str(run), "--max-steps", "1", "--quiet",
                 "--device", "cpu", "--dtype", "fp32", "dev_size=0", "batch_size=4", "grad_accum=1"]) == 0
    (source,) = json.loads((run / "manifest.json").read_text())["data"]["sources"]
    assert (source["layout"], source["rows_loaded"]) == ("columns", 8)


def test_columns_with_several_data_files_are_refused(tmp_path, capsys):
    code = main(["train", "--data", "a.csv", "--data", "b.csv", "--columns", "question=q,options=a|b",
                 "--output", str(tmp_path / "run")])
    assert code == 2 and "--columns maps the columns of one --data file" in capsys.readouterr().err
