"""`medtune export`: a run made ready for others -- the adapter, the merged model, a GGUF file -- and checked.

    DIR/ (adapter)   adapter_config.json + adapter_model.safetensors (base_model_name_or_path: the base's Hub id),
                     README.md (the card), prompt.yaml, scoring.json, calibration.json (when the run has one),
                     verification.json
    DIR/ (--merge)   config.json + model*.safetensors (sharded at --max-shard-size), tokenizer files with the chat
                     template, generation_config.json, and the same card, prompt, scoring and verification files
    DIR/ (--gguf)    the merged model as above, plus <run>-<type>.gguf and an Ollama Modelfile

The merge runs on the CPU in fp32 (the run's compute dtype instead when fp32 weights do not fit in memory, said
so), with PEFT's safe merge, then casts to --dtype. Every export is verified, and the figures are written to
verification.json: the merged model, loaded back with plain `AutoModelForCausalLM.from_pretrained`, gives the
run's letter probabilities on a few check questions (fp32: within 1e-4), the GGUF file loaded back with
transformers gives the merged model's letters, and an adapter's weights are the run's, byte for byte.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from medtune.rundir import RunDir, write_json

CHECK_ROWS = 8  # check questions: enough to see a wrong merge, few enough to take seconds
FP32_TOLERANCE = 1e-4
ROUNDING_WARNING = 1e-2  # a 16-bit export that moves a probability by more than this is worth a sentence
DEMO = Path(__file__).resolve().parents[1] / "demo_data" / "medmcqa_demo.jsonl"
EXPORT_DTYPES = ("auto", "bf16", "fp16", "fp32")
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(RuntimeError):
    """An export refused or failed; the message says why and what to do."""


def _log(message: str) -> None:
    print(f"[medtune] {message}", file=sys.stderr)


def export(run_dir: str | Path, output: str | Path, *, merge: bool = False, dtype: str = "auto",
           max_shard_size: str = "2GB", gguf: bool = False, gguf_type: str = "bf16", base_model: str | None = None,
           check_data: str | None = None, log=_log) -> dict:
    """Export the run in `run_dir` to `output` (see the module docstring) and return what verification.json holds.
    `gguf` implies `merge` (the GGUF file is converted from the merged model); `base_model` names the base's Hub
    id when the run was trained from a local folder; `check_data` is a file of check questions (default: the
    first rows of the shipped demo set)."""
    run = RunDir(run_dir).require_run()
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"--output {output} is not empty: give a new or empty folder, so no file of an earlier "
                          "export is mistaken for this one")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype {dtype} is not one of {', '.join(EXPORT_DTYPES)}")
    if gguf:
        from medtune.publish.gguf import check_ready

        check_ready(gguf_type)
    merge = merge or gguf
    manifest = run.read_manifest()
    adapter_config = json.loads((run.adapter / "adapter_config.json").read_text(encoding="utf-8"))
    hub_id = _base_hub_id(manifest, base_model, log)
    vllm = vllm_check(adapter_config)
    for warning in vllm["warnings"]:
        log(f"warning: {warning}")
    if merge:
        _refuse_tied_targets(manifest, adapter_config)
    output.mkdir(parents=True, exist_ok=True)
    report = {"run": run.root.name, "base_model": hub_id or _public(manifest["base_model"]["id"]), "vllm": vllm}
    if merge:
        merged, merged_probs, examples = _export_merged(run, output, dtype, max_shard_size, check_data, log)
        report |= merged
    else:
        report |= _export_adapter(run, output, hub_id)
    _copy_scoring_files(run, output)
    report["card"] = _write_card(run, output, merge, hub_id, log)
    if gguf:  # after the card: the converter copies its front matter into the GGUF metadata
        report["gguf"] = _export_gguf(run, output, gguf_type, merged_probs, examples, log)
    write_json(output / "verification.json", report)
    _check_no_local_paths(run, output)
    return report


# ---------------------------------------------------------------- what the export may name


def _public(value: str) -> str:
    from medtune.publish.card import public_name

    return public_name(value)


def _base_hub_id(manifest: dict, given: str | None, log) -> str | None:
    """The base's Hub id (given, or the manifest's when it is one); a local base is named by its folder name
    only, with a warning: the training machine's paths never leave it."""
    from medtune.publish.card import base_hub_id

    hub_id = base_hub_id(manifest, given)
    if hub_id is None:
        log(f"warning: the run's base model is the local {manifest['base_model']['kind']} "
            f"{_public(manifest['base_model']['id'])!r}, not a Hub id: the export names it by that name only; "
            "pass --base-model OWNER/NAME to name the Hub model it is")
    return hub_id


