"""TrainConfig: strict keys, value rules, YAML loading and the lr scaling rule."""

import pytest

from vitsearch.config import TrainConfig, load_config
from vitsearch.errors import ConfigError


def test_defaults_are_the_documented_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.label_smoothing, cfg.grad_clip, cfg.drop_path) == \
        (1e-3, 512, 0.05, 0.1, 1.0, 0.1)
    assert cfg.warmup_epochs > 0 and cfg.scaled_lr == 1e-3


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'; valid keys: model, .*lr"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize("key, value, rule", [
    ("lr", -1e-3, "finite number > 0"),
    ("batch_size", 0, "integer >= 1"),
    ("model", "convnext_gigantic", "must be one of vit_micro"),
    ("data", "mnist", "must be digits, fashion_mnist"),
    ("data", "imagefolder", "must be digits"),
    ("precision", "fp8", "auto, fp32, bf16, fp16"),
    ("aug_strength", 1.5, "in \\[0, 1\\]"),
    ("batch_size", "big", "must be an int"),
    ("batch_size", True, "must be an int"),
    ("warmup_epochs", -1, ">= 0"),
    ("loader", "stream", "stream reads an imagefolder: dataset"),  # digits are in memory
    ("loader", "lazy", "must be one of auto, memory, stream"),
    ("loader_workers", -1, "integer >= 0"),
])
def test_invalid_values_name_key_value_and_rule(key, value, rule):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{rule}") as caught:
        TrainConfig.from_dict({key: value})
    assert repr(value) in str(caught.value) or repr(float(value)) in str(caught.value)


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().lr = 1.0


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vit_micro\nlr: 3.0e-4\nepochs: 10\nwarmup_epochs: 1\n")
    cfg = load_config(path, ["batch_size=128", "aug_strength=0"])
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.aug_strength) == ("vit_micro", 3e-4, 128, 0.0)
    assert cfg.epochs == 10 and isinstance(cfg.aug_strength, float)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: vit_micro\nlr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


def test_lr_scaling_rules():
    assert TrainConfig(batch_size=128).scaled_lr == pytest.approx(2.5e-4)
    assert TrainConfig(batch_size=128, lr_scaling="sqrt").scaled_lr == pytest.approx(5e-4)
    assert TrainConfig(batch_size=128, lr_scaling="none").scaled_lr == 1e-3
