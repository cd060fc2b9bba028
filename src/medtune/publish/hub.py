"""`medtune push`: a run (or its merged export) to a Hugging Face Hub model repository.

What goes up is a staging folder built from an allow-list, never the run folder itself:

    README.md                      the model card (`card.write_card`)
    adapter_config.json            base_model_name_or_path = the base's Hub id, never a local path
    adapter_model.safetensors      the adapter (at the root, where PEFT and the Hub look for it)
    prompt.yaml, scoring.json      the prompt the run trained with and how medtune scores (`medtune export`'s
    verification.json              adapter copy makes these and checks the adapter weights are the run's)
    manifest.json, config.yaml     the run's records with local paths reduced to file names
    calibration.json               the temperature, when the run has one
    eval/<name>/metrics.json, eval/comparison.json, suite/suite.json   the figures the card cites

With `--merged EXPORT_DIR` (a folder from `medtune export RUN_DIR --merge`) the model files of that folder
(weights, config, tokenizer, generation config, GGUF and Modelfile when present) replace the adapter files.
Never staged: checkpoints/ (optimizer and RNG state), metrics.jsonl and report.json (logs naming local paths),
training_fingerprint.json and any training data.

The upload is `HfApi.create_repo` + `HfApi.upload_folder`; the token is huggingface_hub's own choice (HF_TOKEN,
else the login saved by `hf auth login`), and HF_ENDPOINT points it at another Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from medtune.publish.card import (
    CARD_FILE,
    base_hub_id,
    check_public,
    default_evals,
    is_local_path,
    local_roots,
    scrub,
    write_card,
)
from medtune.rundir import RunDir, write_json

# A merged export's model files, by name pattern; anything else in the folder stays home.
MERGED_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                   "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "*.gguf", "Modelfile", "scoring.json", "verification.json")
VOCABULARY = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json")
# Never uploaded, whatever a folder holds: resumable state, optimizer state, training logs and data.
FORBIDDEN = ("checkpoints", "optimizer.pt", "scheduler.pt", "rng_state", "trainer_state.json", "metrics.jsonl",
             "report.json", "training_fingerprint.json")


def _forbidden(relative: Path) -> bool:
    return any(part in FORBIDDEN or part.startswith(FORBIDDEN) for part in relative.parts)


def check_repo_id(repo_id: str) -> str:
    owner, _, name = repo_id.partition("/")
    if not owner or not name or "/" in name or is_local_path(repo_id):
        raise ValueError(f"--repo {repo_id!r} is not a Hub repository id; give OWNER/NAME, e.g. "
                         "your-name/qwen3-medmcqa-lora")
    return repo_id


def stage(run_dir: str | Path, staging: str | Path, repo_id: str | None = None, merged: str | Path | None = None,
          base_model: str | None = None, evals=(), suite: str | Path | None = None) -> list[Path]:
    """Write the files to publish into `staging` (an empty or new folder); return them, relative to it."""
    run = RunDir(run_dir).require_run()
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    manifest = run.read_manifest()
    hub_id = base_hub_id(manifest, base_model)
    if hub_id is None and merged is None:
        raise ValueError(f"the run's base model is the local folder {Path(manifest['base_model']['id']).name}, "
                         "which nobody else can download; give --base-model HUB_ID (the Hub id of the same "
                         "weights) so the adapter names a model others can load")
    if merged is not None:
        _stage_merged(Path(merged), staging)
    else:  # `medtune export`'s adapter copy: adapter files, prompt.yaml, scoring.json, verification.json
        from medtune.publish.export import export

        export(run.root, staging, base_model=hub_id, log=lambda message: None)
    shutil.copyfile(run.prompt, staging / "prompt.yaml")
    _write_json(staging / "manifest.json", _public_manifest(manifest, hub_id))
    if run.config.exists():
        config = scrub(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {})
        config["model"] = hub_id or config.get("model")
        (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if (run.root / "calibration.json").is_file():
        _copy_json(run.root / "calibration.json", staging / "calibration.json")
    folders = [Path(folder) for folder in evals] or default_evals(run.root)
    for folder in folders:
        _copy_json(folder / "metrics.json", staging / "eval" / folder.name / "metrics.json")
    if (run.root / "eval" / "comparison.json").is_file():
        _copy_json(run.root / "eval" / "comparison.json", staging / "eval" / "comparison.json")
    if suite:
        _copy_json(Path(suite) / "suite.json", staging / "suite" / "suite.json")
    write_card(run.root, staging, folders, suite, merged=merged is not None, base_model=hub_id, repo_id=repo_id)
    files = sorted(path.relative_to(staging) for path in staging.rglob("*") if path.is_file())
    _check_staged(staging, files, local_roots(run.root))
    return files


def _stage_merged(export: Path, staging: Path) -> None:
    """A merged export's model files (by `MERGED_PATTERNS`); refuses a folder that holds no merged model."""
    if not (export / "config.json").is_file() or not any(export.glob("*.safetensors")):
        raise ValueError(f"--merged {export} holds no merged model (config.json and *.safetensors); write one "
                         "with `medtune export RUN_DIR --merge --output DIR` and push DIR")
    for path in sorted(export.iterdir()):
        if path.is_file() and any(path.match(pattern) for pattern in MERGED_PATTERNS):
            shutil.copyfile(path, staging / path.name)  # verbatim: scrubbing would rewrite tokens like "/usr"


