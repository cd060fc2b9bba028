"""Figures across evaluations: a suite's tasks, and a paired comparison's differences (B - A) per task or subject."""

from __future__ import annotations

from medtune.report.figures import (
    BASELINE_COLOUR,
    GOLD_COLOUR,
    MODEL_COLOUR,
    WARN_COLOUR,
    Plot,
    legend_below,
    new_figure,
    render,
)


def suite_plot(summary: dict) -> Plot:
    """Each task's accuracy with its 95% interval, its random baseline, and the suite's two averages."""
    tasks = list(summary["tasks"].items())
    figure, (axis,) = new_figure(1.4 + 0.34 * len(tasks))
    for y, (_, row) in enumerate(reversed(tasks)):
        low, high = row["ci95"]
        axis.errorbar(row["accuracy"], y, xerr=[[row["accuracy"] - low], [high - row["accuracy"]]], fmt="o",
                      color=MODEL_COLOUR, capsize=3, label="accuracy, 95% interval" if y == 0 else None)
        random = row.get("baselines", {}).get("random")
        if random is not None:
            axis.plot(random, y, "|", color=BASELINE_COLOUR, markersize=12, markeredgewidth=2,
                      label="random-guess baseline" if y == 0 else None)
    average = summary.get("average") or {}
    for key, style in (("weighted", ":"), ("macro", "--")):
        if average.get(key) is not None:
            axis.axvline(average[key], color=GOLD_COLOUR, linestyle=style, label=f"{key} average {average[key]:.3f}")
    axis.set_yticks(range(len(tasks)), [f"{name} (n={row['n']})" for name, row in reversed(tasks)])
    axis.set_xlim(0, 1)
    axis.set_ylim(-0.6, len(tasks) - 0.4)
    axis.set_xlabel("accuracy (share of questions answered correctly)")
    legend_below(figure, 4)
    return render("suite", f"Accuracy per task (n={summary.get('n', '?')} questions in all)", figure)


def comparison_rows(result: dict) -> list[dict]:
    """(label, difference, interval or None, n) per line of the forest plot, overall first."""
    if "tasks" in result:
        rows = [_row(f"{task}", r) for task, r in result["tasks"].items()]
        weighted, macro = result["average"]["weighted"], result["average"]["macro"]
        rows.append(_row("average, weighted", weighted))
        rows.append({"label": "average, macro", "difference": macro["difference"],
                     "ci": macro.get("difference_ci95"), "n": None})
        return rows
    rows = [_row("all questions", result)]
    for subject, r in sorted((result.get("per_subject") or {}).items(), key=lambda item: -item[1]["difference"]):
        rows.append({"label": subject, "difference": r["difference"], "ci": None, "n": r["n"]})
    return rows


def _row(label: str, r: dict) -> dict:
    return {"label": label, "difference": r["difference"], "ci": r.get("difference_ci95"), "n": r.get("n")}


def comparison_plot(result: dict, names: tuple[str, str] = ("A", "B")) -> Plot:
    """Accuracy of B minus accuracy of A, in points, with the paired bootstrap's 95% interval where there is one
    (per-subject lines of a single comparison have none: only their difference is recorded)."""
    rows = comparison_rows(result)
    figure, (axis,) = new_figure(1.5 + 0.32 * len(rows))
    labelled = set()
    for y, row in enumerate(reversed(rows)):
        value = 100 * row["difference"]
        if row["ci"]:
            low, high = (100 * bound for bound in row["ci"])
            axis.errorbar(value, y, xerr=[[value - low], [high - value]], fmt="s", color=MODEL_COLOUR, capsize=4,
                          label=None if "ci" in labelled else "difference, 95% paired bootstrap interval")
            labelled.add("ci")
        else:
            axis.plot(value, y, "o", color=BASELINE_COLOUR,
                      label=None if "dot" in labelled else "difference only (no interval recorded)")
            labelled.add("dot")
    labels = [row["label"] + (f" (n={row['n']})" if row["n"] else "") for row in reversed(rows)]
    axis.set_yticks(range(len(rows)), labels)
    axis.axvline(0, color=WARN_COLOUR, linewidth=1)
    axis.set_ylim(-0.6, len(rows) - 0.4)
    axis.set_xlabel(f"accuracy of {names[1]} minus accuracy of {names[0]} (percentage points)")
    reach = max(abs(v) for row in rows for v in [100 * row["difference"], *(100 * b for b in row["ci"] or [])])
    axis.set_xlim(-1.1 * reach - 1, 1.1 * reach + 1)  # symmetric around no difference, nothing at the edge
    legend_below(figure, 2)
    n = result.get("n") or result.get("average", {}).get("weighted", {}).get("n")
    return render("comparison", f"Paired difference, {names[1]} − {names[0]} (n={n} shared questions)", figure)
