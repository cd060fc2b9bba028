"""`medtune space`: a Docker Space folder whose app.py starts on loopback (no Docker here: run as a process),
answers /healthz and a question, requires the documented API key; the run inside is clean."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import SpaceCard

from medtune.cli import main
from medtune.publish.hub import stage
from medtune.publish.space import run_from_snapshot

QUESTION = {"question": "Which nerve is injured in wrist drop?",
            "options": ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"], "explain": False}


@pytest.fixture(scope="module")
def space(tiny_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space") / "space"
    assert main(["space", str(tiny_run), "--output", str(folder)]) == 0
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_space_folder_is_a_docker_space_with_a_clean_run(space, tiny_run):
    assert sorted(path.name for path in space.iterdir()) == ["Dockerfile", "README.md", "app.py", "medtune",
                                                             "requirements.txt", "run"]
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "docker" and card.data.app_port == 7860
    assert "MEDTUNE_API_KEY" in card.text and "not for clinical decisions" in card.text
    dockerfile = (space / "Dockerfile").read_text()
    assert 'CMD ["python", "app.py"]' in dockerfile and "EXPOSE 7860" in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile
    versions = json.loads((tiny_run / "manifest.json").read_text())["versions"]
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert f"transformers=={versions['transformers']}" in requirements and f"peft=={versions['peft']}" in requirements
    assert any(line.startswith("fastapi") for line in requirements)  # the serve extra
    assert not any(line.startswith("torch") for line in requirements)  # installed from the CPU index first
    files = sorted(path.relative_to(space / "run").as_posix() for path in (space / "run").rglob("*") if path.is_file())
    assert files == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml",
                     "manifest.json", "prompt.yaml"]
    assert (space / "medtune" / "web" / "index.html").is_file() and not list(space.rglob("__pycache__"))


def test_space_app_starts_on_loopback_and_answers_with_the_api_key(space):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MEDTUNE_API_KEY": "space-secret",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Space app did not become healthy in 120 s"
            time.sleep(0.3)
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.post(f"{url}/v1/answer", json=QUESTION, timeout=30).status_code == 401
        answer = httpx.post(f"{url}/v1/answer", json=QUESTION, timeout=30,
                            headers={"Authorization": "Bearer space-secret"}).json()
        assert answer["answer"] in "ABCD" and set(answer["probs"]) == {"A", "B", "C", "D"}
        assert abs(sum(answer["probs"].values()) - 1) < 1e-5
    finally:
        process.terminate()
        process.wait(10)


def test_app_imports_the_medtune_copied_into_the_space(space):
    # app.py's own first lines, then where `import medtune` would load from (find_spec runs no package code)
    head = (space / "app.py").read_text().split("from medtune")[0]
    found = subprocess.run([sys.executable, "-c", f"__file__ = 'app.py'\n{head}\nimport importlib.util\n"
                            "print(importlib.util.find_spec('medtune').origin)"],
                           cwd=space, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()).resolve() == (space / "medtune" / "__init__.py").resolve()


def test_a_pushed_repository_becomes_a_run_again(tiny_run, tmp_path):
    stage(tiny_run, tmp_path / "repo", "example-user/tiny", base_model="example-org/tiny-qwen3")
    run = run_from_snapshot(tmp_path / "repo", tmp_path / "run")
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tiny_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((run / "manifest.json").read_text())["base_model"]["id"] == "example-org/tiny-qwen3"
    assert (run / "prompt.yaml").read_text() == (tiny_run / "prompt.yaml").read_text()


def test_space_with_a_model_repo_copies_no_run_and_refuses_a_full_folder(tiny_run, tmp_path, capsys):
    assert main(["space", str(tiny_run), "--output", str(tmp_path / "s"), "--model-repo", "example-user/tiny"]) == 0
    assert not (tmp_path / "s" / "run").exists()
    assert "MODEL_REPO = 'example-user/tiny'" in (tmp_path / "s" / "app.py").read_text()
    assert "example-user/tiny" in SpaceCard.load(tmp_path / "s" / "README.md").data.models
    assert main(["space", str(tiny_run), "--output", str(tmp_path / "s")]) == 2
    assert "is not empty" in capsys.readouterr().err
