"""The report's figures, drawn with matplotlib's Agg renderer (no display, no fonts or files fetched).

Each function takes the numbers as medtune wrote them and returns a `Plot`: a PNG and the sentence that titles it.
A reader must understand a figure without the code, so every figure has a title, axis labels with units, and the
number of questions behind every accuracy. Training, calibration and comparison figures are in their own modules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: a report is drawn on machines without a display

from matplotlib.figure import Figure  # noqa: E402  (the object API: no pyplot global state between figures)

WIDTH = 8.0  # inches; at DPI this fills the page's 880-pixel column
DPI = 110
MODEL_COLOUR, BASELINE_COLOUR, GOLD_COLOUR, WARN_COLOUR = "#2b6cb0", "#a0aec0", "#dd8452", "#c53030"


@dataclass(frozen=True)
class Plot:
    kind: str  # what the figure shows (its `data-figure` in the page), e.g. "subjects"
    title: str  # also the image's alt text
    png: bytes


def new_figure(height: float, columns: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def render(kind: str, title: str, figure: Figure) -> Plot:
    figure.suptitle(title, fontsize=12, fontweight="bold")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return Plot(kind, title, buffer.getvalue())


def legend_below(figure: Figure, columns: int = 3, axis=None) -> None:
    """The legend under the plot, never over the data it explains (`axis`: the one whose entries to show, when
    several panels repeat them)."""
    entries = axis.get_legend_handles_labels() if axis is not None else ()
    figure.legend(*entries, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)


def fmt(value, digits: int = 3) -> str:
    """A number in a title; a missing one (a field written as null) as a dash, never a crash."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


def no_data(axis, message: str) -> None:
    """An axis that says why it is empty, instead of an empty frame a reader could misread."""
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, color="#4a5568", wrap=True)
    axis.set_xticks([])
    axis.set_yticks([])


def wilson(accuracy: float, n: int) -> tuple[float, float]:
    from medtune.evaluate import wilson_interval  # the interval metrics.json's ci95 uses

    return wilson_interval(round(accuracy * n), n)


# ---------------------------------------------------------------- one evaluation


def accuracy_plot(metrics: dict) -> Plot:
    """The model's accuracy with its 95% interval beside the two baselines it must beat."""
    n, baselines = metrics["n"], metrics.get("baselines", {})
    low, high = metrics.get("ci95") or wilson(metrics["accuracy"], n)
    rows = [(f"always-{baselines.get('majority_letter', '?')} baseline", baselines.get("majority"), None),
            ("random-guess baseline", baselines.get("random"), None),
            ("model", metrics["accuracy"], (low, high))]
    rows = [row for row in rows if row[1] is not None]
    figure, (axis,) = new_figure(2.0)
    for y, (_, value, ci) in enumerate(rows):
        colour = MODEL_COLOUR if ci else BASELINE_COLOUR
        error = [[value - ci[0]], [ci[1] - value]] if ci else None
        axis.barh(y, value, color=colour, xerr=error, capsize=5, height=0.6)
        text = f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"
        axis.text((ci[1] if ci else value) + 0.01, y, text, va="center", fontsize=9)
    axis.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    axis.set_xlim(0, 1)
    axis.set_xlabel("accuracy (share of questions answered correctly; whiskers: 95% Wilson interval)")
    return render("accuracy", f"Accuracy against the baselines (n={n} questions)", figure)


def sorted_subjects(metrics: dict) -> list[tuple[str, dict]]:
    """(subject, {n, accuracy}) best first; ties by name, so the order never depends on the file's."""
    return sorted((metrics.get("per_subject") or {}).items(), key=lambda item: (-item[1]["accuracy"], item[0]))


def subjects_plot(metrics: dict) -> Plot:
    """Per-subject accuracy, best first, each with its 95% interval and its number of questions."""
    subjects = sorted_subjects(metrics)
    figure, (axis,) = new_figure(1.3 + 0.32 * max(len(subjects), 1))
    if not subjects:
        no_data(axis, "the questions carry no subject")
    for y, (_, row) in enumerate(reversed(subjects)):
        low, high = wilson(row["accuracy"], row["n"])
        axis.errorbar(row["accuracy"], y, xerr=[[row["accuracy"] - low], [high - row["accuracy"]]], fmt="o",
                      color=MODEL_COLOUR, capsize=3)
    if subjects:
        axis.set_yticks(range(len(subjects)), [f"{name} (n={row['n']})" for name, row in reversed(subjects)])
        axis.axvline(metrics["accuracy"], color=MODEL_COLOUR, linestyle=":", label=f"all subjects "
                     f"{metrics['accuracy']:.3f}")
        random = metrics.get("baselines", {}).get("random")
        if random is not None:
            axis.axvline(random, color=BASELINE_COLOUR, linestyle="--", label=f"random guess {random:.3f}")
        legend_below(figure)
        axis.set_xlim(-0.02, 1.02)  # a subject at 0 or 1 keeps its whole marker
        axis.set_ylim(-0.6, len(subjects) - 0.4)
        axis.set_xlabel("accuracy (share correct; whiskers: 95% Wilson interval)")
    return render("subjects", f"Accuracy per subject, best first (n={metrics['n']} questions)", figure)


