"""When the model says 90%, is it right 90% of the time? Temperature scaling (Guo et al. 2017).

One scalar T divides the option log-probabilities before the softmax: T > 1 softens over-confident
probabilities, T < 1 sharpens timid ones, and the order of the options (so the chosen answer, and any tie)
never changes. T is fitted by minimising the negative log-likelihood of the gold options on questions that are
never reported (a calibration slice held out from the training rows, or `medtune calibrate --data`), and is
stored in RUN_DIR/calibration.json; evaluation, `ask`, the Python API and the server read it from there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

CALIBRATION_FILE = "calibration.json"
_LOG_BETA_RANGE = (-6.0, 6.0)  # beta = 1/T between 0.0025 and 403: far beyond any useful temperature


def scale_logprobs(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Option log-probabilities [n, 5] (-inf past an example's options) after dividing by `temperature`,
    renormalized over each example's options. Dividing log-probabilities equals dividing the logits: the
    per-row constant that log-softmax subtracted cancels in the new softmax."""
    return torch.log_softmax(logprobs.double() / temperature, dim=-1).to(logprobs.dtype)


def nll(logprobs: torch.Tensor, answers: list[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the gold options at `temperature`."""
    scaled = scale_logprobs(logprobs.double(), temperature)
    return -scaled[torch.arange(len(answers)), torch.tensor(answers)].mean().item()


def fit_temperature(logprobs: torch.Tensor, answers: list[int]) -> float:
    """The T > 0 that minimises the gold options' mean NLL over `logprobs` [n, 5].

    Why search beta = 1/T: the NLL is convex in beta (a log-sum-exp of linear functions minus a linear one), so
    it is unimodal in log(beta), and a golden-section search on log(beta) finds the minimum without a learning
    rate or a starting point to tune. 200 steps shrink the interval to below 1e-40 of its width."""
    if not answers:
        raise ValueError("temperature scaling needs at least one labelled question")
    logprobs = logprobs.double()

    def loss(log_beta: float) -> float:
        return nll(logprobs, answers, 1.0 / math.exp(log_beta))

    low, high = _LOG_BETA_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(200):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return 1.0 / math.exp((low + high) / 2)


def read_temperature(run_dir: str | Path) -> dict | None:
    """The run's calibration.json as a dict (its "temperature" is T), or None when the run has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        temperature = float(record["temperature"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a calibration file with a numeric 'temperature' ({error}); delete it or "
                         "fit it again with `medtune calibrate`") from None
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{path}: field 'temperature' is {temperature}; it must be a positive number")
    return record


def write_calibration(run_dir: str | Path, logprobs: torch.Tensor, answers: list[int], *, source: str,
                      sha256: str | None, ids: list[str], fitted_on: str) -> dict:
    """Fit T on `logprobs` [n, 5] against the gold `answers` and write RUN_DIR/calibration.json; returns it.

    `source`, `sha256` and `ids` say which questions T was fitted on, so nobody reports on them later;
    `fitted_on` is "calibration slice" (training) or "medtune calibrate"."""
    from medtune.rundir import write_json

    temperature = fit_temperature(logprobs, answers)
    record = {"temperature": temperature, "n": len(answers), "nll_before": nll(logprobs, answers),
              "nll_after": nll(logprobs, answers, temperature),
              "data": {"source": source, "sha256": sha256, "ids": list(ids)}, "fitted_on": fitted_on,
              "method": "temperature scaling, NLL minimised (golden-section search on 1/T)"}
    write_json(Path(run_dir) / CALIBRATION_FILE, record)
    return record


# ---------------------------------------------------------------- how well the probabilities are calibrated

ECE_BINS = 15  # Guo et al. 2017's equal-width bins over (0, 1]
EQUAL_MASS_BINS = 10


def top_confidence(logprobs: torch.Tensor) -> np.ndarray:
    """The top option's probability per question (float64 [n]): the confidence ECE and selective prediction use."""
    return logprobs.double().exp().max(dim=-1).values.numpy()


def _bin(confidence: np.ndarray, correct: np.ndarray, members: np.ndarray, low: float | None,
         high: float | None) -> dict:
    """One bin of a reliability diagram: its edges, count, mean confidence and accuracy (null when empty)."""
    count = int(members.size)
    return {"low": low, "high": high, "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None}


def _ece(bins: list[dict], n: int) -> float:
    """Sum over bins of |bin|/n * |accuracy - mean confidence| (Guo et al. 2017, eq. 3); empty bins add 0."""
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def equal_width_bins(confidence: np.ndarray, correct: np.ndarray, k: int = ECE_BINS) -> list[dict]:
    """`k` bins (i/k, (i+1)/k]: a confidence on an edge belongs to the bin it closes, as (0, 1] says.
    The reported low/high are the same floats the membership test used."""
    edges = np.linspace(0.0, 1.0, k + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, k - 1)  # edges[i] < c <= edges[i+1]
    return [_bin(confidence, correct, np.flatnonzero(index == i), float(edges[i]), float(edges[i + 1]))
            for i in range(k)]


def equal_mass_bins(confidence: np.ndarray, correct: np.ndarray, k: int = EQUAL_MASS_BINS) -> list[dict]:
    """`k` bins holding (nearly) equal numbers of questions, by confidence ascending.

    Uneven splits: n questions make bins of floor(n/k) or ceil(n/k), the larger ones first (numpy.array_split);
    with n < k the last k - n bins are empty (count 0; low, high, confidence and accuracy null). Ties: questions
    are sorted by confidence with equal confidences kept in question order (a stable sort), so equal confidences
    may fall on both sides of a bin edge; the split is by count only, reproducible from predictions.jsonl.
    low/high are the smallest and largest confidence in the bin."""
    order = np.argsort(confidence, kind="stable")
    bins = []
    for members in np.array_split(order, k):
        low = float(confidence[members].min()) if members.size else None
        high = float(confidence[members].max()) if members.size else None
        bins.append(_bin(confidence, correct, members, low, high))
    return bins


def calibration_summary(logprobs: torch.Tensor, answers: list[int], predicted: list[int | None],
                        subjects: list[str | None] | None = None) -> dict:
    """ECE (15 equal-width bins; and 10 equal-mass bins), multi-class Brier, mean NLL and the bins, overall and
    per subject, for option log-probabilities `logprobs` [n, 5] (-inf past a question's options).

    - confidence: the top option's probability; "correct": `predicted[i] == answers[i]`, where `predicted` is
      the raw argmax (`evaluate.predicted_options`): a tied question (None) counts as wrong, as accuracy does;
    - Brier: sum over the question's options of (p - onehot)^2, averaged over questions (lm-evaluation-harness's
      multi-class definition: 0 is perfect, 2 the worst);
    - NLL: mean -log p(gold option), in nats.
    Questions without a subject (None) count overall and in no subject."""
    n = len(answers)
    logprobs = logprobs.double()
    confidence = top_confidence(logprobs) if n else np.zeros(0)
    correct = np.array([p is not None and p == a for p, a in zip(predicted, answers)], dtype=float)
    gold = torch.tensor(answers, dtype=torch.long)
    onehot = torch.zeros_like(logprobs)
    onehot[torch.arange(n), gold] = 1.0
    brier = ((logprobs.exp() - onehot) ** 2).sum(dim=-1).numpy()  # -inf columns: (0 - 0)^2 adds nothing
    gold_nll = (-logprobs[torch.arange(n), gold]).numpy()
    bins, mass = equal_width_bins(confidence, correct), equal_mass_bins(confidence, correct)
    summary = {"ece": _ece(bins, n) if n else None, "ece_equal_mass": _ece(mass, n) if n else None,
               "brier": float(brier.mean()) if n else None, "nll": float(gold_nll.mean()) if n else None, "n": n,
               "bins": bins, "bins_equal_mass": mass, "per_subject": {}}
    for subject in sorted({s for s in subjects or [] if s is not None}):
        rows = np.array([s == subject for s in subjects])
        summary["per_subject"][subject] = {
            "n": int(rows.sum()), "ece": _ece(equal_width_bins(confidence[rows], correct[rows]), int(rows.sum())),
            "brier": float(brier[rows].mean()), "nll": float(gold_nll[rows].mean())}
    return summary


def calibration_metrics(logprobs: torch.Tensor, answers: list[int], predicted: list[int | None],
                        subjects: list[str | None] | None = None, temperature: float | None = None,
                        temperature_file: str | None = None) -> dict:
    """metrics.json's "calibration": the raw probabilities' summary and, with a temperature, the calibrated
    ones' (the same questions, the same `predicted`: scaling by T never changes the argmax)."""
    calibrated = (calibration_summary(scale_logprobs(logprobs.double(), temperature), answers, predicted, subjects)
                  if temperature is not None else None)
    return {"raw": calibration_summary(logprobs, answers, predicted, subjects), "calibrated": calibrated,
            "temperature": temperature, "temperature_file": temperature_file}


def calibration_line(metrics: dict) -> str:
    """One printed line: ECE, Brier and NLL raw (and calibrated with T), and the AURC."""
    calibration, selective = metrics["calibration"], metrics.get("selective") or {}

    if calibration["raw"]["n"] == 0:
        return "calibration: no questions"

    def figures(cal: dict) -> str:
        return f"ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}, NLL {cal['nll']:.3f}"

    line = f"calibration: {figures(calibration['raw'])} (raw)"
    if calibration["calibrated"] is not None:
        line += f"; {figures(calibration['calibrated'])} (temperature T={calibration['temperature']:.3f})"
    if selective.get("aurc") is not None:
        line += f"; AURC {selective['aurc']:.3f} ({selective['confidence']} confidence)"
    return line


# ---------------------------------------------------------------- medtune calibrate


def calibrate_run(run_dir: str | Path, source: str, *, task: str | None = None, split: str | None = None,
                  limit: int | None = None, columns: str | None = None, skip_invalid: bool = False,
                  answer_base: int | None = None, batch_size: int = 16, overwrite: bool = False,
                  device: str = "auto", dtype: str = "auto", log=print) -> dict:
    """`medtune calibrate`: fit the run's T on labelled questions from `source` and write RUN_DIR/calibration.json.

    Refused when the questions overlap the run's evaluation data (`evaluation_overlap`): a T fitted on the
    questions it is later reported on would flatter the calibration. The run is scored raw (any existing
    calibration.json ignored), exactly as `medtune eval` scores it. Returns the calibration record."""
    import sys

    from medtune.answer import Answerer
    from medtune.data import is_local, load_examples
    from medtune.evaluate import choice_logprobs, predicted_options
    from medtune.rundir import RunDir

    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run folder {run.root} does not exist; give the --output folder of a "
                                "`medtune train` run")
    run.require_run()
    target = run.root / CALIBRATION_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already holds a temperature; pass --overwrite to fit it again")
    hub_without_task = not task and not is_local(source)  # as `medtune eval` reads a Hub id
    examples, report = load_examples(source, task=task, columns=columns,
                                     split=split or ("validation" if hub_without_task else None),
                                     answer_base=answer_base, skip_invalid=skip_invalid, limit=limit)
    if not examples:
        raise ValueError(f"{source} has no labelled questions to calibrate on; check the file and --split")
    refusal, notes = evaluation_overlap(run.root, examples, report.sha256)
    if refusal:
        raise ValueError(refusal)
    for note in notes + [_trained_on_warning(run.fingerprint, examples)]:
        if note:
            print(f"medtune calibrate: warning: {note}", file=sys.stderr)
    answerer = Answerer.from_run(run.root, device, dtype, use_calibration=False)
    logprobs = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, examples, batch_size)
    answers, predicted = [e.answer for e in examples], predicted_options(logprobs, examples)
    record = write_calibration(run.root, logprobs, answers, source=report.source, sha256=report.sha256,
                               ids=[e.id for e in examples], fitted_on="medtune calibrate")
    before = calibration_summary(logprobs, answers, predicted)["ece"]
    after = calibration_summary(scale_logprobs(logprobs.double(), record["temperature"]), answers, predicted)["ece"]
    note = temperature_note(record["temperature"])
    if note:
        print(f"medtune calibrate: warning: {note}", file=sys.stderr)
    log(f"temperature T = {record['temperature']:.4f}, fitted on {record['n']} questions of {report.source}: "
        f"NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}, ECE {before:.4f} -> {after:.4f} (15 bins, on "
        f"these calibration questions; the chosen answers do not change) -> {target}")
    return record


