"""`medtune push`: the real huggingface_hub client uploads a clean staging folder -- adapter with the base's Hub id,
card, prompt, calibration, eval metrics; never checkpoints, optimizer state, logs or training data -- to a small
stand-in for the Hub's upload routes on 127.0.0.1 (the real Hub is not reachable from the test machine)."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from medtune.cli import main
from medtune.publish.hub import stage
from test_card import HUB_BASE, make_evaluated_run

REPO = "example-user/tiny-medtune"


class StandInHub:
    """The routes `HfApi.create_repo` and `HfApi.upload_folder` call (huggingface_hub 1.x/2.x): create the repo,
    validate the card's YAML, preupload (every file answered "regular": small files travel inline in the commit,
    so no LFS or Xet transfer is involved), and the ndjson commit. Records every request and the files."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers)))
                status, answer = hub.route(self.path.split("?")[0], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            return 200, {"url": f"{self.url}/{payload['organization']}/{payload['name']}"}
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            yaml.safe_load(content.split("---")[1])  # the front matter parses
            return 200, {"errors": [], "warnings": []}
        if path.startswith(f"/api/models/{REPO}/preupload/"):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if path.startswith(f"/api/models/{REPO}/commit/"):
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return 400, {"error": f"the stand-in takes regular files only, not {item['key']}"}
            return 200, {"commitUrl": f"{self.url}/{REPO}/commit/{'0' * 40}", "commitOid": "0" * 40}
        return 404, {"error": f"no route {path}"}

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tiny_qwen3, tmp_path_factory) -> Path:
    run = make_evaluated_run(tiny_run, tiny_qwen3, tmp_path_factory.mktemp("pushed"))
    (run / "train.jsonl").write_text('{"question": "training data"}\n')  # a user's file in the run folder
    return run


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in_token")
    with StandInHub() as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        yield stand_in


def test_push_uploads_the_clean_staging_through_the_real_client(evaluated_run, hub, tiny_qwen3):
    assert main(["push", str(evaluated_run), "--repo", REPO, "--base-model", HUB_BASE, "--private"]) == 0
    assert hub.created == [{"name": "tiny-medtune", "organization": "example-user", "visibility": "private",
                            "type": "model"}]
    assert all(headers.get("authorization") == "Bearer hf_stand_in_token" for _, _, headers in hub.requests)
    routes = [path.split("?")[0].rsplit("/", 1)[0] for _, path, _ in hub.requests]
    assert routes == ["/api/repos", "/api", f"/api/models/{REPO}/preupload", f"/api/models/{REPO}/commit"]
    assert sorted(hub.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "calibration.json",
                                 "config.yaml", "eval/base/metrics.json", "eval/comparison.json",
                                 "eval/tuned/metrics.json", "manifest.json", "prompt.yaml", "scoring.json",
                                 "verification.json"]
    assert hub.files["adapter_model.safetensors"] == (evaluated_run / "adapter/adapter_model.safetensors").read_bytes()
    assert json.loads(hub.files["adapter_config.json"])["base_model_name_or_path"] == HUB_BASE
    assert json.loads(hub.files["manifest.json"])["base_model"]["id"] == HUB_BASE
    assert b"not for clinical decisions" in hub.files["README.md"]
    for path, content in hub.files.items():
        for local in (str(evaluated_run.parent), str(tiny_qwen3), "/tmp/"):
            assert local.encode() not in content, (path, local)


def test_dry_run_lists_every_file_with_its_size_and_shows_the_card(evaluated_run, hub, capsys):
    assert main(["push", str(evaluated_run), "--repo", REPO, "--base-model", HUB_BASE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert hub.requests == []
    size = (evaluated_run / "adapter/adapter_model.safetensors").stat().st_size
    assert f"{size:>14,} B  adapter_model.safetensors" in out
    assert "B  eval/tuned/metrics.json" in out and "in 12 files" in out
    assert "----- README.md -----" in out and "model-index:" in out
    for forbidden in ("checkpoints", "optimizer", "metrics.jsonl", "report.json", "fingerprint", "train.jsonl"):
        assert forbidden not in out.split("----- README.md")[0]


def test_push_refuses_a_local_base_without_its_hub_id_and_a_missing_token(evaluated_run, monkeypatch, tmp_path,
                                                                           capsys):
    assert main(["push", str(evaluated_run), "--repo", REPO, "--dry-run"]) == 2
    assert "give --base-model HUB_ID" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no saved login either
    assert main(["push", str(evaluated_run), "--repo", REPO, "--base-model", HUB_BASE]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    assert main(["push", str(evaluated_run), "--repo", "not-a-repo", "--base-model", HUB_BASE, "--dry-run"]) == 2
    assert "give OWNER/NAME" in capsys.readouterr().err


def test_merged_push_stages_the_export_model_files_only(evaluated_run, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (export / name).write_text("{}")
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "verification.log").write_text(f"checked at {tmp_path}\n")
    (export / "checkpoints").mkdir()
    files = stage(evaluated_run, tmp_path / "staging", REPO, merged=export, base_model=HUB_BASE)
    names = {path.as_posix() for path in files}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "prompt.yaml"} <= names
    assert not names & {"adapter_model.safetensors", "adapter_config.json", "verification.log"}
    card = (tmp_path / "staging" / "README.md").read_text()
    assert "library_name: transformers" in card
    with pytest.raises(ValueError, match="holds no merged model"):
        stage(evaluated_run, tmp_path / "again", REPO, merged=tmp_path / "staging" / "eval", base_model=HUB_BASE)
