"""One section of the report per input: what each kind of result holds, as tables, warnings and figures.

Each function returns the section's blocks (HTML fragments and `Placed` figures, in page order); `sid` is the
section's id, which prefixes its figures' ids so several runs or evaluations can share one page."""

from __future__ import annotations

from medtune.report import figures as plots
from medtune.report.calibration_tables import calibration_blocks, robustness_blocks, run_calibration, selective_blocks
from medtune.report.comparisons import comparison_plot, suite_plot
from medtune.report.page import (
    Block,
    Placed,
    esc,
    heading,
    interval,
    not_measured,
    num,
    pairs,
    paragraph,
    table,
    warnings_list,
)
from medtune.report.sources import Comparison, Evaluation, Run, Suite
from medtune.report.training import guard_events, training_plot


def evaluation_section(evaluation: Evaluation, sid: str, level: int = 2) -> list[Block]:
    metrics = evaluation.metrics
    figures = {plot.kind: Placed(f"{sid}-{plot.kind}", plot) for plot in plots.evaluation_plots(metrics)}
    baselines = metrics.get("baselines", {})
    low, high = metrics.get("ci95") or plots.wilson(metrics["accuracy"], metrics["n"])
    summary = (f"Accuracy {metrics['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}) on n={metrics['n']} questions; "
               f"random-guess baseline {num(baselines.get('random'))}, always-{baselines.get('majority_letter', '?')} "
               f"baseline {num(baselines.get('majority'))}.")
    return [heading(level, f"Evaluation: {evaluation.name}", sid), f'<p class="path">{esc(evaluation.path)}</p>',
            paragraph(summary), warnings_list(metrics.get("warnings") or []),
            figures["accuracy"], figures["subjects"], figures["confusion"], figures["letters"],
            *calibration_blocks(metrics, figures.get("reliability"), level + 1),
            *selective_blocks(metrics, figures.get("risk-coverage"), level + 1),
            *robustness_blocks(metrics, figures.get("robustness"), level + 1),
            heading(level + 1, "Provenance"), evaluation_provenance(metrics)]


def evaluation_provenance(metrics: dict) -> str:
    model, data = metrics.get("model") or {}, metrics.get("data") or {}
    rows = [("base model", model.get("base_model")), ("adapter", model.get("adapter") or "none (the base model)"),
            ("prompt", model.get("prompt") or metrics.get("prompt_format")), ("task", metrics.get("task")),
            ("few-shot exemplars", (metrics.get("fewshot") or {}).get("k")),
            ("device", model.get("device")), ("dtype", f"{model.get('dtype')} — {model.get('dtype_reason', '')}"),
            ("quantization", model.get("quantization")), ("data", data.get("source")),
            ("data sha256", data.get("sha256") or "not recorded (a Hub data set: see revision)"),
            ("data revision", data.get("revision")), ("split", data.get("split")),
            ("rows read / scored", f"{data.get('rows_read')} / {data.get('rows_loaded')}"),
            ("ties (counted wrong)", metrics.get("ties")),
            ("questions per second", metrics.get("questions_per_second"))]
    return pairs([(label, value) for label, value in rows if value is not None])


def run_section(run: Run, sid: str) -> list[Block]:
    manifest, training = run.manifest, run.manifest.get("training") or {}
    guard = training.get("nonfinite_guard") or run.report.get("nonfinite_guard") or {}
    dev_rows = (manifest.get("data") or {}).get("dev_rows")
    blocks: list[Block] = [heading(2, f"Run: {run.name}", sid), f'<p class="path">{esc(run.path)}</p>',
                           heading(3, "Training")]
    if run.log:
        blocks.append(Placed(f"{sid}-training", training_plot(run.log, guard, dev_rows)))
    else:
        blocks.append(not_measured("Training curves", "the run has no metrics.jsonl"))
    blocks += [training_summary(run), heading(4, "Non-finite guard"), guard_table(run.log, guard),
               heading(3, "Calibration (temperature)"), run_calibration(run.calibration),
               heading(3, "Provenance"), run_provenance(run)]
    for index, evaluation in enumerate(run.evaluations):
        blocks += evaluation_section(evaluation, f"{sid}-eval{index + 1}", level=3)
    if run.comparison:
        blocks += comparison_section(run.comparison, f"{sid}-comparison", ("base", "tuned"), level=3)
    return blocks


def training_summary(run: Run) -> str:
    training, best = run.manifest.get("training") or {}, run.report.get("best_dev") or {}
    final = run.report.get("final") or (run.log[-1] if run.log else {})
    best_text = (f"{best['dev_accuracy']:.3f} at step {best.get('step')}" if (best.get("dev_accuracy") or -1) >= 0
                 else "no dev evaluation")
    return pairs([("steps (planned)", f"{training.get('steps')} ({training.get('planned_steps')})"),
                  ("adapter kept", f"step {training.get('adapter_step')}: {training.get('adapter_choice')}"),
                  ("final train loss (nats per answer token)", num(final.get("loss"))),
                  ("best dev accuracy", best_text), ("seconds", training.get("seconds")),
                  ("tokens seen", training.get("tokens_seen")),
                  ("tokens per second (whole run)", training.get("tokens_per_second"))])


def guard_table(log: list[dict], guard: dict) -> str:
    events = guard_events(log, guard)
    if not events:
        return paragraph(f"No event: every update was finite ({guard.get('skipped_steps', 0)} skipped steps, "
                         f"{len(guard.get('rollbacks', []))} rollbacks).", "muted")
    return table(["step", "event"], [[step, what] for step, what in events])


