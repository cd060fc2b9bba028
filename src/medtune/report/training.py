"""The training figure, from a run's metrics.jsonl: loss, dev accuracy, learning rate and throughput by step,
with the non-finite guard's events marked where they happened."""

from __future__ import annotations

from medtune.report.figures import DPI, GOLD_COLOUR, MODEL_COLOUR, WARN_COLOUR, WIDTH, Plot, no_data, render


def guard_events(log: list[dict], guard: dict) -> list[tuple[int, str]]:
    """(step, what happened) for every update the non-finite guard or fp16 loss scaling stopped.

    train.py logs no line for a skipped step (the step number advances without one), so a skipped step is a gap
    in the logged steps; rollbacks are listed in the manifest; an fp16 overflow is flagged on its own line."""
    steps = sorted({row["step"] for row in log if isinstance(row.get("step"), int)})
    events = [(step, "non-finite loss or gradient: update skipped")
              for before, after in zip(steps, steps[1:]) for step in range(before + 1, after)]
    events += [(row["step"], "fp16 overflow: loss scale halved, update skipped") for row in log if row.get("overflow")]
    events += [(rollback.get("at_step", 0), f"rolled back to step {rollback.get('back_to_step')}, "
                f"{rollback.get('from')} -> {rollback.get('to')}") for rollback in guard.get("rollbacks", [])]
    return sorted(events)


def training_plot(log: list[dict], guard: dict, dev_rows: int | None) -> Plot:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(WIDTH, 5.6), dpi=DPI, layout="constrained")
    (loss, dev), (rate, speed) = figure.subplots(2, 2)  # not sharex: an empty panel clears its ticks
    events = guard_events(log, guard)
    _series(loss, log, "loss", "train loss (per step)", MODEL_COLOUR)
    if any(row.get("dev_loss") is not None for row in log):
        _series(loss, log, "dev_loss", "dev loss", GOLD_COLOUR)
    loss.set_ylabel("loss (nats per answer token)")
    loss.set_title("Loss", fontsize=10)
    _dev_accuracy(dev, log, dev_rows)
    _series(rate, log, "lr", None, MODEL_COLOUR)
    rate.set_ylabel("learning rate")
    rate.set_title("Learning rate", fontsize=10)
    _series(speed, log, "tokens_per_second", None, MODEL_COLOUR)
    speed.set_ylabel("tokens per second")
    speed.set_title("Throughput (running mean since the start)", fontsize=10)
    for axis in (axis for axis in (loss, dev, rate, speed) if axis.lines):  # not a panel that says it is empty
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axis.ticklabel_format(axis="y", useOffset=False, style="plain")  # "+1.221e1" offsets hide the values
    for step, _ in events:
        for axis in (loss, dev, rate, speed):
            axis.axvline(step, color=WARN_COLOUR, linestyle=":", linewidth=1)
    if events:
        loss.plot([], [], color=WARN_COLOUR, linestyle=":", label=f"non-finite guard events ({len(events)})")
    if loss.get_legend_handles_labels()[0]:
        loss.legend(fontsize=8)
    return render("training", f"Training by step ({len(log)} logged steps)", figure)


def _series(axis, log: list[dict], key: str, label: str | None, colour: str) -> None:
    points = [(row["step"], row[key]) for row in log if row.get(key) is not None and "step" in row]
    if not points:
        no_data(axis, f"{key} was not logged")
        return
    steps, values = zip(*points)
    axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, color=colour, label=label)


def _dev_accuracy(axis, log: list[dict], dev_rows: int | None) -> None:
    n = f"n={dev_rows} dev questions" if dev_rows is not None else "n not recorded"
    axis.set_title(f"Dev accuracy ({n})", fontsize=10)
    if not any(row.get("dev_accuracy") is not None for row in log):
        no_data(axis, "no dev evaluation was logged\n(the run had no dev rows, or none was due)")
        return
    _series(axis, log, "dev_accuracy", None, GOLD_COLOUR)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy (share correct)")
