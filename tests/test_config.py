import pytest

from medtune.config import TrainConfig, load_config, parse_overrides


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
    with pytest.raises(ValueError, match="'lora_r' must be int"):
        load_config(**parse_overrides(["lora_r=eight"]))


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
