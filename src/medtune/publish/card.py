"""The model card of a run: README.md with the Hub's YAML front matter and the sections a medical card needs.

Every figure in the card is read from a file of the run (manifest.json, config.yaml, report.json,
calibration.json, the eval folders' metrics.json, eval/comparison.json, a suite's suite.json) and printed from
there; nothing is typed in. The card is rendered offline with huggingface_hub's `ModelCard` (front matter from
`ModelCardData`, so `model-index` has the Hub's shape) and read back with `ModelCard.load` before it is kept.

Paths of the training machine never reach the card: a local file or folder is named by its name alone
(`public_name`), and `check_public` refuses text that still holds one of the run's local paths.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from medtune.rundir import RunDir

CARD_FILE = "README.md"
NOT_FOR_CLINICAL = "not for clinical decisions"
MEDMCQA_HUB = "openlifescienceai/medmcqa"
# Licenses of the data sets medtune reads by name, as their owners state them (checked by hand, not guessed):
# MedMCQA's GitHub repository (medmcqa/medmcqa) carries the MIT license, its Hub card says Apache-2.0.
DATA_LICENSES = {MEDMCQA_HUB: "MIT in its GitHub repository (github.com/medmcqa/medmcqa); Apache-2.0 on its "
                              "Hugging Face card (openlifescienceai/medmcqa): both are stated here"}
# The bases of medtune's recipes and their licenses on their Hub cards; another base gets `license: other`
# unless its local folder's README says, or the caller names one.
BASE_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "Qwen/Qwen3-1.7B": "apache-2.0",
                 "Qwen/Qwen3-0.6B": "apache-2.0", "Qwen/Qwen3-4B": "apache-2.0", "Qwen/Qwen3-8B": "apache-2.0"}
DEMO_FILES = ("medmcqa_demo.jsonl", "demo-train.jsonl", "demo-heldout.jsonl")  # the quickstart's demo set
TASK_NAME = "Medical multiple-choice question answering"

# An absolute path inside a string: '/' (or '~/', 'C:\') at the start or after a space, quote or bracket.
_PATH = re.compile(r"(?<![\w:/.~\\-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"(),;]+)+[/\\]?")


# ---------------------------------------------------------------- paths of the training machine


def is_local_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../", "\\")) or bool(re.match(r"[A-Za-z]:[\\/]", value))


def public_name(value: str | None) -> str | None:
    """A Hub id as it is; a local path by its last component (its folder or file name)."""
    if not value:
        return value
    return Path(value.rstrip("/\\")).name if is_local_path(value) or Path(value).exists() else value


def scrub(value):
    """A JSON-like value with every absolute path inside its strings replaced by the path's last component."""
    if isinstance(value, str):
        return _PATH.sub(lambda match: Path(match.group(0).rstrip("/\\")).name, value)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def local_roots(run_dir: Path) -> list[str]:
    """The run's own local paths (run folder, base folder, data files' folders): text to be published must
    contain none of them."""
    manifest = _json(RunDir(run_dir).manifest) or {}
    base = manifest.get("base_model", {})
    found = {str(Path(run_dir).resolve()), str(Path(run_dir).absolute()), str(Path.home())}
    for value in (base.get("id"), base.get("path")):
        if value and is_local_path(value):
            found.add(str(Path(value).parent if Path(value).suffix == ".gguf" else value))
    for source in manifest.get("data", {}).get("sources", []):
        if source.get("source") and is_local_path(source["source"]):
            found.add(str(Path(source["source"]).parent))
    return sorted(root for root in found if root not in ("/", ""))


def check_public(text: str, roots: list[str], where: str) -> None:
    """Refuse text that still names a local path of the training machine."""
    for root in roots:
        if root in text:
            raise ValueError(f"{where} would publish the local path {root}; this is a medtune bug: report it")


# ---------------------------------------------------------------- reading the run


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if Path(path).is_file() else None


def base_hub_id(manifest: dict, given: str | None = None) -> str | None:
    """The base model's Hub id: `given`, else the manifest's id when it is one (not a local folder or file)."""
    if given:
        return given
    base_id = manifest.get("base_model", {}).get("id")
    return None if not base_id or is_local_path(base_id) or base_id.endswith(".gguf") else base_id


