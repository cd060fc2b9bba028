"""The command line as a user meets it: errors as one sentence, eval's output and dtype rules, and the README's
command reference kept in step with each command's --help."""

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import original_row, write_jsonl
from medtune.answer import _inference_dtype
from medtune.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------ the README's command reference


def _reference_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Command reference", 1)[1]
    return section.split("```", 2)[1]


def _readme_flags() -> dict[str, str]:
    """command -> the reference text for it (its lines, plus a 'MODEL OPTIONS (a, b):' entry where it names it)."""
    entries: list[list[str]] = []
    for line in _reference_block().splitlines():
        if line.startswith(("medtune ", "MODEL OPTIONS")):
            entries.append([line])
        elif line.strip() and entries:
            entries[-1].append(line)
    commands: dict[str, str] = {}
    shared: dict[str, str] = {}
    for entry in entries:
        text = " ".join(entry)
        if text.startswith("MODEL OPTIONS"):
            names, options = re.match(r"MODEL OPTIONS \(([^)]*)\):(.*)", text).groups()
            for name in names.split(","):
                shared[name.strip()] = options
        else:
            words = text.split()
            name = " ".join(words[1:3]) if " ".join(words[1:3]) in _subparsers() else words[1]  # "data overlap"
            commands[name] = commands.get(name, "") + " " + text
    return {name: text + (" " + shared[name] if name in shared and "[MODEL OPTIONS]" in text else "")
            for name, text in commands.items()}


def _subparsers() -> dict:
    """command -> its parser; a command group (`data`) gives one entry per subcommand ("data overlap")."""
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    flat = {}
    for name, parser in commands.items():
        group = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        flat.update({f"{name} {sub}": inner for sub, inner in group.choices.items()} if group else {name: parser})
    return flat


FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def test_readme_reference_covers_every_command():
    assert set(_readme_flags()) == set(_subparsers())


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_readme_reference_flags_match_the_parser(command):
    text = _readme_flags()[command]
    parser = _subparsers()[command]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    known = {flag for action in options for flag in action.option_strings}
    shown = set(FLAG.findall(text))
    assert shown - known == set(), f"README shows flags that 'medtune {command}' does not have"
    missing = [action.option_strings[0] for action in options if not set(action.option_strings) & shown]
    assert missing == [], f"'medtune {command}' options missing from the README's command reference"
    for flag, listed in re.findall(r"(--[a-z0-9-]+) \{([^}]*)\}", text):  # a {choice,list} must be the parser's
        action = next(a for a in options if flag in a.option_strings)
        if action.choices is not None:
            assert listed.split(",") == [str(c) for c in action.choices], flag


