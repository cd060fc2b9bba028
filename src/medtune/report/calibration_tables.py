"""The report's blocks for the fields evaluations gained with calibration: `calibration`, `selective` and
`robustness` in metrics.json, and a run's calibration.json. Each says "not measured" when its field is absent
(an evaluation made before the field existed, or without the option that measures it)."""

from __future__ import annotations

from medtune.report.page import Block, Placed, heading, not_measured, num, pairs, table


def calibration_blocks(metrics: dict, placed: Placed | None, level: int) -> list[Block]:
    calibration = metrics.get("calibration")
    blocks: list[Block] = [heading(level, "Calibration")]
    if not isinstance(calibration, dict) or not calibration.get("raw"):
        return blocks + [not_measured("Calibration", "this metrics.json has no 'calibration' field")]
    sets = [("raw", calibration["raw"]), ("calibrated", calibration.get("calibrated"))]
    rows = [[name, num(v.get("n")), num(v.get("ece")), num(v.get("ece_equal_mass")), num(v.get("brier")),
             num(v.get("nll"))] if v else [name, "not measured", "", "", "", ""] for name, v in sets]
    temperature = calibration.get("temperature")
    source = (calibration.get("temperature_file") or "?") if temperature is not None else \
        "none applied: these are the model's raw probabilities"
    blocks += [table(["probabilities", "n", "ECE (15 bins)", "ECE (equal mass)", "Brier", "NLL (nats)"], rows,
                     {1, 2, 3, 4, 5}),
               pairs([("temperature T", num(temperature) if temperature is not None else "none"),
                      ("temperature from", source)])]
    if placed:
        blocks.append(placed)
    subjects = calibration["raw"].get("per_subject") or {}
    if subjects:
        blocks.append(table(["subject", "n", "ECE (raw)", "Brier (raw)", "NLL (raw)"],
                            [[s, num(v.get("n")), num(v.get("ece")), num(v.get("brier")), num(v.get("nll"))]
                             for s, v in sorted(subjects.items())], {1, 2, 3, 4}))
    return blocks


def selective_blocks(metrics: dict, placed: Placed | None, level: int) -> list[Block]:
    selective = metrics.get("selective")
    blocks: list[Block] = [heading(level, "Selective answering (risk–coverage)")]
    if not isinstance(selective, dict) or not selective.get("curve"):
        return blocks + [not_measured("Risk–coverage", "this metrics.json has no 'selective' field")]
    at = selective.get("accuracy_at_coverage") or {}
    rows = [(f"accuracy answering the {float(c):.0%} most confident", num(a)) for c, a in sorted(at.items())]
    blocks.append(pairs([("confidence used", selective.get("confidence")), ("AURC (lower is better)",
                                                                            num(selective.get("aurc"))), *rows]))
    return blocks + ([placed] if placed else [])


def robustness_blocks(metrics: dict, placed: Placed | None, level: int) -> list[Block]:
    robustness = metrics.get("robustness")
    blocks: list[Block] = [heading(level, "Robustness to option order")]
    if not isinstance(robustness, dict) or not robustness.get("accuracy_per_shift"):
        return blocks + [not_measured("Robustness", "evaluate with --permutations cyclic to measure it")]
    blocks.append(pairs([("option orders", f"{robustness.get('shifts')} ({robustness.get('permutations')} shifts)"),
                         ("questions", num(robustness.get("n"))),
                         ("consistency (same option chosen under every order)", num(robustness.get("consistency"))),
                         ("accuracy averaged over orders", num(robustness.get("permutation_averaged_accuracy")))]))
    prior, gold = robustness.get("letter_prior") or {}, robustness.get("gold_distribution") or {}
    if prior:
        letters = sorted(set(prior) | set(gold))
        blocks.append(table(["letter", "model's prior for the letter", "share of gold answers"],
                            [[k, num(prior.get(k)), num(gold.get(k))] for k in letters], {1, 2}))
    return blocks + ([placed] if placed else [])


def run_calibration(calibration: dict | None) -> str:
    """A run's calibration.json: the temperature its evaluations and answers apply, and what it was fitted on."""
    if not calibration:
        return not_measured("Temperature", "the run has no calibration.json; `medtune calibrate` fits one")
    data = calibration.get("data") or {}
    return pairs([("temperature T", num(calibration.get("temperature"))), ("fitted on", calibration.get("fitted_on")),
                  ("questions", num(calibration.get("n"))),
                  ("NLL before → after (nats)", f"{num(calibration.get('nll_before'))} → "
                                                f"{num(calibration.get('nll_after'))}"),
                  ("data", data.get("source")), ("data sha256", data.get("sha256") or "not recorded"),
                  ("method", calibration.get("method"))])