def default_evals(run_dir: Path) -> list[Path]:
    """RUN_DIR/eval/base and RUN_DIR/eval/tuned, those that exist (what `medtune train --eval-data` writes)."""
    return [folder for folder in (Path(run_dir) / "eval" / "base", Path(run_dir) / "eval" / "tuned")
            if (folder / "metrics.json").is_file()]


def read_eval(folder: Path) -> dict:
    """An eval folder's name and metrics.json; `_eval_roles` then says who was scored."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not an evaluation folder: metrics.json is missing (run `medtune eval` "
                         "first, or drop this --eval)")
    return {"name": Path(folder).name, "metrics": json.loads(path.read_text(encoding="utf-8")), "role": "model"}


def _eval_roles(evals: list[dict], manifest: dict) -> None:
    """Mark an eval of the run's base model (no adapter, the manifest's base) as the baseline."""
    base = manifest.get("base_model", {})
    names = {base.get("id"), base.get("path")} - {None}
    for item in evals:
        model = item["metrics"].get("model") or {}
        item["role"] = "base" if model.get("adapter") is None and model.get("base_model") in names else "model"


def _dataset(metrics: dict) -> dict:
    """{type, name, split, revision, sha256} of what an evaluation scored. The type is the Hub id it was read
    from, or a local file's name: a file in a benchmark's schema is not claimed to be that benchmark (the
    quickstart's demo set has MedMCQA's schema); its sha256 identifies it."""
    from medtune.tasks import TASKS

    data = metrics.get("data") or {}
    task = metrics.get("task") or data.get("task") or (metrics.get("model") or {}).get("task")
    source = data.get("source")
    split = data.get("split")
    if source and not is_local_path(source) and not Path(source).exists():
        kind, name = source, task or source
    elif not source and task in TASKS and TASKS[task].hub_id:  # a suite task read from its Hub copy
        kind, name = TASKS[task].hub_id, task
    else:  # a local file: its name, even when its schema is a benchmark's
        kind = name = public_name(source) or task or "unnamed data"
    return {"type": kind, "name": name, "split": split,
            "revision": data.get("revision"), "sha256": data.get("sha256")}


# ---------------------------------------------------------------- formatting


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(pair) -> str:
    return f"{_f(pair[0])}–{_f(pair[1])}" if pair else "n/a"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# ---------------------------------------------------------------- the card


def write_card(run_dir: str | Path, output_dir: str | Path, evals=(), suite: str | Path | None = None,
               merged: bool = False, *, base_model: str | None = None, repo_id: str | None = None,
               license: str | None = None) -> Path:
    """Write OUTPUT_DIR/README.md, the model card of the run, and return its path.

    `evals`: eval folders (default: the run's eval/base and eval/tuned); `suite`: a `medtune eval --suite`
    folder; `merged`: the card of a merged export (library transformers) instead of the adapter (library peft);
    `base_model`: the base's Hub id when the run's manifest names a local folder; `repo_id`: the repository the
    card will live in (used in the loading examples)."""
    from huggingface_hub import ModelCard

    text = card_text(run_dir, evals, suite, merged, base_model=base_model, repo_id=repo_id, license=license)
    check_public(text, local_roots(Path(run_dir)), "the model card")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / CARD_FILE
    ModelCard(text).save(path)
    ModelCard.load(path)  # the front matter must read back (it raises on YAML that is not a mapping)
    return path


def card_text(run_dir: str | Path, evals=(), suite: str | Path | None = None, merged: bool = False, *,
              base_model: str | None = None, repo_id: str | None = None, license: str | None = None) -> str:
    """The card's full text: front matter and body (what `write_card` saves and `medtune push --dry-run` shows)."""
    from huggingface_hub import ModelCard

    run = RunDir(run_dir).require_run()
    facts = _facts(run, evals, suite, base_model, license)
    body = "\n".join(_body(facts, merged, repo_id))
    data = _card_data(facts, merged, repo_id)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n"))


def _facts(run: RunDir, evals, suite, base_model: str | None, license: str | None) -> dict:
    manifest = run.read_manifest()
    config = yaml.safe_load(run.config.read_text(encoding="utf-8")) if run.config.exists() else {}
    folders = [Path(folder) for folder in evals] or default_evals(run.root)
    read = [read_eval(folder) for folder in folders]
    _eval_roles(read, manifest)
    comparison = _json(run.root / "eval" / "comparison.json")
    suite_summary = _json(Path(suite) / "suite.json") if suite else None
    if suite and suite_summary is None:
        raise ValueError(f"{suite} is not a suite folder: suite.json is missing (run `medtune eval --suite "
                         "medical --output DIR` first)")
    hub_id = base_hub_id(manifest, base_model)
    return {"run": run, "manifest": manifest, "config": config or {}, "report": _json(run.report) or {},
            "adapter": _json(run.adapter / "adapter_config.json") or {}, "evals": read, "comparison": comparison,
            "calibration": _json(run.root / "calibration.json"), "suite": suite_summary,
            "suite_folder": Path(suite) if suite else None, "base_id": hub_id,
            "base_name": hub_id or public_name(manifest.get("base_model", {}).get("id")) or "the base model",
            "license": license or _license(manifest, hub_id)}


def _license(manifest: dict, hub_id: str | None) -> str:
    """The base model's license: known for the recipes' bases, else from the local base folder's README."""
    if hub_id in BASE_LICENSES:
        return BASE_LICENSES[hub_id]
    path = manifest.get("base_model", {}).get("path")
    readme = Path(path) / "README.md" if path else None
    if readme and readme.is_file():
        from huggingface_hub import ModelCard

        found = ModelCard(readme.read_text(encoding="utf-8")).data.license
        if found:
            return found
    return "other"


def _training_sources(manifest: dict) -> list[dict]:
    data = manifest.get("data", {})
    return data.get("sources") or ([data["train"]] if data.get("train") else [])


def _hub_datasets(manifest: dict) -> list[str]:
    return [source["source"] for source in _training_sources(manifest)
            if source.get("source") and not is_local_path(source["source"]) and not Path(source["source"]).exists()]


def _card_data(facts: dict, merged: bool, repo_id: str | None):
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    for item in facts["evals"]:
        if item["role"] != "model":
            continue
        dataset, metrics = _dataset(item["metrics"]), item["metrics"]
        results.append(EvalResult(task_type="multiple-choice", task_name=TASK_NAME, dataset_type=dataset["type"],
                                  dataset_name=dataset["name"], dataset_split=dataset["split"],
                                  dataset_revision=dataset["revision"], metric_type="accuracy",
                                  metric_name="accuracy", metric_value=metrics["accuracy"]))
    for task, row in ((facts["suite"] or {}).get("tasks") or {}).items():
        dataset = _suite_dataset(facts, task)
        results.append(EvalResult(task_type="multiple-choice", task_name=TASK_NAME, dataset_type=dataset["type"],
                                  dataset_name=task, dataset_split=dataset["split"], metric_type="accuracy",
                                  metric_name="accuracy", metric_value=row["accuracy"]))
    tags = ["medical", "medtune", "multiple-choice"] + ([] if merged else ["lora", "peft"])
    return ModelCardData(base_model=facts["base_id"], library_name="transformers" if merged else "peft",
                         license=facts["license"], datasets=_hub_datasets(facts["manifest"]) or None,
                         language=["en"], tags=tags, pipeline_tag="text-generation", metrics=["accuracy"],
                         model_name=(repo_id or "").split("/")[-1] or f"{facts['base_name'].split('/')[-1]}-medtune",
                         eval_results=results or None)


def _suite_dataset(facts: dict, task: str) -> dict:
    metrics = _json(facts["suite_folder"] / task / "metrics.json")
    if metrics:
        return _dataset(metrics)
    from medtune.tasks import TASKS

    known = TASKS.get(task)
    return {"type": known.hub_id if known and known.hub_id else task, "split": known.split if known else None}


def _body(facts: dict, merged: bool, repo_id: str | None) -> list[str]:
    manifest = facts["manifest"]
    title = (repo_id or "").split("/")[-1] or f"{facts['base_name'].split('/')[-1]} fine-tuned with medtune"
    what = "a merged model" if merged else "a LoRA adapter"
    lines = [f"# {title}", "",
             f"{what[0].upper() + what[1:]} of **{facts['base_name']}**, fine-tuned with "
             f"medtune {manifest.get('versions', {}).get('medtune', '')} to answer medical "
             "multiple-choice questions: it scores each option letter and answers with the most probable one.", "",
             f"> **A research tool, {NOT_FOR_CLINICAL}.** Its answers can be wrong with high confidence; a person "
             "qualified to judge them must check every one.", ""]
    for section in (_intended_use, _training_data, _procedure, _hardware, _evaluation, _limitations):
        lines += section(facts) + [""]
    lines += _how_to_load(facts, merged, repo_id)
    return lines


def _intended_use(facts: dict) -> list[str]:
    return ["## Intended use", "",
            "Research and teaching: studying how small language models answer medical exam questions, comparing "
            "fine-tuning recipes, and building demonstrations whose output a qualified person reviews.", "",
            "## Out-of-scope use", "",
            f"- **Clinical use: this model is {NOT_FOR_CLINICAL}** — not for diagnosis, treatment, triage, "
            "prescribing or any advice to patients.",
            "- Free-text medical question answering: it was trained and measured on multiple-choice exam questions "
            "only.",
            "- Any use where a wrong answer can harm someone without a qualified person checking it first."]


def _training_data(facts: dict) -> list[str]:
    manifest = facts["manifest"]
    rows = []
    notes = []
    for source in _training_sources(manifest):
        name = public_name(source.get("source")) or "?"
        rows.append([name, source.get("layout") or "", source.get("split") or "",
                     source.get("trained_rows", source.get("rows_loaded", "")), source.get("rows_read", ""),
                     f"`{source.get('sha256')}`" if source.get("sha256") else "n/a", _data_license(source)])
        if name in DEMO_FILES:
            notes.append(f"`{name}` is medtune's demo set: questions written for the quickstart, in MedMCQA's "
                         "schema but not from MedMCQA; not a benchmark.")
        elif source.get("layout") == "medmcqa" and is_local_path(source.get("source") or ""):
            notes.append(f"`{name}` is a local file in MedMCQA's schema. If it is MedMCQA, its license is "
                         f"{DATA_LICENSES[MEDMCQA_HUB]}; its sha256 above identifies the exact file.")
    data = manifest.get("data", {})
    lines = ["## Training data", "",
             *_table(["source", "schema", "split", "rows trained", "rows read", "sha256", "license"], rows), ""]
    lines.append(f"Training rows: {data.get('train_rows', 'n/a')}; rows held out as a dev slice: "
                 f"{data.get('dev_rows', 'n/a')}.")
    if data.get("overlap"):
        lines.append(_overlap_line(data["overlap"]))
    return lines + [""] + [f"- {note}" for note in notes] if notes else lines


def _overlap_line(overlap: dict) -> str:
    """The training rows' overlap with the evaluation data, as the run recorded it, in one sentence."""
    kinds = ", ".join(f"{kind} {overlap.get(kind, {}).get('eval_rows', 0)}" for kind in ("exact", "question", "ngram"))
    return (f"Overlap with the evaluation data (recorded at training): {overlap.get('overlapping_eval_rows')} of "
            f"{overlap.get('eval_rows')} evaluation rows share a question with the {overlap.get('train_rows')} "
            f"training rows (by kind: {kinds}; ngram = a shared {overlap.get('ngram_n')}-gram).")


def _data_license(source: dict) -> str:
    name = source.get("source") or ""
    if name in DATA_LICENSES:
        return DATA_LICENSES[name]
    if public_name(name) in DEMO_FILES:
        return "medtune's license (written for medtune)"
    return "not recorded by medtune: see the data's own terms"


_HYPERPARAMETERS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "epochs",
                    "max_steps", "batch_size", "grad_accum", "max_seq_len", "warmup_ratio", "weight_decay",
                    "max_grad_norm", "prompt_format", "seed")