def _check_no_local_paths(run: RunDir, output: Path) -> None:
    from medtune.publish.card import check_public, local_roots

    roots = local_roots(run.root)
    vocabulary = ("tokenizer.json", "vocab.json", "merges.txt")  # tokens such as "/root" are not paths
    for path in output.iterdir():
        if path.suffix in (".json", ".yaml", ".md", "") and path.is_file() and path.name not in vocabulary:
            check_public(path.read_text(encoding="utf-8", errors="replace"), roots, f"{path.name} of the export")


# ---------------------------------------------------------------- checks: vLLM, tied embeddings, quantized bases


def vllm_check(adapter_config: dict) -> dict:
    """What vLLM (`--enable-lora`) needs of a LoRA adapter, checked from adapter_config.json alone: a rank within
    --max-lora-rank (default 16; larger values must be passed), no modules_to_save, no DoRA."""
    ranks = [adapter_config.get("r") or 0, *(adapter_config.get("rank_pattern") or {}).values()]
    rank = max(ranks)
    flag = next((value for value in VLLM_LORA_RANKS if value >= rank), None)
    warnings = []
    if flag is None:
        warnings.append(f"vLLM cannot load this adapter: its LoRA rank {rank} is above the largest "
                        f"--max-lora-rank vLLM accepts ({VLLM_LORA_RANKS[-1]}); serve the merged export instead")
    elif rank > VLLM_DEFAULT_MAX_LORA_RANK:
        warnings.append(f"vLLM loads LoRA ranks up to {VLLM_DEFAULT_MAX_LORA_RANK} by default and this adapter has "
                        f"rank {rank}: start vLLM with --enable-lora --max-lora-rank {flag}")
    if adapter_config.get("modules_to_save"):
        warnings.append(f"vLLM does not load adapters with modules_to_save ({adapter_config['modules_to_save']}); "
                        "serve the merged export (--merge) instead")
    if adapter_config.get("use_dora"):
        warnings.append("vLLM does not load DoRA adapters (use_dora: true); serve the merged export (--merge) "
                        "instead")
    loads = flag is not None and not adapter_config.get("modules_to_save") and not adapter_config.get("use_dora")
    return {"loads": loads, "rank": rank, "max_lora_rank_flag": flag if flag and rank > VLLM_DEFAULT_MAX_LORA_RANK
            else None, "warnings": warnings}


def _refuse_tied_targets(manifest: dict, adapter_config: dict) -> None:
    from medtune.modeling import model_config, tied_embedding_targets, untie_recipe

    base = manifest["base_model"]
    config = model_config(base["id"], base.get("revision"))
    targets = tied_embedding_targets(config, adapter_config.get("target_modules"),
                                     adapter_config.get("modules_to_save"))
    if targets:
        raise ExportError(f"cannot merge this adapter: it changes {', '.join(targets)} of a model whose input and "
                          "output embeddings are one shared (tied) matrix, so merging would write the change into "
                          "both (PEFT's ensure_weight_tying even adds it twice); export the adapter without "
                          f"--merge, or retrain on an untied copy of the base ({untie_recipe()})")


def merge_adapter(model):
    """PEFT's safe merge (it checks the merged weights for NaN/inf) of a LoRA model whose base is not quantized."""
    from medtune.modeling import quiet_peft

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        raise ExportError("cannot merge into a 4-bit or 8-bit base: the merged weights would be re-quantized and "
                          "the adapter's change lost in rounding; load the base in 16-bit or fp32 and merge there "
                          "(`medtune export RUN_DIR --merge` does that for a QLoRA run)")
    with quiet_peft():
        return model.merge_and_unload(safe_merge=True)


# ---------------------------------------------------------------- the adapter


def _export_adapter(run: RunDir, output: Path, hub_id: str | None) -> dict:
    """The adapter's files, with base_model_name_or_path set to the Hub id (or the local base's name only)."""
    from medtune.data import file_sha256

    for name in ADAPTER_FILES:
        shutil.copyfile(run.adapter / name, output / name)
    config_path = output / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub_id or _public(config.get("base_model_name_or_path") or "")
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    same = file_sha256(run.adapter / ADAPTER_FILES[1]) == file_sha256(output / ADAPTER_FILES[1])
    if not same:
        raise ExportError(f"the copied {ADAPTER_FILES[1]} differs from the run's: the disk may be full; try again")
    return {"kind": "adapter", "adapter_weights_identical": same,
            "base_model_name_or_path": config["base_model_name_or_path"]}


