"""YAML configs: the seed files build MixNet-S/M/L, models round-trip, and every schema error is precise."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ALL_MODELS, randomize_bn

import mixconv
from mixconv.files.config import ConfigError, load_config, save_config

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_97be5bb760ad5d4a.txt"
PACKAGED = resources.files("mixconv") / "configs"


def seed_yaml_texts() -> dict[str, str]:
    """The three configs exactly as printed in the seed document (falls back to the packaged copies)."""
    if SEED.exists():
        parts = re.split(r"^MixNet-(s|m|l)\n", SEED.read_text(), flags=re.M)
        return {f"mixnet_{n}": body.rstrip("\n") + "\n" for n, body in zip(parts[1::2], parts[2::2])}
    return {f"mixnet_{n}": (PACKAGED / f"mixnet_{n}.yaml").read_text() for n in "sml"}


@pytest.mark.parametrize("name", ["mixnet_s", "mixnet_m", "mixnet_l"])
def test_seed_configs_build_the_registered_models(name, tmp_path):
    text = seed_yaml_texts()[name]
    assert text == (PACKAGED / f"{name}.yaml").read_text(), "the packaged config must be the seed's, unchanged"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    from_yaml = mixconv.create_model(path).eval()
    registered = randomize_bn(mixconv.create_model(name), torch.randn(2, 3, 64, 64))
    assert [(k, v.shape) for k, v in from_yaml.state_dict().items()] == \
           [(k, v.shape) for k, v in registered.state_dict().items()]
    from_yaml.load_state_dict(registered.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(from_yaml(x), registered(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_config_round_trip(name, tmp_path):
    model = randomize_bn(mixconv.create_model(name), torch.randn(2, 3, 64, 64))
    path = save_config(model, tmp_path / f"{name}.yml")
    rebuilt = mixconv.create_model(path).eval()
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
           [(k, v.shape) for k, v in model.state_dict().items()]
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert load_config(path).padding == model.spec.padding and load_config(path).bn_eps == model.spec.bn_eps


def test_bare_backbone_mapping_and_defaults(tmp_path):
    doc = yaml.safe_load((PACKAGED / "mixnet_s.yaml").read_text())
    backbone = doc["model"]["architecture"]["backbone"]
    del backbone["params"]["wid_mul"], backbone["params"]["dep_mul"], backbone["params"]["dropout_rate"]
    for i, content in enumerate(({"backbone": backbone}, backbone)):
        path = tmp_path / f"bare{i}.yaml"
        path.write_text(yaml.safe_dump(content))
        spec = load_config(path)
        assert (spec.width_mult, spec.depth_mult, spec.drop_rate) == (1.0, 1.0, 0.0)


def test_dep_mul_scales_each_row_with_ceil(tmp_path):
    doc = yaml.safe_load((PACKAGED / "mixnet_s.yaml").read_text())
    doc["model"]["architecture"]["backbone"]["params"]["dep_mul"] = 1.5
    path = tmp_path / "deep.yaml"
    path.write_text(yaml.safe_dump(doc))
    model = mixconv.create_model(path)
    n_rows = [1, 1, 1, 1, 3, 1, 2, 1, 2, 1, 2]
    assert sum(len(s) for s in model.stages) == sum(-(-n * 3 // 2) for n in n_rows)


def _write(tmp_path, mutate) -> Path:
    doc = yaml.safe_load((PACKAGED / "mixnet_s.yaml").read_text())
    mutate(doc["model"]["architecture"]["backbone"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _set(path, value):
    def mutate(bb):
        target = bb
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


ERROR_CASES = {
    "unequal lengths": (_set(["stage_params", 1, "stride"], [2]), r"stage_params\[1\]\.stride: got \[2\]; expected a list of length 2"),
    "unknown activation": (_set(["stage_params", 2, "act_type"], ["swish", "mish", "swish", "swish"]),
                           r"stage_params\[2\]\.act_type\[1\]: got 'mish'; expected an activation name"),
    "zero blocks": (_set(["stage_params", 0, "num_blocks"], [1, 0, 1]), r"stage_params\[0\]\.num_blocks\[1\]: got 0; expected a positive int"),
    "negative channels": (_set(["stage_params", 3, "out_channels"], [-200, 200]), r"stage_params\[3\]\.out_channels\[0\]: got -200"),
    "wrong type": (_set(["stage_params", 0, "expansion_ratio"], ["six", 6, 3]), r"expansion_ratio\[0\]: got 'six'; expected a positive int"),
    "even kernel": (_set(["stage_params", 1, "kernel_sizes"], [[3, 4], [3]]), r"kernel_sizes\[0\]: got \[3, 4\]; expected a non-empty list of odd"),
    "bad se": (_set(["stage_params", 1, "se_reduction_ratio"], [0, 2]), r"se_reduction_ratio\[0\]: got 0"),
    "missing stage field": (lambda bb: bb["stage_params"][2].pop("num_poi_groups"), r"stage_params\[2\]\.num_poi_groups: missing"),
    "missing stem": (lambda bb: bb["params"].pop("stem_channels"), r"params\.stem_channels: missing"),
    "wrong stem type": (_set(["params", "stem_channels"], 16.5), r"params\.stem_channels: got 16.5; expected a positive int"),
    "bad wid_mul": (_set(["params", "wid_mul"], -1), r"params\.wid_mul: got -1; expected a positive number"),
    "unknown field": (_set(["params", "width"], 2), r"params\.width: got 2; expected one of the fields"),
    "bad padding": (_set(["params", "padding"], "valid"), r"params\.padding: got 'valid'; expected one of symmetric, same"),
    "not a list": (_set(["stage_params", 0, "stride"], 2), r"stage_params\[0\]\.stride: got 2; expected a non-empty list"),
    "not mixnet": (_set(["name"], "resnet"), r"name: got 'resnet'; expected 'mixnet'"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_config_errors_name_file_stage_field_value(case, tmp_path):
    mutate, pattern = ERROR_CASES[case]
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=pattern) as info:
        mixconv.create_model(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="absent.yaml: no such file"):
        load_config(tmp_path / "absent.yaml")
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)
