"""`medtune space`: a ready Docker Space folder that serves a run with `medtune serve`.

    DIR/README.md         Space front matter (sdk: docker, app_port: 7860) and how to call the API
    DIR/Dockerfile        python slim image, CPU torch, the requirements, then `python app.py` as user 1000
    DIR/requirements.txt  medtune's dependencies (and its serve extra); torch, transformers, peft and accelerate
                          pinned to the versions the run was trained with (its manifest)
    DIR/app.py            the entry point: `medtune serve`'s app on 0.0.0.0:7860, the model loaded in the background
    DIR/medtune/          the medtune package that wrote the folder, copied: the Space runs the same code, with
                          no dependence on a PyPI release of medtune
    DIR/run/              the run, clean (adapter, prompt, manifest with the base's Hub id, calibration) -- or,
                          with --model-repo, nothing: app.py downloads the pushed model repository at start-up

The API key is the server's own setting: a Space secret named MEDTUNE_API_KEY.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sys
from pathlib import Path

from medtune.publish.card import base_hub_id, scrub
from medtune.rundir import RunDir

APP_PORT = 7860  # the port Spaces route to (README front matter app_port)
API_KEY_VARIABLE = "MEDTUNE_API_KEY"  # serve.Settings.api_key reads it
PINNED = ("torch", "transformers", "peft", "accelerate")  # pinned to the run's manifest versions
RUN_FILES = ("manifest.json", "prompt.yaml", "calibration.json", "config.yaml")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

APP = '''"""The Space's entry point: serve the run with `medtune serve`'s app on $HOST:$PORT (default 0.0.0.0:{port}).