def _copy_scoring_files(run: RunDir, output: Path) -> None:
    """prompt.yaml, calibration.json (when present) and scoring.json: what a consumer needs to score as medtune
    does."""
    from medtune.data import LETTERS
    from medtune.prompts import PromptTemplate

    shutil.copyfile(run.prompt, output / "prompt.yaml")
    calibration = run.root / "calibration.json"
    if calibration.is_file():
        shutil.copyfile(calibration, output / "calibration.json")
    template = PromptTemplate.load(run.prompt)
    write_json(output / "scoring.json", {
        "method": "one forward pass per question; the logits at the last prompt token, restricted to the option "
                  "letters' token ids, softmax over the question's options; the top letter is the answer (an "
                  "exact tie has none)",
        "prompt_format": template.format, "prompt_file": "prompt.yaml",
        "prompt_ends_with": template.answer_prefix, "add_special_tokens": template.add_special_tokens,
        "letters": list(LETTERS), "letter_texts": [template.letter_text(letter) for letter in LETTERS],
        "enable_thinking": template.enable_thinking,
        "dtype_rule": "the model may run in bf16, fp16 or fp32; the letter logits are computed in fp32 (medtune "
                      "scores in fp32 on the CPU, where it is batch-exact)",
        "calibration": "calibration.json: divide the option log-probabilities by its temperature and renormalize"
                       if calibration.is_file() else None,
    })


def _write_card(run: RunDir, output: Path, merged: bool, hub_id: str | None, log) -> str | None:
    try:
        from medtune.publish.card import write_card
    except ImportError:
        log("note: medtune.publish.card is not available; the export has no model card (README.md)")
        return None
    return write_card(run.root, output, merged=merged, base_model=hub_id).name


# ---------------------------------------------------------------- the merged model


def check_examples(check_data: str | None = None, rows: int = CHECK_ROWS):
    """The check questions: the first `rows` of `check_data`, default the shipped demo set (written for medtune,
    never a benchmark's rows)."""
    from medtune.data import load_examples

    examples, _ = load_examples(check_data or str(DEMO), limit=rows)
    return examples


def raw_probabilities(model, tokenizer, template, examples) -> list[list[float]]:
    """Each question's option probabilities from medtune's one scorer, before any calibration temperature."""
    from medtune.evaluate import choice_logprobs

    logprobs = choice_logprobs(model, tokenizer, template, examples, batch_size=CHECK_ROWS)
    return [[float(value) for value in logprobs[i, : len(e.options)].double().exp()] for i, e in enumerate(examples)]


def compare_probabilities(expected: list[list[float]], actual: list[list[float]]) -> dict:
    """The largest absolute difference of any option's probability, and whether every top letter agrees."""
    from medtune.answer import chosen_letter
    from medtune.data import LETTERS

    def letters(table):
        return [chosen_letter(dict(zip(LETTERS, row))) for row in table]

    difference = max(abs(a - b) for row_a, row_b in zip(expected, actual) for a, b in zip(row_a, row_b))
    return {"max_abs_prob_difference": difference, "letters": letters(actual),
            "same_letters": letters(expected) == letters(actual)}


def merge_dtype(manifest: dict) -> tuple[str, str]:
    """(dtype, reason) for the merge: fp32 (exact) when the fp32 weights fit in the memory available now (with
    room to load them), else the run's compute dtype."""
    from medtune.device import available_cpu_memory
    from medtune.plan import human_bytes

    need = int(_parameter_count(manifest) * 4 * 1.5)
    available = available_cpu_memory()
    if available is None or need <= available:
        return "fp32", (f"fp32, where PEFT's merge is exact (about {human_bytes(need)} needed, "
                        f"{human_bytes(available) if available else 'unknown'} available)")
    fallback = manifest.get("dtype") if manifest.get("dtype") in ("bf16", "fp16") else "bf16"
    return fallback, (f"{fallback}, the run's compute dtype: fp32 weights need about {human_bytes(need)} and only "
                      f"{human_bytes(available)} of memory is available")


