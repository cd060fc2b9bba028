"""Figures of how far the model's probabilities can be trusted: the reliability diagram before and after
temperature scaling, and the risk-coverage curve of answering only the confident questions."""

from __future__ import annotations

from medtune.report.figures import (
    BASELINE_COLOUR,
    GOLD_COLOUR,
    MODEL_COLOUR,
    Plot,
    fmt,
    legend_below,
    new_figure,
    no_data,
    render,
)


def reliability_plot(metrics: dict) -> Plot:
    """One panel per set of probabilities (raw; calibrated when a temperature was fitted): the accuracy of the
    questions in each confidence bin against the bin's mean confidence. On the diagonal, 70% confident means 70%
    right; below it the model is overconfident."""
    calibration = metrics["calibration"]
    panels = [("before temperature scaling (raw)", calibration["raw"])]
    if calibration.get("calibrated"):
        panels.append((f"after temperature scaling (T = {fmt(calibration.get('temperature'), 2)})",
                       calibration["calibrated"]))
    figure, axes = new_figure(3.6, columns=2)
    for axis, (label, values) in zip(axes, panels):
        _reliability_panel(axis, label, values)
    legend_below(figure, 3, axes[0])
    if len(panels) == 1:
        no_data(axes[1], "after temperature scaling: not measured\n(no temperature was applied to this evaluation)")
    return render("reliability", f"Reliability diagram (n={calibration['raw'].get('n', metrics['n'])} questions; "
                                 "15 equal-width confidence bins)", figure)


def _reliability_panel(axis, label: str, values: dict) -> None:
    bins = [b for b in values.get("bins", []) if b.get("count") and b.get("accuracy") is not None]
    axis.plot([0, 1], [0, 1], color=BASELINE_COLOUR, linestyle="--", label="perfect calibration")
    axis.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins],
             width=[b["high"] - b["low"] for b in bins], color=MODEL_COLOUR, edgecolor="white", alpha=0.85,
             label="accuracy in bin")
    axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color=GOLD_COLOUR, markersize=4,
              label="mean confidence in bin")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    scores = f"ECE {fmt(values.get('ece'))}, Brier {fmt(values.get('brier'))}, NLL {fmt(values.get('nll'))}"
    axis.set_title(f"{label}\n{scores}", fontsize=9)
    axis.set_xlabel("confidence (probability of the chosen letter)")
    axis.set_ylabel("accuracy (share correct)")


def risk_coverage_plot(metrics: dict) -> Plot:
    """Answer only the questions the model is most confident about: the share answered (coverage) against the
    share of those answered wrongly (risk). The area under the curve (AURC) is the lower the better."""
    selective = metrics["selective"]
    curve = sorted(selective["curve"], key=lambda point: point["coverage"])
    figure, (axis,) = new_figure(3.6)
    axis.plot([p["coverage"] for p in curve], [p["risk"] for p in curve], color=MODEL_COLOUR,
              label="answering the most confident questions first")
    axis.axhline(1 - metrics["accuracy"], color=BASELINE_COLOUR, linestyle="--",
                 label=f"risk when answering every question ({1 - metrics['accuracy']:.3f})")
    marks = sorted((float(coverage), 1 - accuracy)
                   for coverage, accuracy in (selective.get("accuracy_at_coverage") or {}).items())
    if marks:
        axis.plot(*zip(*marks), "o", color=GOLD_COLOUR, label="coverage 50/80/90% (accuracies in the table)")
    for coverage, risk in marks:
        axis.annotate(f"{coverage:.0%}", (coverage, risk), textcoords="offset points", xytext=(0, -13), ha="center",
                      fontsize=8)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("coverage (share of questions answered)")
    axis.set_ylabel("risk (share answered wrongly)")
    legend_below(figure, 2)
    return render("risk-coverage", f"Risk against coverage ({selective.get('confidence', '?')} confidence; AURC "
                                   f"{fmt(selective.get('aurc'))}; n={metrics['n']} questions)", figure)
