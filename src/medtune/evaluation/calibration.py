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