def _parameter_count(manifest: dict) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from medtune.modeling import model_config

    base = manifest["base_model"]
    config = model_config(base["id"], base.get("revision"))
    if config is None:  # a GGUF base: the manifest's count (total includes the adapter's few)
        return int(manifest.get("parameters", {}).get("total", 0))
    with init_empty_weights():
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def _export_merged(run: RunDir, output: Path, dtype: str, max_shard_size: str, check_data: str | None,
                   log) -> tuple[dict, list[list[float]], list]:
    """Merge, save and check; (the report, the merged model's probabilities, the check questions)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.answer import Answerer
    from medtune.device import DTYPES

    manifest = run.read_manifest()
    load_dtype, reason = merge_dtype(manifest)
    log(f"merging on the CPU in {reason}")
    if manifest["base_model"].get("quantization", "none") != "none":
        log(f"note: the run trained on a {manifest['base_model']['quantization']} base (QLoRA); the adapter is "
            "merged into the 16/32-bit base, and the check compares with the run scored on that base")
    # unfolded: the run's own (unmerged) scores are what the merged checkpoint is checked against
    answerer = Answerer.from_run(run.root, device="cpu", dtype=load_dtype, quantize="none", fold=False)
    template, examples = answerer.template, check_examples(check_data)
    run_probs = raw_probabilities(answerer.model, answerer.tokenizer, template, examples)
    merged = merge_adapter(answerer.model)
    saved_dtype = dtype if dtype != "auto" else checkpoint_dtype(manifest)
    merged = merged.to(DTYPES[saved_dtype])
    merged.save_pretrained(output, max_shard_size=max_shard_size)
    answerer.tokenizer.save_pretrained(output)  # tokenizer.json, its config and chat_template.jinja
    _write_generation_config(merged, answerer.tokenizer, output)
    del answerer, merged
    reloaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()  # plain transformers
    merged_probs = raw_probabilities(reloaded, AutoTokenizer.from_pretrained(output), template, examples)
    check = compare_probabilities(run_probs, merged_probs)
    tolerance = FP32_TOLERANCE if saved_dtype == "fp32" and load_dtype == "fp32" else None
    log(f"check on {len(examples)} questions: max |p(merged) - p(run)| = {check['max_abs_prob_difference']:.2e}, "
        f"same letters: {check['same_letters']}")
    if tolerance is not None and check["max_abs_prob_difference"] > tolerance:
        raise ExportError(f"the merged fp32 model's letter probabilities differ from the run's by "
                          f"{check['max_abs_prob_difference']:.2e} (more than {tolerance}): the merge is wrong; "
                          "report this as a medtune bug")
    if not check["same_letters"]:
        log(f"warning: in {saved_dtype} the merged model chooses a different letter than the run on some check "
            "questions (rounding of near-ties); export in fp32 for exact scores")
    elif tolerance is None and check["max_abs_prob_difference"] > ROUNDING_WARNING:
        log(f"warning: rounding the merged weights to {saved_dtype} moves the letter probabilities by up to "
            f"{check['max_abs_prob_difference']:.3f} from the run's (it erases part of a small adapter's change); "
            "--dtype fp32 keeps them exact at twice the size")
    shards = sorted(path.name for path in output.glob("model*.safetensors"))
    report = {"kind": "merged", "merge_dtype": load_dtype, "merge_dtype_reason": reason, "dtype": saved_dtype,
              "max_shard_size": max_shard_size, "shards": shards, "loads_with_auto_model": True,
              "check_questions": [e.id for e in examples], "merged_vs_run": check, "tolerance": tolerance}
    return report, merged_probs, examples


def checkpoint_dtype(manifest: dict) -> str:
    """'auto': the dtype the base checkpoint was saved in (its config.json's dtype, read from the file: the
    loaded model's config says the dtype it was loaded in), fp32 when it does not say."""
    from medtune.modeling import model_config

    base = manifest["base_model"]
    config = model_config(base["id"], base.get("revision"))
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(str(saved).removeprefix("torch."), "fp32")


def _write_generation_config(model, tokenizer, output: Path) -> None:
    """generation_config.json: the base's, or one made from the model config, ending at the chat's end token."""
    from transformers import GenerationConfig

    config = model.generation_config if model.generation_config is not None else (
        GenerationConfig.from_model_config(model.config))
    if config.eos_token_id is None and tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
    config.save_pretrained(output)


# ---------------------------------------------------------------- GGUF and the Modelfile


def _export_gguf(run: RunDir, output: Path, gguf_type: str, merged_probs, examples, log) -> dict:
    from medtune.modeling import load_base
    from medtune.prompts import PromptTemplate
    from medtune.publish.gguf import convert, modelfile_text

    name = f"{re.sub(r'[^A-Za-z0-9._-]+', '-', run.root.name)}-{gguf_type}.gguf"
    log(f"converting to GGUF ({gguf_type}) with llama.cpp's converter ...")
    path = convert(output, output / name, gguf_type)
    template = PromptTemplate.load(run.prompt)
    model, tokenizer, _ = load_base(str(path), "fp32")  # transformers' GGUF reader, de-quantized to fp32
    check = compare_probabilities(merged_probs, raw_probabilities(model, tokenizer, template, examples))
    log(f"GGUF check: max |p(gguf) - p(merged)| = {check['max_abs_prob_difference']:.2e}, same letters: "
        f"{check['same_letters']}")
    if not check["same_letters"]:
        log(f"warning: the {gguf_type} GGUF chooses a different letter than the merged model on some check "
            "questions; use --gguf-type bf16 or f32 for a closer copy")
    stops = [token for token in (tokenizer.eos_token, "<|im_end|>") if token and token in tokenizer.get_vocab()]
    (output / "Modelfile").write_text(modelfile_text(name, template, stops), encoding="utf-8")
    return {"file": name, "type": gguf_type, "bytes": path.stat().st_size, "loads_with_transformers": True,
            "gguf_vs_merged": check, "modelfile": "Modelfile"}