def _procedure(facts: dict) -> list[str]:
    config, manifest, report = facts["config"], facts["manifest"], facts["report"]
    training = manifest.get("training", {})
    rows = [[f"`{key}`", f"`{config[key]}`"] for key in _HYPERPARAMETERS if key in config]
    adapter = facts["adapter"]
    if adapter.get("target_modules"):
        modules = sorted({name.rsplit(".", 1)[-1] for name in adapter["target_modules"]})
        rows.append(["adapted modules", ", ".join(f"`{name}`" for name in modules)])
    rows.append(["trainable parameters", f"{manifest.get('parameters', {}).get('trainable', 'n/a')} of "
                                         f"{manifest.get('parameters', {}).get('total', 'n/a')}"])
    final = report.get("final") or {}
    lines = ["## Training procedure", "",
             "LoRA (PEFT) on the frozen base; the loss covers the answer letter and explanation only (the prompt "
             "is masked). The prompt the run trained with is `prompt.yaml` "
             f"(format `{manifest.get('prompt', {}).get('format', 'n/a')}`).", "",
             *_table(["setting", "value"], rows), "",
             f"Steps: {training.get('steps', 'n/a')} of {training.get('planned_steps', 'n/a')} planned; adapter "
             f"kept: {training.get('adapter_choice', 'n/a')} (step {training.get('adapter_step', 'n/a')}); final "
             f"training loss {_f(final.get('loss'), 4)}."]
    return lines