# ------------------------------------------------------------------ errors: one line, exit code 2, no traceback


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not re.search(r"\d+%\|", line)]  # not transformers' progress bars
    assert len(lines) == 1 and lines[0].startswith(f"medtune {command}: error: "), err
    return lines[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def questions(tmp_path) -> Path:
    return write_jsonl(tmp_path / "q.jsonl", [original_row(i, cop=i % 4) for i in range(3)])


def _argv(command: str, run: Path, questions: Path, tmp_path: Path) -> list[str]:
    if command == "ask":
        return ["ask", str(run), "--question", "Q?", "--option", "a", "--option", "b", "--no-explain"]
    if command == "eval":
        return ["eval", str(run), "--data", str(questions), "--output", str(tmp_path / "out")]
    return ["serve", str(run), "--port", "1"]  # fails while loading, before it would listen


@pytest.mark.parametrize("command", ["ask", "eval", "serve"])
def test_truncated_adapter_file_is_one_sentence(command, run_copy, questions, tmp_path, capsys):
    weights = run_copy / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(_argv(command, run_copy, questions, tmp_path)) == 2
    assert "adapter_model.safetensors" in _one_line_error(capsys, command)


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_missing_adapter_file_is_one_sentence_naming_it(command, run_copy, questions, tmp_path, capsys):
    (run_copy / "adapter" / "adapter_model.safetensors").unlink()
    assert main(_argv(command, run_copy, questions, tmp_path)) == 2
    line = _one_line_error(capsys, command)
    assert "adapter_model.safetensors" in line and "disk cache" not in line


@pytest.mark.parametrize("command", ["ask", "eval", "serve"])
def test_run_folder_that_does_not_exist_is_called_missing(command, questions, tmp_path, capsys):
    assert main(_argv(command, tmp_path / "no-such-run", questions, tmp_path)) == 2
    line = _one_line_error(capsys, command)
    assert "does not exist" in line and "not a finished" not in line


def test_malformed_yaml_config_is_one_sentence(tmp_path, questions, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lora_r: [8\nmodel: x\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--data", str(questions), "--output", str(tmp_path / "r"),
                 "--quiet"]) == 2
    assert "bad.yaml" in _one_line_error(capsys, "train")


# ------------------------------------------------------------------ eval: output folder, prompt, dtype


def test_eval_refuses_to_overwrite_an_earlier_evaluation(tiny_run, questions, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.9}\n', encoding="utf-8")
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys, "eval")
    assert json.loads((out / "metrics.json").read_text()) == {"accuracy": 0.9}  # untouched
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_eval_states_the_dtype_in_the_summary_and_metrics(tiny_run, questions, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(tmp_path / "out")]) == 0
    assert "fp32 on cpu (auto: fp32 on the CPU" in capsys.readouterr().out
    model = json.loads((tmp_path / "out" / "metrics.json").read_text())["model"]
    assert model["dtype"] == "fp32" and model["dtype_reason"].startswith("auto: fp32 on the CPU")


def test_ask_states_the_dtype(tiny_run, capsys):
    assert main(["ask", str(tiny_run), "--question", "Q?", "--option", "a", "--option", "b", "--no-explain",
                 "--dtype", "bf16"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("(scored in bf16 on cpu: asked for")


def test_ask_json_names_the_model_and_dtype(tiny_run, capsys):
    assert main(["ask", str(tiny_run), "--question", "Q?", "--option", "a", "--option", "b", "--no-explain",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["model"]["dtype"] == "fp32" and answer["answer"] in {"A", "B"}


def test_inference_dtype_rule_is_fp32_on_the_cpu():
    assert _inference_dtype("auto", "cpu")[0] == "fp32"
    assert _inference_dtype("bf16", "cpu") == ("bf16", "asked for")


def test_prompt_format_auto_with_a_run_uses_the_runs_prompt(tiny_run, questions, tmp_path):
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(tmp_path / "out"),
                 "--prompt-format", "auto"]) == 0
    model = json.loads((tmp_path / "out" / "metrics.json").read_text())["model"]
    assert model["prompt_format"] == "chat" and model["prompt"] == "the run's saved prompt (chat)"


def test_prompt_format_plain_with_a_chat_run_is_refused(tiny_run, questions, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(tmp_path / "out"),
                 "--prompt-format", "plain"]) == 2
    assert "the run's saved prompt (chat)" in _one_line_error(capsys, "eval")


def test_prompt_format_harness_with_a_run_is_recorded(tiny_run, questions, tmp_path):
    assert main(["eval", str(tiny_run), "--data", str(questions), "--output", str(tmp_path / "out"),
                 "--prompt-format", "harness"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["prompt_format"] == "harness" and metrics["model"]["prompt"].startswith("harness: ")


def test_trust_remote_code_reaches_the_base_model_of_a_run(tiny_run, monkeypatch):
    import medtune.answer as answer

    seen = {}
    real = answer.load_base

    def load_base(*args, **options):
        seen.update(options)
        return real(*args, **options)

    monkeypatch.setattr(answer, "load_base", load_base)
    assert main(["ask", str(tiny_run), "--question", "Q?", "--option", "a", "--option", "b", "--no-explain",
                 "--trust-remote-code"]) == 0
    assert seen["trust_remote_code"] is True
