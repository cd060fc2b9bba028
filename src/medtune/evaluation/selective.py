"""Selective prediction: how accurate is the model on the questions it is most confident about?

Keep the k most confident questions (k = 1..n) and measure the risk (error rate) among them: the risk-coverage
curve (El-Yaniv & Wiener 2010; Geifman & El-Yaniv 2017). Its area, AURC, is the mean of the n risks,
AURC = (1/n) * sum over k = 1..n of risk(k), the standard discrete definition (lower is better; a model that
ranks every error below every correct answer reaches its minimum for its accuracy, and a constant confidence
gives AURC = its error rate). Confidence is the top option's probability, calibrated by the run's temperature
when it has one (temperature scaling can reorder questions: their top probabilities move by different amounts).
"""

from __future__ import annotations

import math

import numpy as np

COVERAGES = (0.5, 0.8, 0.9)  # accuracy_at_coverage's keys
CURVE_POINTS = 100  # metrics.json keeps at most this many points (plus none at 0); AURC uses all n


def risks(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """risk(k) for k = 1..n: the error rate among the k most confident questions ([n], float64).

    Equal confidences: the model gives no order among them, so no cut inside such a group is taken as the
    model's. Inside a group, risk(k) is its expected value when the group's questions are taken in a random
    order: the errors of all more confident questions plus (k - those kept before) times the group's error
    rate. Cuts between distinct confidence values are exact. Deterministic, and independent of question order."""
    confidence, wrong = np.asarray(confidence, dtype=float), 1.0 - np.asarray(correct, dtype=float)
    n = confidence.size
    order = np.argsort(-confidence, kind="stable")
    confidence, wrong = confidence[order], wrong[order]
    errors = np.empty(n)
    start = 0
    kept_errors = 0.0
    while start < n:
        end = start + 1
        while end < n and confidence[end] == confidence[start]:
            end += 1
        rate = wrong[start:end].mean()
        errors[start:end] = kept_errors + rate * np.arange(1, end - start + 1)
        kept_errors += wrong[start:end].sum()
        start = end
    return errors / np.arange(1, n + 1)


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float | None:
    """Area under the risk-coverage curve: the mean of risk(k) over k = 1..n (None with no questions)."""
    values = risks(confidence, correct)
    return float(values.mean()) if values.size else None


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float | None:
    """Accuracy on the ceil(coverage * n) most confident questions (ties as in `risks`)."""
    values = risks(confidence, correct)
    if not values.size:
        return None
    k = max(1, math.ceil(coverage * values.size - 1e-9))  # 1e-9: 0.8 * 10 is 8.000000000000002 in floats
    return float(1.0 - values[k - 1])


def selective_metrics(confidence: np.ndarray, correct: np.ndarray, kind: str) -> dict:
    """metrics.json's "selective": `kind` ("calibrated" or "raw") names the confidence used.

    The stored curve has at most CURVE_POINTS points, at k = ceil(j * n / 100) for j = 1..100 (every k when
    n <= 100); each point's threshold is the lowest confidence kept. AURC is computed on all n points."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    values, n = risks(confidence, correct), confidence.size
    ranked = np.sort(confidence)[::-1]
    ks = sorted({max(1, math.ceil(j * n / CURVE_POINTS - 1e-9)) for j in range(1, CURVE_POINTS + 1)}) if n else []
    curve = [{"coverage": k / n, "risk": float(values[k - 1]), "accuracy": float(1.0 - values[k - 1]),
              "threshold": float(ranked[k - 1])} for k in ks]
    return {"confidence": kind, "aurc": aurc(confidence, correct), "curve": curve,
            "accuracy_at_coverage": {str(c): accuracy_at_coverage(confidence, correct, c) for c in COVERAGES}}