def _public_manifest(manifest: dict, hub_id: str | None) -> dict:
    """The manifest with local paths reduced to names, and the base named by its Hub id (what a Space or
    another machine will load)."""
    public = scrub(manifest)
    base = public.get("base_model", {})
    if hub_id:
        base.update(id=hub_id, kind="hub", path=None)
    return public


def _copy_json(source: Path, target: Path) -> None:
    _write_json(target, scrub(json.loads(source.read_text(encoding="utf-8"))))


def _write_json(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, values)  # the run's own writer: no NaN reaches a published file


def _check_staged(staging: Path, files: list[Path], roots: list[str]) -> None:
    """The allow-list is the guard; this is the second one: no forbidden file, no local path in a text file."""
    for relative in files:
        if _forbidden(relative):
            raise ValueError(f"{relative} was staged for upload; it must never be: this is a medtune bug")
        if relative.name in VOCABULARY:  # tokens such as "/root" are text, not paths
            continue
        if relative.suffix in (".json", ".yaml", ".md", ".jinja") or relative.name == "Modelfile":
            check_public((staging / relative).read_text(encoding="utf-8", errors="replace"), roots, str(relative))


def describe(staging: Path, files: list[Path]) -> str:
    """Every staged file with its size, then the card: what `--dry-run` prints."""
    sizes = [(staging / relative).stat().st_size for relative in files]
    lines = [f"{size:>14,} B  {relative.as_posix()}" for relative, size in zip(files, sizes)]
    lines.append(f"{sum(sizes):>14,} B  in {len(files)} files")
    card = (staging / CARD_FILE).read_text(encoding="utf-8")
    return "\n".join(lines) + f"\n\n----- {CARD_FILE} -----\n{card}"


def push(run_dir: str | Path, repo_id: str, merged: str | Path | None = None, private: bool = False,
         dry_run: bool = False, base_model: str | None = None, evals=(), suite: str | Path | None = None,
         endpoint: str | None = None, token: str | None = None, out=print) -> str | None:
    """Stage the run and upload it to `repo_id` (created if missing); returns the commit URL (None for a dry run).

    `endpoint`: another Hub (default $HF_ENDPOINT, else huggingface.co); `token`: default huggingface_hub's
    (HF_TOKEN, else the saved login)."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="medtune-push-") as folder:
        staging = Path(folder) / "repo"
        files = stage(run_dir, staging, repo_id, merged, base_model, evals, suite)
        out(describe(staging, files))
        if dry_run:
            out(f"dry run: nothing was uploaded; without --dry-run these {len(files)} files go to {repo_id}")
            return None
        return _upload(staging, repo_id, private, endpoint or os.environ.get("HF_ENDPOINT") or None, token, out)


def _upload(staging: Path, repo_id: str, private: bool, endpoint: str | None, token: str | None, out) -> str:
    from huggingface_hub import HfApi, get_token

    if not (token or get_token()):
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access), "
                         "or look first with --dry-run")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                                   commit_message="medtune push: adapter, card, prompt and evaluation")
    except Exception as error:  # the HTTP client's connection errors are not OSErrors: say them in one line
        if isinstance(error, OSError) or not type(error).__module__.startswith(("httpx", "httpcore")):
            raise
        raise ValueError(f"cannot reach the Hub at {api.endpoint} ({error}); check the network, or HF_ENDPOINT "
                         "if it is set") from error
    out(f"pushed to {url}: {commit.commit_url}")
    return commit.commit_url