def confusion_plot(metrics: dict) -> Plot:
    """Gold letter (rows) against the letter the model gave (columns), as counts of questions."""
    confusion = metrics.get("confusion") or {}
    gold = list(confusion)
    given = sorted({key for row in confusion.values() for key in row if len(key) == 1})
    given += sorted({key for row in confusion.values() for key in row if len(key) != 1})  # "tie", "unparseable"
    figure, (axis,) = new_figure(1.6 + 0.45 * max(len(gold), 1))
    if not gold:
        no_data(axis, "no confusion matrix in metrics.json")
        return render("confusion", "Confusion matrix", figure)
    counts = [[confusion[g].get(p, 0) for p in given] for g in gold]
    image = axis.imshow(counts, cmap="Blues", aspect="auto")
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    axis.set_xticks(range(len(given)), given)
    axis.set_yticks(range(len(gold)), gold)
    axis.set_xlabel("answer the model gave (letter)")
    axis.set_ylabel("correct answer (letter)")
    figure.colorbar(image, ax=axis, label="questions")
    return render("confusion", f"Confusion matrix: correct answer against answer given (n={metrics['n']})", figure)


def letters_plot(metrics: dict) -> Plot:
    """How often each letter was given against how often it is right: a collapse onto one letter shows here."""
    gold, given = metrics.get("gold_distribution") or {}, metrics.get("predicted_distribution") or {}
    letters = sorted(set(gold) | set(given), key=lambda key: (len(key) != 1, key))
    figure, (axis,) = new_figure(2.6)
    positions = range(len(letters))
    axis.bar([x - 0.2 for x in positions], [given.get(k, 0) for k in letters], 0.4, color=MODEL_COLOUR,
             label="answers the model gave")
    axis.bar([x + 0.2 for x in positions], [gold.get(k, 0) for k in letters], 0.4, color=GOLD_COLOUR,
             label="correct answers (gold)")
    axis.set_xticks(list(positions), letters)
    axis.set_xlabel("answer letter")
    axis.set_ylabel("questions")
    axis.set_ylim(0, 1.1 * max([*given.values(), *gold.values(), 1]))
    legend_below(figure, 2)
    return render("letters", f"Letters given against correct letters (n={metrics['n']} questions)", figure)


def robustness_plot(metrics: dict) -> Plot:
    """Accuracy when the options are rotated k places: a model that reads the options scores alike at every k."""
    robustness = metrics["robustness"]
    per_shift = robustness["accuracy_per_shift"]
    n = robustness.get("n", metrics["n"])
    figure, (axis,) = new_figure(2.6)
    labels = [f"{k} (as given)" if k == 0 else str(k) for k in range(len(per_shift))]
    intervals = [wilson(value, n) for value in per_shift]
    axis.bar(labels, per_shift, color=MODEL_COLOUR, yerr=[[v - lo for v, (lo, _) in zip(per_shift, intervals)],
                                                          [hi - v for v, (_, hi) in zip(per_shift, intervals)]],
             capsize=4)
    averaged = robustness.get("permutation_averaged_accuracy")
    if averaged is not None:
        axis.axhline(averaged, color=GOLD_COLOUR, linestyle="--", label=f"averaged over shifts {averaged:.3f}")
        legend_below(figure)
    axis.set_ylim(0, 1)
    axis.set_xlabel("options rotated by k places (cyclic shift)")
    axis.set_ylabel("accuracy (share correct)")
    return render("robustness", f"Accuracy per option order (n={n} questions per shift; consistency "
                                f"{fmt(robustness.get('consistency'))})", figure)


def evaluation_plots(metrics: dict) -> list[Plot]:
    """Every figure an evaluation's metrics.json has the numbers for (calibration and selective included)."""
    from medtune.report.calibration import reliability_plot, risk_coverage_plot

    plots = [accuracy_plot(metrics), subjects_plot(metrics), confusion_plot(metrics), letters_plot(metrics)]
    if isinstance(metrics.get("calibration"), dict) and metrics["calibration"].get("raw"):
        plots.append(reliability_plot(metrics))
    if isinstance(metrics.get("selective"), dict) and metrics["selective"].get("curve"):
        plots.append(risk_coverage_plot(metrics))
    if isinstance(metrics.get("robustness"), dict) and metrics["robustness"].get("accuracy_per_shift"):
        plots.append(robustness_plot(metrics))
    return plots
