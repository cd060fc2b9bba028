import dataclasses
from pathlib import Path

import pytest
import yaml

from medtune.config import DataSource, TrainConfig, load_config, parse_overrides, parse_source

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_command_line_beats_yaml_beats_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_r: 8\nepochs: 2\nmodel: from-yaml\n")
    config = load_config(str(tmp_path / "c.yaml"), **parse_overrides(["epochs=3"]), model=None)
    assert (config.lora_r, config.epochs, config.model) == (8, 3.0, "from-yaml")
    assert config.lora_alpha == TrainConfig().lora_alpha


def test_unknown_setting_is_refused_with_the_file_name(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_rank: 8\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown setting 'lora_rank'"):
        load_config(str(tmp_path / "c.yaml"))


def test_wrongly_typed_value_is_refused():
    with pytest.raises(ValueError, match="command line: lora_r='eight' cannot work: lora_r must be an integer >= 1"):
        load_config(**parse_overrides(["lora_r=eight"]))


def test_target_modules_given_as_a_python_list_are_stored_as_a_tuple():
    assert TrainConfig(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == ("q_proj", "v_proj")


def test_target_modules_accept_a_comma_list():
    assert load_config(**parse_overrides(["lora_target_modules=q_proj,v_proj"])).lora_target_modules == (
        "q_proj", "v_proj")


def test_saved_config_round_trips(tmp_path):
    config = load_config(**parse_overrides(["lora_target_modules=q_proj,v_proj", "seed=7"]))
    config.save(tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == config


def test_override_without_equals_is_an_error():
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["lora_r"])


def test_exponent_without_a_dot_is_a_float():
    assert load_config(**parse_overrides(["learning_rate=1e-4"])).learning_rate == 1e-4


# ---------------------------------------------------------------- every field is checked up front (finding 16)

BAD_VALUES = [  # (field, a value that cannot work, what the message must say)
    ("model", "", "model='' .*non-empty text"),
    ("data", " ", "data=' ' .*non-empty text"),
    ("output", None, "output=None .*non-empty text"),
    ("eval_data", "", "eval_data='' .*non-empty text or null"),
    ("train_split", "", "train_split='' .*non-empty text"),
    ("eval_split", 3, "eval_split=3 .*non-empty text"),
    ("revision", "", "revision='' .*non-empty text or null"),
    ("answer_base", 2, "answer_base=2 .*0, 1 or null"),
    ("skip_invalid", "yes", "skip_invalid='yes' .*true or false"),
    ("limit", 0, "limit=0 .*an integer >= 1 or null"),
    ("eval_limit", 0, "eval_limit=0 .*an integer >= 1 or null"),
    ("dev_size", -1, "dev_size=-1 .*an integer >= 0"),
    ("calibration_size", -1, "calibration_size=-1 .*an integer >= 0"),
    ("prompt_format", "fancy", "prompt_format='fancy' .*one of auto, chat, plain, harness"),
    ("max_seq_len", 0, "max_seq_len=0 .*an integer >= 1"),
    ("epochs", 0.0, "epochs=0.0 .*a number > 0"),
    ("max_steps", 0, "max_steps=0 .*an integer >= 1 or null"),
    ("batch_size", 0, "batch_size=0 .*an integer >= 1"),
    ("grad_accum", 0, "grad_accum=0 .*an integer >= 1"),
    ("learning_rate", -1.0, "learning_rate=-1.0 .*a number > 0 and <= 1"),
    ("weight_decay", -0.1, "weight_decay=-0.1 .*a number >= 0"),
    ("warmup_ratio", 2.0, "warmup_ratio=2.0 .*a number from 0 to 1"),
    ("max_grad_norm", 0.0, "max_grad_norm=0.0 .*a number > 0"),
    ("lora_r", 0, "lora_r=0 .*an integer >= 1"),
    ("lora_alpha", 0, "lora_alpha=0 .*an integer >= 1"),
    ("lora_dropout", 1.5, "lora_dropout=1.5 .*a number >= 0 and < 1"),
    ("lora_target_modules", (), "lora_target_modules=\\(\\) .*'all-linear' or a non-empty list of module names"),
    ("gradient_checkpointing", 0, "gradient_checkpointing=0 .*auto, true, false or an integer n >= 1"),
    ("gradient_checkpointing", "sometimes", "gradient_checkpointing='sometimes' .*auto, true, false or an integer"),
    ("compile", "no", "compile='no' .*true or false"),
    ("eval_every", -1, "eval_every=-1 .*an integer >= 0"),
    ("save_every", -5, "save_every=-5 .*an integer >= 0"),
    ("nonfinite_patience", 0, "nonfinite_patience=0 .*an integer >= 1"),
    ("early_stopping_patience", -1, "early_stopping_patience=-1 .*an integer >= 0"),
    ("seed", -1, "seed=-1 .*an integer from 0 to 4294967295"),
    ("device", "gpu", "device='gpu' .*auto, cpu, cuda, cuda:N or mps"),
    ("cuda_visible_devices", "0; 1", "cuda_visible_devices='0; 1' .*comma-separated GPU indices or UUIDs"),
    ("hip_visible_devices", "gpu 0", "hip_visible_devices='gpu 0' .*comma-separated GPU indices or UUIDs"),
    ("dtype", "float16", "dtype='float16' .*one of auto, bf16, fp16, fp32"),
    ("attention", "flash", "attention='flash' .*one of auto, eager, sdpa, flash_attention_2"),
    ("quantize", "4-bit", "quantize='4-bit' .*one of auto, none, 4bit, 8bit"),
    ("memory_budget", "lots", "memory_budget='lots' .*a memory size such as 24GB"),
    ("fsdp", "on", "fsdp='on' .*true or false"),
    ("trust_remote_code", "true", "trust_remote_code='true' .*true or false"),
    ("resume", None, "resume=None .*true or false"),
    ("overwrite", 0, "overwrite=0 .*true or false"),
    ("exclude_overlap", "yes", "exclude_overlap='yes' .*true or false"),
    ("compare_base", "no", "compare_base='no' .*true or false"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_value_that_cannot_work_is_refused_naming_field_value_and_range(name, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{name: value})


def test_every_field_has_a_bad_value_case():
    assert {case[0] for case in BAD_VALUES} == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("pairs", [["limit=0"], ["limit=-5"], ["epochs=0"], ["eval_limit=0"], ["batch_size=0"]])
def test_command_line_value_that_cannot_work_is_refused(pairs):
    name = pairs[0].partition("=")[0]
    with pytest.raises(ValueError, match=f"^command line: {name}=.* cannot work: {name} must be"):
        load_config(**parse_overrides(pairs))


def test_yaml_value_that_cannot_work_names_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_dropout: 1.5\n")
    with pytest.raises(ValueError, match=r"c.yaml: lora_dropout=1.5 cannot work: .* >= 0 and < 1"):
        load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("path", [None, *sorted(str(p) for p in CONFIGS.glob("*.yaml"))])
def test_defaults_and_shipped_configs_validate_and_round_trip(path, tmp_path):
    config = load_config(path)  # raises ValueError on any value that cannot work
    config.save(tmp_path / "config.yaml")
    assert load_config(base=tmp_path / "config.yaml") == config


def test_shipped_configs_are_found():
    assert {p.name for p in CONFIGS.glob("*.yaml")} >= {"quickstart-cpu.yaml", "qwen3-1.7b-lora.yaml"}


def test_allowed_names_match_the_modules_that_use_them():
    from medtune import config, device, prompts

    assert set(config.DTYPES) == {"auto", *device.DTYPES}
    assert set(config.QUANTIZATIONS) == set(device.QUANTIZATIONS)
    assert set(config.PROMPT_FORMATS) == {"auto", *prompts.FORMATS}
    assert set(config.ATTENTIONS) == {"auto", *device.attention_implementations("cpu")}


@pytest.mark.parametrize("text", ["24GB", "80GiB", "1.5 GiB", "1000000", "512mib", "lots", "24 GBs", "-1GB", ""])
def test_memory_budget_accepts_what_the_planner_reads(text):
    from medtune.plan import parse_memory_size

    try:
        parse_memory_size(text)
        readable = True
    except ValueError:
        readable = False
    if readable:
        assert TrainConfig(memory_budget=text).memory_budget == text
    else:
        with pytest.raises(ValueError, match="memory_budget must be a memory size"):
            TrainConfig(memory_budget=text)


def test_yaml_integer_gpu_list_is_read_as_text(tmp_path):
    (tmp_path / "c.yaml").write_text("cuda_visible_devices: 1\n")
    assert load_config(str(tmp_path / "c.yaml")).cuda_visible_devices == "1"


# ---------------------------------------------------------------- config files a user gets wrong (finding 17)


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_r: 8\nmodel: a: b\n")
    with pytest.raises(ValueError, match=r"c.yaml: malformed YAML at line 2, column 9: mapping values are not "
                                         r"allowed here; fix the file there"):
        load_config(str(tmp_path / "c.yaml"))


def test_unclosed_yaml_list_names_where_it_was_noticed(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_r: 8\nlora_target_modules: [q_proj, v_proj\n")
    with pytest.raises(ValueError, match=r"c.yaml: malformed YAML at line 3, column 1: expected ',' or ']'"):
        load_config(str(tmp_path / "c.yaml"))


def test_missing_config_file_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^.*nope.yaml: no such config file; pass a YAML file such as "
                                                r"configs/quickstart-cpu.yaml$"):
        load_config(str(tmp_path / "nope.yaml"))


def test_folder_given_as_config_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder, not a YAML file"):
        load_config(str(tmp_path))


# ---------------------------------------------------------------- a run's saved config as the base (finding 15)


def test_run_config_round_trips_to_an_equal_config(tmp_path):
    config = TrainConfig(model="some/model", data="d.jsonl", output=str(tmp_path), lora_r=8, epochs=2.5,
                         lora_target_modules=("q_proj", "v_proj"), cuda_visible_devices="0,1", limit=100)
    config.save(tmp_path / "config.yaml")
    assert load_config(base=tmp_path / "config.yaml") == config


def test_what_the_user_passes_again_overrides_the_run_config(tmp_path):
    TrainConfig(model="some/model", lora_r=8, max_steps=10).save(tmp_path / "config.yaml")
    (tmp_path / "more.yaml").write_text("lora_r: 4\nseed: 3\n")
    config = load_config(str(tmp_path / "more.yaml"), base=tmp_path / "config.yaml", max_steps=20, resume=True,
                         model=None)
    assert (config.model, config.lora_r, config.seed, config.max_steps, config.resume) == (
        "some/model", 4, 3, 20, True)


def test_missing_run_config_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.yaml: no such config file"):
        load_config(base=tmp_path / "config.yaml")


def test_overwrite_is_off_by_default_and_saved():
    assert TrainConfig().overwrite is False and TrainConfig(overwrite=True).to_dict()["overwrite"] is True


# ---------------------------------------------------------------- data: one source, or a mixture


def test_a_single_data_path_stays_text_and_is_one_source():
    config = TrainConfig(data="train.jsonl")
    assert config.data == "train.jsonl"
    assert config.sources() == (DataSource("train.jsonl"),)


def test_a_task_prefix_names_the_reader_and_a_path_with_equals_stays_a_path():
    assert parse_source("pubmedqa=folder/ori_pqal.json") == DataSource("folder/ori_pqal.json", task="pubmedqa")
    assert parse_source("runs/a=b.jsonl") == DataSource("runs/a=b.jsonl")


def test_a_yaml_list_of_sources_with_weights_round_trips(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "data:\n"
        "  - {source: medmcqa.jsonl, weight: 3}\n"
        "  - {source: ori_pqal.json, task: pubmedqa, split: train, weight: 1}\n"
        "  - source: bank.csv\n"
        "    columns: {question: stem, options: [o1, o2], answer: key}\n"
        "    weight: 0.5\n")
    config = load_config(str(tmp_path / "c.yaml"))
    assert config.sources() == (
        DataSource("medmcqa.jsonl", weight=3.0), DataSource("ori_pqal.json", "pubmedqa", split="train", weight=1.0),
        DataSource("bank.csv", columns="question=stem,options=o1|o2,answer=key", weight=0.5))
    config.save(tmp_path / "saved.yaml")
    assert load_config(str(tmp_path / "saved.yaml")) == config


BAD_MIXTURES = [  # (data, what the message must say)
    ([{"source": "a.jsonl", "weight": 1}, {"source": "b.jsonl"}],
     r"data\[1\] has no weight while other sources have one: give every source a weight, or none"),
    ([{"source": "a.jsonl", "weight": 0}], r"data\[0\].weight=0.0 cannot work: a weight is a number > 0, the share"),
    ([{"source": "a.jsonl", "weight": "half"}], r"data\[0\].weight='half' cannot work"),
    ([{"source": "a.jsonl", "wieght": 1}], r"data\[0\] has unknown key\(s\) wieght: an entry takes source, task"),
    ([{"task": "pubmedqa"}], r"data\[0\] has no 'source'"),
    ([{"source": "a.jsonl", "task": "usmle"}], r"data\[0\].task='usmle' is not a known task; known: medmcqa"),
    ([], r"data=\(\) cannot work: data must be a path or Hub id, or a non-empty list"),
    ([{"source": "bank.csv", "columns": "question=stem"}], r"data\[0\].columns: --columns must name options=COLUMN"),
]


@pytest.mark.parametrize(("data", "message"), BAD_MIXTURES, ids=[m.split(":")[0][:30] for _, m in BAD_MIXTURES])
def test_a_mixture_that_cannot_work_is_refused_naming_the_entry(data, message, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(ValueError, match=r"c.yaml: " + message):
        load_config(str(tmp_path / "c.yaml"))