def run_provenance(run: Run) -> str:
    manifest = run.manifest
    base = manifest.get("base_model") or {}
    prompt = manifest.get("prompt") or {}
    rows = [("created", manifest.get("created")), ("base model", base.get("id")), ("base kind", base.get("kind")),
            ("base revision", base.get("revision")), ("base fingerprint", base.get("fingerprint")),
            ("adapter", run.path / "adapter"), ("trainable parameters", _parameters(manifest.get("parameters"))),
            ("prompt", f"{prompt.get('format')} (thinking {'on' if prompt.get('enable_thinking') else 'off'}); "
                       "saved in prompt.yaml"),
            ("device", f"{manifest.get('device')} — {manifest.get('device_reason', '')}"),
            ("dtype", f"{manifest.get('dtype')} — {manifest.get('dtype_reason', '')}"),
            ("final dtype", manifest.get("final_dtype")),
            ("quantization", f"{manifest.get('quantization')} — {manifest.get('quantization_reason', '')}"),
            ("attention", f"{manifest.get('attention')} — {manifest.get('attention_reason', '')}"),
            ("processes", manifest.get("processes"))]
    versions = ", ".join(f"{name} {version}" for name, version in (manifest.get("versions") or {}).items())
    sources = (manifest.get("data") or {}).get("sources") or []
    data = table(["training data", "sha256", "rows loaded", "share"],
                 [[s.get("source"), s.get("sha256") or "not recorded", s.get("rows_loaded"), num(s.get("share"))]
                  for s in sources])
    return pairs([(label, value) for label, value in rows if value is not None] + [("versions", versions)]) + data


def _parameters(parameters: dict | None) -> str | None:
    if not parameters:
        return None
    return f"{parameters['trainable']:,} of {parameters['total']:,} ({100 * parameters['trainable_share']:.2f}%)"


def suite_section(suite: Suite, sid: str) -> list[Block]:
    summary = suite.summary
    rows = [[name, num(row["n"]), num(row["accuracy"]), interval(row.get("ci95")),
             num(row.get("baselines", {}).get("random")), num(row.get("baselines", {}).get("majority"))]
            for name, row in summary["tasks"].items()]
    average = summary.get("average") or {}
    rows.append(["average, weighted by n", num(summary.get("n")), num(average.get("weighted")), "—", "—", "—"])
    rows.append(["average, macro (per task)", num(len(summary["tasks"])) + " tasks", num(average.get("macro")),
                 "—", "—", "—"])
    blocks: list[Block] = [heading(2, f"Suite: {suite.name} ({summary.get('suite', '?')})", sid),
                           f'<p class="path">{esc(suite.path)}</p>',
                           table(["task", "n", "accuracy", "95% CI", "random", "majority"], rows, {1, 2, 4, 5}),
                           Placed(f"{sid}-suite", suite_plot(summary))]
    skipped = summary.get("skipped") or {}
    if skipped:
        blocks.append(table(["skipped task", "reason"], [[name, reason] for name, reason in skipped.items()]))
    duplicates = summary.get("duplicates") or {}
    if duplicates.get("questions"):
        blocks.append(paragraph(f"{duplicates['questions']} questions appear in more than one task; the averages "
                                f"count them {duplicates.get('extra_scorings')} extra times."))
    task_warnings = [f"{task.name}: {warning}" for task in suite.tasks for warning in task.metrics.get("warnings", [])]
    blocks.append(warnings_list(task_warnings))
    sources = summary.get("sources") or {}
    if sources:
        blocks.append(table(["task", "source"], [[name, source] for name, source in sources.items()]))
    return blocks


def comparison_section(comparison: Comparison, sid: str, names: tuple[str, str] = ("A", "B"),
                       level: int = 2) -> list[Block]:
    result = comparison.result
    overall = result["average"]["weighted"] if "tasks" in result else result
    blocks: list[Block] = [heading(level, f"Comparison: {comparison.name}", sid),
                           f'<p class="path">{esc(comparison.path)}</p>',
                           f'<p class="verdict">{esc(overall["verdict"])}</p>',
                           comparison_table(result, names), Placed(f"{sid}-comparison", comparison_plot(result, names))]
    if "tasks" in result:
        blocks.append(f'<p class="verdict">macro: {esc(result["average"]["macro"]["verdict"])}</p>')
    method = result.get("method") or {}
    if method:
        text = f"Method: {method.get('bootstrap')}; {method.get('test')}; alpha {method.get('alpha')}."
        blocks.append(paragraph(text, "muted"))
    return blocks


def comparison_table(result: dict, names: tuple[str, str]) -> str:
    a, b = names
    headers = ["", "n", f"accuracy {a}", f"accuracy {b}", f"{b} − {a} (points)", "95% CI (points)", "McNemar p",
               f"only {a} right", f"only {b} right"]
    lines = list(result["tasks"].items()) + [("average, weighted", result["average"]["weighted"])] \
        if "tasks" in result else [("all questions", result)]
    rows = [[label, num(r["n"]), num(r["accuracy_a"]), num(r["accuracy_b"]), f"{100 * r['difference']:+.1f}",
             _points(r.get("difference_ci95")), num(r.get("mcnemar_p")), num(r.get("a_only_correct")),
             num(r.get("b_only_correct"))] for label, r in lines]
    subjects = result.get("per_subject") or {}
    text = table(headers, rows, set(range(1, 9)))
    if subjects:
        text += table(["subject", "n", f"accuracy {a}", f"accuracy {b}", f"{b} − {a} (points)"],
                      [[s, num(r["n"]), num(r["accuracy_a"]), num(r["accuracy_b"]), f"{100 * r['difference']:+.1f}"]
                       for s, r in sorted(subjects.items())], {1, 2, 3, 4})
    return text


def _points(ci) -> str:
    return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else "—"