def temperature_note(temperature: float) -> str | None:
    """A sentence when T sits at the top of the search range: the NLL still fell there, so the best fit is
    uniform probabilities. Seen on SmolLM2-135M collapsed onto one letter (T = 403). (The bottom of the range
    is never reached in practice: sharpening a model that is always right flattens the NLL at 0 first.)"""
    if temperature >= 0.99 / math.exp(_LOG_BETA_RANGE[0]):
        return (f"T = {temperature:.0f} is the largest the search allows: on these questions the model's "
                "probabilities carry almost no information about the answer, so calibrated they are nearly uniform")
    return None


def evaluation_overlap(run_root: Path, examples: list, sha256: str | None) -> tuple[str | None, list[str]]:
    """(a refusal sentence or None, notes) for calibration questions against the run's evaluation data:
    the rows of its `eval_data` (config.yaml), read whole as training read them, matched by id or by question +
    options (`MCQExample.key()`); and the ids of any predictions.jsonl under RUN_DIR/eval/. Where the eval data
    cannot be read any more, the file hash recorded in the manifest is compared instead, and a note says so."""
    eval_ids, eval_keys, notes, where = set(), set(), [], []
    eval_rows, note = _run_eval_rows(run_root)
    if note:
        notes.append(note)
        recorded = json.loads((run_root / "manifest.json").read_text(encoding="utf-8"))
        recorded_sha = ((recorded.get("data") or {}).get("eval") or {}).get("sha256")
        if sha256 and recorded_sha == sha256:
            return (f"the calibration data is the run's evaluation file (sha256 {sha256[:12]}...); fit T on other "
                    "labelled questions, e.g. training-split rows the run did not train on"), notes
    if eval_rows:
        eval_ids |= {e.id for e in eval_rows}
        eval_keys |= {e.key() for e in eval_rows}
        where.append("its --eval-data")
    for path in sorted((run_root / "eval").rglob("predictions.jsonl")) if (run_root / "eval").is_dir() else []:
        with open(path, encoding="utf-8") as handle:
            eval_ids |= {json.loads(line)["id"] for line in handle if line.strip()}
        where.append(str(path.relative_to(run_root)))
    clash = [e.id for e in examples if e.id in eval_ids or e.key() in eval_keys]
    if not clash:
        return None, notes
    shown = ", ".join(clash[:5]) + (" ..." if len(clash) > 5 else "")
    return (f"{len(clash)} of the {len(examples)} calibration questions ({shown}) are also the run's evaluation "
            f"questions ({', '.join(where)}; matched by id or by question and options): a temperature fitted on "
            "them would be reported on the questions it was fitted to; calibrate on other labelled questions, e.g. "
            "training-split rows the run did not train on"), notes