def _hardware(facts: dict) -> list[str]:
    manifest = facts["manifest"]
    training = manifest.get("training", {})
    versions = ", ".join(f"{name} {version}" for name, version in manifest.get("versions", {}).items())
    return ["## Hardware, precision and time", "",
            f"- Device: {manifest.get('device', 'n/a')} ({manifest.get('backend', 'n/a')} backend, "
            f"{manifest.get('processes', 1)} process(es)).",
            f"- Precision: {manifest.get('final_dtype') or manifest.get('dtype', 'n/a')} "
            f"({scrub(manifest.get('dtype_reason', ''))}); quantization: {manifest.get('quantization', 'n/a')}.",
            f"- Time: {training.get('seconds', 'n/a')} s of training, {training.get('tokens_per_second', 'n/a')} "
            f"tokens/s, {training.get('tokens_seen', 'n/a')} tokens seen.",
            f"- Software: {versions}."]


def _evaluation(facts: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    if not facts["evals"] and not facts["suite"]:
        return lines + ["No evaluation was given to this card (`medtune card RUN_DIR --eval DIR`)."]
    if facts["evals"]:
        lines += ["Each question is scored by the probability of every option letter in one forward pass; the "
                  "answer is the most probable letter. The 95% interval is Wilson's; the baselines are a random "
                  "guess and always answering the commonest gold letter.", ""]
        rows = []
        for item in facts["evals"]:
            metrics, dataset = item["metrics"], _dataset(item["metrics"])
            who = "base model" if item["role"] == "base" else "this model"
            baselines = metrics.get("baselines", {})
            rows.append([item["name"], who, dataset["name"], dataset["split"] or "", metrics.get("n"),
                         _f(metrics.get("accuracy")), _ci(metrics.get("ci95")), _f(baselines.get("random")),
                         f"{_f(baselines.get('majority'))} ({baselines.get('majority_letter', '')})"])
        lines += _table(["evaluation", "model", "data", "split", "n", "accuracy", "95% CI", "random",
                         "majority letter"], rows)
    lines += _comparison(facts["comparison"])
    lines += _calibration(facts)
    lines += _suite(facts["suite"])
    return lines


def _comparison(comparison: dict | None) -> list[str]:
    if not comparison or "difference" not in comparison:
        return []
    low, high = comparison["difference_ci95"]
    significant = comparison["mcnemar_p"] < 0.05 and not low <= 0 <= high
    word = "a significant difference" if significant else "no significant difference"
    return ["", "### Paired comparison with the base model (eval/comparison.json)", "",
            f"On the same {comparison['n']} questions: base {_f(comparison['accuracy_a'])}, this model "
            f"{_f(comparison['accuracy_b'])}; difference {_f(comparison['difference'])} (paired bootstrap 95% CI "
            f"{_f(low)} to {_f(high)}), McNemar exact p = {_f(comparison['mcnemar_p'])}; right only for the base: "
            f"{comparison['a_only_correct']}, only for this model: {comparison['b_only_correct']}. Verdict: {word}."]


def _calibration(facts: dict) -> list[str]:
    record = facts["calibration"]
    rows = []
    for item in facts["evals"]:
        calibration = item["metrics"].get("calibration")
        if item["role"] != "model" or not calibration:
            continue
        raw, calibrated = calibration.get("raw") or {}, calibration.get("calibrated") or {}
        rows.append([item["name"], _f(raw.get("ece")), _f(calibrated.get("ece")), _f(raw.get("brier")),
                     _f(calibrated.get("brier")), _f(calibration.get("temperature"))])
    if not record and not rows:
        return []
    lines = ["", "### Calibration", ""]
    if record:
        lines += [f"Temperature scaling: T = {_f(record.get('temperature'))} (calibration.json), fitted on "
                  f"{record.get('n', 'n/a')} questions never reported ({record.get('fitted_on', 'n/a')}); mean NLL "
                  f"{_f(record.get('nll_before'))} before, {_f(record.get('nll_after'))} after.", ""]
    if rows:
        lines += ["Expected calibration error (15 equal-width bins on the top option's probability) and Brier "
                  "score, before and after temperature scaling:", "",
                  *_table(["evaluation", "ECE raw", "ECE calibrated", "Brier raw", "Brier calibrated", "T"], rows)]
    return lines


def _suite(summary: dict | None) -> list[str]:
    if not summary:
        return []
    rows = [[task, row["n"], _f(row["accuracy"]), _ci(row.get("ci95")), _f(row["baselines"]["random"]),
             _f(row["baselines"]["majority"])] for task, row in summary["tasks"].items()]
    average = summary.get("average") or {}
    if average.get("weighted") is not None:
        rows.append(["average, weighted by n", summary.get("n", ""), _f(average["weighted"]), "", "", ""])
        rows.append(["average, macro (per task)", len(summary["tasks"]), _f(average["macro"]), "", "", ""])
    skipped = [f"- skipped {task}: {scrub(reason)}" for task, reason in (summary.get("skipped") or {}).items()]
    return ["", f"### Benchmark suite ({summary.get('suite', 'suite')})", "",
            *_table(["task", "n", "accuracy", "95% CI", "random", "majority letter"], rows), *skipped]


def _limitations(facts: dict) -> list[str]:
    tuned = [item["metrics"] for item in facts["evals"] if item["role"] == "model"]
    measured = ""
    if tuned:
        metrics = tuned[-1]
        measured = (f" Here it answered {_f(metrics.get('accuracy'))} of {metrics.get('n')} questions right "
                    f"(random guessing: {_f(metrics.get('baselines', {}).get('random'))}).")
    return ["## Limitations and biases", "",
            "- **Exam-style questions from one country's exams.** MedMCQA comes from Indian medical entrance exams "
            "(AIIMS and NEET PG): its subjects, drug names, guidelines and epidemiology follow that country's "
            "curriculum, and four-option exam questions are not how clinical questions arrive.",
            "- **Small-model accuracy.** A small model fine-tuned on exam questions is far below the accuracy a "
            f"clinical tool would need and is often confidently wrong.{measured}",
            "- **Explanations are generated after the letter is chosen** and can be fluent and wrong, or cite facts "
            "that do not exist; the letter is the graded answer.",
            "- English only; the biases of the base model and of exam writers carry over."]


def _how_to_load(facts: dict, merged: bool, repo_id: str | None) -> list[str]:
    repo = repo_id or "OWNER/NAME"
    base = facts["base_id"] or "BASE_MODEL_HUB_ID"
    rank = facts["adapter"].get("r")
    if merged:
        return ["## How to load it", "", "With transformers:", "", "```python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", "",
                f"With vLLM: `vllm serve {repo}`.", "",
                "With Ollama: `medtune export RUN_DIR --gguf --output DIR`, then `ollama create NAME -f "
                "DIR/Modelfile` (the Modelfile carries the chat template and the system prompt).", "",
                "The prompt the model was tuned with (system message, instruction, answer prefix) is `prompt.yaml`."]
    return ["## How to load it", "", "With PEFT:", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")', "```", "",
            "With transformers alone (PEFT installed), the adapter repository loads directly: "
            f'`AutoModelForCausalLM.from_pretrained("{repo}")`.', "",
            f"With vLLM: `vllm serve {base} --enable-lora --lora-modules medtune={repo} --max-lora-rank {rank}` "
            f"(the adapter's rank is {rank}; vLLM refuses adapters above its `--max-lora-rank`).", "",
            "With Ollama: `medtune export RUN_DIR --gguf --output DIR` merges the adapter and converts it to GGUF; "
            "then `ollama create NAME -f DIR/Modelfile` (chat template and system prompt included).", "",
            "The prompt the adapter was tuned with (system message, instruction, answer prefix) is `prompt.yaml`; "
            "score the letters after it as medtune does for the same answers."]
