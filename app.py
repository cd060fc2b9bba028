"""Hugging Face Space (or any container) entry point: `python app.py`.

Serves the run in $MEDTUNE_RUN_DIR, or the base model in $MEDTUNE_MODEL, on 0.0.0.0:$PORT (7860, the port
Spaces expect). The port opens at once and the model loads in the background: /healthz answers 503 until it
is ready, so the platform sees a live container rather than one that is slow to start. Other settings:
MEDTUNE_API_KEY (require a key on /v1/*), MEDTUNE_DEVICE and MEDTUNE_DTYPE (default auto).
"""

import logging
import os
import sys

import uvicorn

from medtune.answer import Answerer
from medtune.serve import Settings, create_app


def _loader():
    run_dir, model = os.environ.get("MEDTUNE_RUN_DIR"), os.environ.get("MEDTUNE_MODEL")
    if bool(run_dir) == bool(model):
        sys.exit("app.py: set exactly one of MEDTUNE_RUN_DIR (a training run) and MEDTUNE_MODEL (a model)")
    device, dtype = os.environ.get("MEDTUNE_DEVICE", "auto"), os.environ.get("MEDTUNE_DTYPE", "auto")
    if run_dir:
        return lambda: Answerer.from_run(run_dir, device, dtype)
    return lambda: Answerer.from_model(model, device, dtype)


def _warn_if_open(settings: Settings) -> None:
    # A Space is public unless made private: without a key, anyone with its URL can use the model.
    if not settings.api_key:
        print("app.py: warning: serving on 0.0.0.0 with no API key: anyone who can reach this address can use "
              "the model; set MEDTUNE_API_KEY (a Space secret) to require one", file=sys.stderr)


settings = Settings()
_warn_if_open(settings)
app = create_app(_loader(), settings)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    # 0.0.0.0: a container's port is only reachable from outside on all interfaces; the platform's proxy
    # is what faces the internet.
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "7860")), server_header=False)