Set the Space secret {key} to require an API key on /v1/*; HF_TOKEN to read a private model repository;
MEDTUNE_DEVICE and MEDTUNE_DTYPE choose where and how it runs (default auto: fp32 on the CPU)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the medtune package copied beside this file

from medtune.publish.space import serve_space  # noqa: E402

MODEL_REPO = {model_repo!r}  # a pushed model repository to download at start-up, or None: ./run

if __name__ == "__main__":
    sys.exit(serve_space(HERE, os.environ.get("MEDTUNE_MODEL_REPO") or MODEL_REPO,
                         os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "{port}"))))
'''

DOCKERFILE = """FROM python:{python}-slim

# Spaces run the container as user 1000; its home holds the Hub cache, where the base model is downloaded at start.
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/user/.cache/huggingface
WORKDIR /home/user/app

# CPU torch from PyTorch's own index (the default PyPI wheel carries CUDA libraries a CPU Space never uses).
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user "torch=={torch}" --index-url https://download.pytorch.org/whl/cpu \\
 && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=user . .
EXPOSE {port}
CMD ["python", "app.py"]
"""


def write_space(run_dir: str | Path, output: str | Path, model_repo: str | None = None,
                base_model: str | None = None, warn=print) -> Path:
    """Write the Space folder for `run_dir` into `output` (new or empty); return it."""
    run = RunDir(run_dir).require_run()
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty; give a new folder for the Space (or empty this one)")
    manifest = run.read_manifest()
    hub_id = base_hub_id(manifest, base_model)
    if model_repo:
        from medtune.publish.hub import check_repo_id

        check_repo_id(model_repo)
    elif hub_id is None:
        warn(f"warning: the run's base model is the local folder {manifest['base_model']['id']}: the Space can "
             "only start where that folder exists; give --base-model HUB_ID for a Space on the Hub")
    output.mkdir(parents=True, exist_ok=True)
    if not model_repo:
        _copy_run(run, output / "run", hub_id)
    _copy_package(output / "medtune")
    versions = manifest.get("versions", {})
    (output / "requirements.txt").write_text(requirements(versions), encoding="utf-8")
    (output / "Dockerfile").write_text(DOCKERFILE.format(python=_python(versions), torch=_torch(versions),
                                                         port=APP_PORT), encoding="utf-8")
    (output / "app.py").write_text(APP.format(port=APP_PORT, key=API_KEY_VARIABLE, model_repo=model_repo),
                                   encoding="utf-8")
    (output / "README.md").write_text(space_readme(run, hub_id, model_repo), encoding="utf-8")
    return output


def _copy_run(run: RunDir, target: Path, hub_id: str | None) -> None:
    """The files serving needs, nothing else (no checkpoints, logs or data); the base named by its Hub id."""
    (target / "adapter").mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(run.adapter / name, target / "adapter" / name)
    for name in RUN_FILES:
        if (run.root / name).is_file():
            shutil.copyfile(run.root / name, target / name)
    if hub_id:
        manifest = scrub(run.read_manifest())
        manifest["base_model"].update(id=hub_id, kind="hub", path=None)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        config = json.loads((target / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = hub_id
        (target / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                                encoding="utf-8")


def _copy_package(target: Path) -> None:
    source = Path(__file__).resolve().parents[1]  # src/medtune (or site-packages/medtune)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def requirements(versions: dict) -> str:
    """medtune's declared dependencies plus its serve extra, torch left out (the Dockerfile installs the CPU
    build first); the libraries that decide the scores pinned to the run's versions."""
    lines = ["# medtune's dependencies (its serve extra included); torch is installed by the Dockerfile"]
    for requirement in importlib.metadata.requires("medtune") or []:
        spec, _, marker = requirement.partition(";")
        if marker and "extra" in marker and '"serve"' not in marker:
            continue
        name = re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0]
        if name == "torch":
            continue
        pinned = versions.get(name)
        lines.append(f"{name}=={pinned}" if name in PINNED and pinned else spec.strip())
    return "\n".join(dict.fromkeys(lines)) + "\n"


def _python(versions: dict) -> str:
    found = re.match(r"(\d+\.\d+)", versions.get("python", ""))
    return found.group(1) if found else f"{sys.version_info.major}.{sys.version_info.minor}"


def _torch(versions: dict) -> str:
    return (versions.get("torch") or importlib.metadata.version("torch")).split("+")[0]


def space_readme(run: RunDir, hub_id: str | None, model_repo: str | None) -> str:
    from huggingface_hub import SpaceCard, SpaceCardData

    from medtune.publish.card import _license

    manifest = run.read_manifest()
    base = hub_id or Path(manifest["base_model"]["id"]).name
    models = [name for name in (hub_id, model_repo) if name]
    data = SpaceCardData(title="medtune: medical multiple-choice answers", sdk="docker", app_port=APP_PORT,
                         license=_license(manifest, hub_id), models=models or None, emoji="🩺", colorFrom="blue",
                         colorTo="green", pinned=False, short_description="Medical MCQ answers with probabilities",
                         tags=["medical", "medtune"])
    served = f"the model repository `{model_repo}` (downloaded at start-up)" if model_repo else "the run in `run/`"
    body = f"""
# medtune: medical multiple-choice answers

Serves {served}, a LoRA adapter of `{base}`, with `medtune serve`: the answer letter, the probability of
every option and an explanation. **A research tool, not for clinical decisions.**

## API key

Set a Space secret named `{API_KEY_VARIABLE}` (Settings → Variables and secrets). Then every `/v1/*` request
needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`), and the page asks for the key. Without it the API is
open to anyone who can reach the Space. For a private model repository also set `HF_TOKEN`.

## Calling it

```bash
curl -s https://OWNER-SPACE.hf.space/v1/answer -H "Authorization: Bearer $MEDTUNE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"question": "Which nerve is injured in wrist drop?", "options": ["Radial", "Ulnar", "Median", "Axillary"]}}'
```

`GET /healthz` says whether the model has loaded; `GET /openapi.json` describes every route.

## How this folder is built

- `Dockerfile`: a python slim image, CPU torch from PyTorch's index, then `requirements.txt`; it runs
  `python app.py` on port {APP_PORT} as user 1000.
- `medtune/`: the medtune package that wrote this folder, copied, so the Space runs exactly that code.
- `requirements.txt`: medtune's dependencies; torch, transformers, peft and accelerate pinned to the versions the
  run was trained with.
- The base model is downloaded from the Hub when the Space starts (CPU, fp32).

Run it locally: `docker build -t medtune-space . && docker run -p {APP_PORT}:{APP_PORT} -e {API_KEY_VARIABLE}=KEY
medtune-space`, or without Docker: `PORT={APP_PORT} HOST=127.0.0.1 python app.py`.
"""
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}"))


# ---------------------------------------------------------------- inside the Space


def run_from_snapshot(snapshot: Path, target: Path) -> Path:
    """A run folder (adapter/, manifest.json, prompt.yaml, ...) from a repository `medtune push` wrote, whose
    adapter files sit at its root."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "adapter").mkdir(exist_ok=True)
    for name in ADAPTER_FILES:
        if not (snapshot / name).is_file():
            raise ValueError(f"the model repository has no {name}: push it with `medtune push RUN_DIR --repo ...` "
                             "(a merged export cannot be served as a run)")
        shutil.copyfile(snapshot / name, target / "adapter" / name)
    for name in RUN_FILES:
        if (snapshot / name).is_file():
            shutil.copyfile(snapshot / name, target / name)
    return RunDir(target).require_run().root


def serve_space(folder: Path, model_repo: str | None, host: str, port: int) -> int:
    """What app.py runs: `medtune serve`'s app over the run beside it (or the pushed repository, downloaded).

    The port opens at once and the model loads in the background, as the repository's own app.py does: /healthz
    answers 503 until it is ready, so the platform sees a live container while the base model downloads."""
    import uvicorn

    from medtune.answer import Answerer
    from medtune.serve import LOOPBACK, Settings, create_app

    device, dtype = os.environ.get("MEDTUNE_DEVICE", "auto"), os.environ.get("MEDTUNE_DTYPE", "auto")

    def load() -> Answerer:
        run = Path(folder) / "run"
        if model_repo:
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(model_repo, allow_patterns=[*ADAPTER_FILES, *RUN_FILES]))
            run = run_from_snapshot(snapshot, Path(folder) / "run-from-hub")
        return Answerer.from_run(run, device, dtype)

    settings = Settings()  # MEDTUNE_API_KEY, the Space secret, is read here
    if host not in LOOPBACK and not settings.api_key:
        print(f"app.py: warning: serving on {host} with no API key: anyone who can reach this Space can use the "
              f"model; set the Space secret {API_KEY_VARIABLE} to require one", file=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(load, settings), host=host, port=port, server_header=False)
    return 0
