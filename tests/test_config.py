"""Run configs: YAML files, key=value overrides, errors that name the key, and `show-config`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from alignlab.config import RUN_CONFIGS, load_config, parse_overrides, to_dict
from alignlab.errors import ConfigError


def write_yaml(path, text: str):
    path.write_text(text)
    return str(path)


def test_yaml_file_then_overrides_win(tmp_path):
    path = write_yaml(
        tmp_path / "run.yaml",
        "model:\n  name_or_path: some/model\n"
        "train:\n  lr: 1e-4\n  max_steps: 7\n  batch_size: 2\n"
        "lora:\n  enabled: true\n  r: 4\n",
    )
    config = load_config("sft", path, ["train.max_steps=9", "lora.r=8"])
    assert config.model.name_or_path == "some/model"
    # `lr: 1e-4` in a YAML file is a float (plain YAML 1.1 would read it as the string "1e-4").
    assert isinstance(config.train.lr, float) and config.train.lr == pytest.approx(1e-4)
    assert config.train.batch_size == 2  # from the file
    assert config.train.max_steps == 9 and config.lora.r == 8  # overrides beat the file
    assert config.lora.enabled is True
    # Untouched keys keep the dataclass defaults.
    assert config.train.grad_accum == RUN_CONFIGS["sft"]().train.grad_accum


@pytest.mark.parametrize(
    "override, getter, expected",
    [
        ("train.report_to=[a,b]", lambda c: c.train.report_to, ["a", "b"]),
        ("train.report_to=wandb", lambda c: c.train.report_to, ["wandb"]),  # a scalar becomes a one-item list
        ("lora.enabled=true", lambda c: c.lora.enabled, True),
        ("lora.enabled=false", lambda c: c.lora.enabled, False),
        ("train.lr=1e-4", lambda c: c.train.lr, 1e-4),
        ("train.lr=3", lambda c: c.train.lr, 3.0),
        ("train.max_steps=12", lambda c: c.train.max_steps, 12),
        ("data.eval=null", lambda c: c.data.eval, None),
        ("data.max_rows=null", lambda c: c.data.max_rows, None),
        ("lora.target_modules=[q_proj,v_proj]", lambda c: c.lora.target_modules, ["q_proj", "v_proj"]),
        ("data.columns={prompt: question}", lambda c: c.data.columns, {"prompt": "question"}),
    ],
)
def test_override_value_types(override, getter, expected):
    value = getter(load_config("sft", None, [override]))
    assert value == expected
    assert type(value) is type(expected)


def test_null_override_clears_a_value_from_the_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", "data:\n  train: a.jsonl\n  eval: b.jsonl\n  max_rows: 5\n")
    assert load_config("sft", path).data.eval == "b.jsonl"
    config = load_config("sft", path, ["data.eval=null", "data.max_rows=null"])
    assert config.data.eval is None and config.data.max_rows is None
    assert config.data.train == "a.jsonl"


def test_float_lists_parse_in_overrides_and_files(tmp_path):
    config = load_config("grpo", None, ["grpo.rewards=[a,b]", "grpo.reward_weights=[1e-1,2]"])
    assert config.grpo.reward_weights == [pytest.approx(0.1), 2.0]
    path = write_yaml(tmp_path / "g.yaml", "grpo:\n  rewards: [a, b]\n  reward_weights: [5e-1, 1]\n")
    assert load_config("grpo", path).grpo.reward_weights == [0.5, 1.0]


def test_override_value_may_contain_equals_sign():
    assert parse_overrides(["data.system_prompt=a=b"]) == {"data.system_prompt": "a=b"}


@pytest.mark.parametrize(
    "override, named, suggestion",
    [
        ("train.lrr=1e-4", "train.lrr", "train.lr"),
        ("train.max_step=3", "train.max_step", "train.max_steps"),
        ("lora.enable=true", "lora.enable", "lora.enabled"),
        ("trian.lr=1e-4", "trian", "train"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(override, named, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config("sft", None, [override])
    message = str(info.value)
    assert f"'{named}'" in message
    assert f"Did you mean '{suggestion}'" in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*'train\.lr'"):
        load_config("sft", path)


def test_section_of_another_trainer_is_unknown():
    """`dpo.*` keys do not exist in an SFT config: they must fail, not be ignored."""
    with pytest.raises(ConfigError, match="'dpo'"):
        load_config("sft", None, ["dpo.beta=0.2"])
    assert load_config("dpo", None, ["dpo.beta=0.2"]).dpo.beta == 0.2


@pytest.mark.parametrize(
    "override, key, expected_type",
    [
        ("train.max_steps=abc", "train.max_steps", "integer"),
        ("train.max_steps=2.5", "train.max_steps", "integer"),
        ("train.lr=fast", "train.lr", "number"),
        ("lora.enabled=maybe", "lora.enabled", "true or false"),
        ("lora.enabled=1", "lora.enabled", "true or false"),
        ("data.max_rows=abc", "data.max_rows", "int or null"),
        ("train.report_to={a: 1}", "train.report_to", "list"),
        ("data.columns=[a]", "data.columns", "mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(override, key, expected_type):
    with pytest.raises(ConfigError) as info:
        load_config("sft", None, [override])
    message = str(info.value)
    assert f"'{key}'" in message and expected_type in message


def test_validation_rejects_bad_values():
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("sft", None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match="data.on_long"):
        load_config("sft", None, ["data.on_long=keep"])
    with pytest.raises(ConfigError, match="reward_weights"):
        load_config("grpo", None, ["grpo.rewards=[a,b]", "grpo.reward_weights=[1]"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("sft", None, ["train.lr"])


def test_required_keys_exist():
    required = [
        "model.name_or_path", "data.train", "data.eval", "train.max_steps", "train.batch_size",
        "train.grad_accum", "train.lr", "train.seed", "train.output_dir", "lora.enabled",
    ]
    for command in ("sft", "dpo", "grpo"):
        values = to_dict(RUN_CONFIGS[command]())
        for key in required:
            section, name = key.split(".")
            assert name in values[section], f"{command}: {key} missing"
    assert "beta" in to_dict(RUN_CONFIGS["dpo"]())["dpo"]
    assert "num_generations" in to_dict(RUN_CONFIGS["grpo"]())["grpo"]


def test_config_sections_are_closed_dataclasses():
    config = RUN_CONFIGS["sft"]()
    assert {f.name for f in dataclasses.fields(config)} == {"model", "data", "train", "lora"}


def test_show_config_prints_resolved_config(cli, tmp_path):
    result = cli(["show-config", "train.lr=5e-4", "train.report_to=[tensorboard]", "lora.enabled=true"])
    assert result.code == 0, result.err
    printed = yaml.safe_load(result.out)
    assert printed["train"]["lr"] == pytest.approx(5e-4)
    assert printed["train"]["report_to"] == ["tensorboard"]
    assert printed["lora"]["enabled"] is True
    assert "dpo" not in printed and "grpo" not in printed  # sft by default
    # What it prints is a complete config: fed back as a file it resolves to the same values.
    path = write_yaml(tmp_path / "printed.yaml", result.out)
    assert to_dict(load_config("sft", path)) == printed


def test_show_config_guesses_trainer_from_file(cli, tmp_path):
    path = write_yaml(tmp_path / "dpo.yaml", "dpo:\n  beta: 0.3\n")
    result = cli(["show-config", "-c", path, "dpo.loss_type=ipo"])
    assert result.code == 0, result.err
    printed = yaml.safe_load(result.out)
    assert printed["dpo"]["beta"] == 0.3 and printed["dpo"]["loss_type"] == "ipo"
    result = cli(["show-config", "--command", "grpo", "grpo.num_generations=4"])
    assert result.code == 0 and yaml.safe_load(result.out)["grpo"]["num_generations"] == 4


def test_show_config_unknown_key_exits_2(cli):
    result = cli(["show-config", "train.lrr=1"])
    assert result.code == 2
    assert "train.lrr" in result.err and "train.lr" in result.err
    assert "Traceback" not in result.err and result.out == ""


def test_every_shipped_config_loads_for_its_command_and_names_existing_files():
    """Each configs/*.yaml names its command in its header (`alignlab <command> -c configs/<file>`),
    loads as that command's config, and every local data file it names is in the repository."""
    import re

    root = Path(__file__).resolve().parent.parent
    configs = sorted((root / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        text = path.read_text()
        commands = set(re.findall(rf"alignlab (\w+) -c configs/{re.escape(path.name)}", text))
        assert len(commands) == 1, f"{path.name}: header names no single command ({commands})"
        config = load_config(commands.pop(), str(path))
        sections = [config.data] + ([config.iterate] if hasattr(config, "iterate") else [])
        for section in sections:
            for field_name in ("train", "eval", "prompts", "eval_prompts"):
                value = getattr(section, field_name, None)
                if isinstance(value, str) and "data/" in value and not value.startswith("runs/"):
                    # read beside the config (configs/data/, which data/ links to): an absolute path once loaded
                    assert Path(value).is_file(), f"{path.name}: {field_name}={value} is not in the repository"


def test_readme_set_up_commands_are_what_ci_runs():
    """README's second set-up command (install and test) is the command `.ci/run` ends with, so CI
    proves the documented one; the first one runs the demo."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## Set-up: two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and commands[0].endswith("alignlab demo")
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == commands[1]


# ------------------------------------------------------------------------------ ranges, `no`, suggestions


@pytest.mark.parametrize(
    "command, override, allowed",
    [
        ("sft", "train.lr=-1e-4", "'train.lr' must be > 0"),
        ("sft", "train.lr=0", "'train.lr' must be > 0"),
        ("sft", "train.lr=nan", "'train.lr' must be > 0"),
        ("sft", "train.weight_decay=-0.1", "'train.weight_decay' must be >= 0"),
        ("sft", "train.warmup_steps=-1", "'train.warmup_steps' must be >= 0"),
        ("sft", "train.adam_beta1=1", "'train.adam_beta1' must be in [0, 1)"),
        ("sft", "train.adam_beta2=-0.5", "'train.adam_beta2' must be in [0, 1)"),
        ("sft", "train.max_grad_norm=-1", "'train.max_grad_norm' must be >= 0"),
        ("sft", "train.log_every=0", "'train.log_every' must be >= 1"),
        ("sft", "train.save_total_limit=0", "'train.save_total_limit' must be >= 1"),
        ("sft", "lora.r=0", "'lora.r' must be >= 1"),
        ("sft", "lora.dropout=1", "'lora.dropout' must be in [0, 1)"),
        ("sft", "data.eval_fraction=1", "'data.eval_fraction' must be in [0, 1)"),
        ("dpo", "dpo.beta=0", "'dpo.beta' must be > 0"),
        ("dpo", "dpo.label_smoothing=0.5", "'dpo.label_smoothing' must be in [0, 0.5)"),
        ("grpo", "grpo.num_generations=1", "'grpo.num_generations' must be >= 2"),
        ("grpo", "grpo.temperature=0", "'grpo.temperature' must be > 0"),
        ("grpo", "grpo.top_p=0", "'grpo.top_p' must be in (0, 1]"),
        ("grpo", "grpo.top_p=1.5", "'grpo.top_p' must be in (0, 1]"),
        ("grpo", "grpo.top_k=-1", "'grpo.top_k' must be >= 0"),
        ("grpo", "grpo.beta=-0.1", "'grpo.beta' must be >= 0"),
        ("grpo", "grpo.epsilon_low=1", "'grpo.epsilon_low' must be in [0, 1)"),
        ("grpo", "grpo.epsilon_high=-0.2", "'grpo.epsilon_high' must be >= 0"),
        ("grpo", "grpo.max_completion_length=0", "'grpo.max_completion_length' must be >= 1"),
        ("grpo", "grpo.num_iterations=0", "'grpo.num_iterations' must be >= 1"),
        ("eval", "eval.beta=0", "'eval.beta' must be > 0"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(command, override, allowed):
    with pytest.raises(ConfigError) as info:
        load_config(command, None, [override])
    assert allowed in str(info.value) and ", got " in str(info.value)  # the key, its range and the value given


@pytest.mark.parametrize(
    "command, override",
    [("sft", "train.max_grad_norm=inf"), ("sft", "train.max_grad_norm=0"), ("sft", "train.warmup_steps=0"), ("sft", "train.adam_beta2=0"),
     ("dpo", "dpo.label_smoothing=0.49"), ("grpo", "grpo.top_p=1"), ("grpo", "grpo.beta=0"),
     ("grpo", "grpo.num_generations=2"), ("grpo", "grpo.top_k=0"), ("sft", "train.save_total_limit=null")],
)
def test_range_bounds_that_are_allowed(command, override):
    load_config(command, None, [override])


def test_inf_is_a_number_in_a_file_too(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", "train:\n  max_grad_norm: inf\n")
    assert load_config("sft", path).train.max_grad_norm == float("inf")
    with pytest.raises(ConfigError, match="0 = no clipping"):
        load_config("sft", None, ["train.max_grad_norm=-1"])


def test_negative_lr_fails_before_any_work(cli, tmp_path, tiny_model_dir, sft_train):
    result = cli(["sft", f"model.name_or_path={tiny_model_dir}", f"data.train={sft_train}",
                  f"train.output_dir={tmp_path / 'out'}", "train.lr=-1e-4"])
    assert result.code == 2 and "'train.lr' must be > 0" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_mixed_precision_no_in_a_file_and_on_the_command_line(tmp_path):
    """YAML 1.1 reads the documented default `no` as false."""
    path = write_yaml(tmp_path / "run.yaml", "train:\n  mixed_precision: no\n")
    assert load_config("sft", path).train.mixed_precision == "no"
    assert load_config("sft", None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config("sft", path, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    # What show-config prints for it loads back as the same value.
    printed = write_yaml(tmp_path / "printed.yaml", yaml.safe_dump(to_dict(load_config("sft", path))))
    assert load_config("sft", printed).train.mixed_precision == "no"


@pytest.mark.parametrize(
    "command, override, suggestion",
    [
        ("sft", "lr=1e-4", "train.lr"),
        ("sft", "seed=1", "train.seed"),
        ("sft", "lrr=1e-4", "train.lr"),
        ("sft", "mixed_precision=bf16", "train.mixed_precision"),
        ("dpo", "train.beta=0.2", "dpo.beta"),
        ("grpo", "num_generations=4", "grpo.num_generations"),
    ],
)
def test_a_key_in_the_wrong_place_suggests_its_full_dotted_key(command, override, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(command, None, [override])
    assert f"Did you mean '{suggestion}'?" in str(info.value)


def test_help_example_uses_the_dotted_report_to_key(capsys):
    from alignlab.cli import main

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train.report_to=[tensorboard]" in text and " report_to=[tensorboard]" not in text


def test_infer_command_from_a_config_file(tmp_path):
    from alignlab.config import infer_command

    root = Path(__file__).resolve().parent.parent
    assert infer_command(write_yaml(tmp_path / "a.yaml", "# alignlab grpo\ntrain:\n  lr: 1.0\n")) == "grpo"
    assert infer_command(write_yaml(tmp_path / "b.yaml", "dpo:\n  beta: 0.2\n")) == "dpo"
    assert infer_command(write_yaml(tmp_path / "c.yaml", "train:\n  lr: 1.0\n")) is None
    assert infer_command(str(root / "configs" / "sft_tiny.yaml")) == "sft"  # its header names it
    assert infer_command(str(root / "configs" / "dpo_tiny.yaml")) == "dpo"
    assert infer_command(str(root / "configs" / "iterate_tiny.yaml")) == "iterate"
    assert infer_command(None) is None and infer_command(str(tmp_path / "missing.yaml")) is None