def _run_eval_rows(run_root: Path) -> tuple[list, str | None]:
    """(the rows of the run's eval_data, None), or ([], a note) when it has none or they cannot be read."""
    from medtune.config import load_config, parse_source
    from medtune.data import DataError, is_local
    from medtune.mixture import load_source

    config_path = run_root / "config.yaml"
    if not config_path.exists():
        return [], None
    config = load_config(base=config_path)
    if not config.eval_data:
        return [], None
    entry = parse_source(config.eval_data)
    split = None if is_local(entry.source) or entry.task else config.eval_split  # as training read it
    try:
        rows, _ = load_source(entry, config, split, None)  # all of it: a later eval may score more than eval_limit
    except (DataError, OSError, ValueError) as error:
        return [], (f"the run's --eval-data {config.eval_data} cannot be read now ({' '.join(str(error).split())}); "
                    "overlap was checked against its recorded sha256 and the run's eval/ predictions only")
    return rows, None


def _trained_on_warning(fingerprint: Path, examples: list) -> str | None:
    """A sentence when calibration questions are rows the run trained on: the model is more confident on rows
    it has seen, so a T fitted on them suits held-out questions less (a warning, not a refusal: nothing is
    reported on them)."""
    if not fingerprint.exists():
        return None
    from medtune.data.overlap import trained_on

    found = sum(map(len, trained_on(json.loads(fingerprint.read_text(encoding="utf-8")), examples).values()))
    return (f"{found} of {len(examples)} calibration questions overlap the rows this run trained on; the model "
            "is more confident on rows it has seen, so T fitted on them suits held-out questions less"
            if found else None)
