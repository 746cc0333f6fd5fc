"""Shipped configs: found by name from any directory (`-c sft_tiny`), relative paths inside a config read
beside the config (command-line paths and outputs beside the current directory), and `alignlab configs`
listing them and copying one with its data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from alignlab.config import load_config
from alignlab.config.loading import shipped_dir

REPO = Path(__file__).resolve().parents[2]


def test_a_shipped_config_by_name_runs_from_any_directory_with_its_own_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ or data/ here
    for name in ("sft_tiny", "sft_tiny.yaml", "configs/sft_tiny.yaml"):  # README's spelling works outside a checkout
        config = load_config("sft", name)
        train, dev = Path(config.data.train), Path(config.data.eval)
        assert train == shipped_dir().absolute() / "data" / "addition_sft.jsonl" and train.is_file()
        assert dev.name == "addition_dev.jsonl" and dev.is_file()
        # Not beside the config: a model name and an output stay as written (the current directory, the Hub).
        assert config.model.name_or_path == "tiny" and config.train.output_dir == "runs/sft_tiny"


def test_relative_paths_in_a_config_are_read_beside_it_and_command_line_paths_beside_the_cwd(tmp_path, monkeypatch):
    exp, elsewhere = tmp_path / "exp", tmp_path / "elsewhere"
    for root in (exp, elsewhere):  # the same names in both places: the config's directory wins for the file's paths
        (root / "data").mkdir(parents=True)
        (root / "data" / "train.jsonl").write_text('{"prompt": "1+1=?", "completion": "2"}\n')
    (exp / "my_rewards.py").write_text("def score(completions, **_):\n    return [0.0] * len(completions)\n")
    (exp / "run.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": "runs/sft_x/final"},  # an earlier run's output, not beside the config
        "data": {"train": [{"path": "data/train.jsonl", "weight": 2}], "eval": "data/missing.jsonl"},
        "grpo": {"rewards": ["answer_format", "my_rewards.py:score"]},
    }))
    monkeypatch.chdir(elsewhere)
    config = load_config("grpo", "../exp/run.yaml")
    assert config.data.train[0]["path"] == str(exp / "data" / "train.jsonl") and config.data.train[0]["weight"] == 2
    assert config.data.eval == "data/missing.jsonl"  # nothing beside the config: as written, from the cwd
    assert config.model.name_or_path == "runs/sft_x/final"
    assert config.grpo.rewards == ["answer_format", f"{exp / 'my_rewards.py'}:score"]
    config = load_config("grpo", "../exp/run.yaml", ["data.train=data/train.jsonl"])
    assert config.data.train == "data/train.jsonl"  # on the command line: relative to the current directory


def test_every_shipped_config_names_data_that_ships_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [p.stem for p in shipped_dir().glob("*.yaml")]
    assert len(names) >= 10 and {"sft_tiny", "demo_sft", "dpo_tiny", "grpo_tiny"} <= set(names)
    for name in names:
        text = (shipped_dir() / f"{name}.yaml").read_text()
        command = re.search(rf"alignlab (\w+) -c configs/{re.escape(name)}\.yaml", text).group(1)
        config = load_config(command, name)
        for section in [config.data] + ([config.iterate] if hasattr(config, "iterate") else []):
            for key in ("train", "eval", "prompts", "eval_prompts"):
                value = getattr(section, key, None)
                if isinstance(value, str) and "data/" in value and not value.startswith("runs/"):
                    assert Path(value).is_absolute() and Path(value).is_file(), f"{name}: {key}={value}"


def test_a_checkouts_configs_and_data_are_the_shipped_ones():
    """README's commands say configs/x.yaml and data/x.jsonl from a checkout: the same files a wheel ships."""
    assert (REPO / "configs").resolve() == shipped_dir().resolve()
    assert (REPO / "data").resolve() == (shipped_dir() / "data").resolve()


def test_configs_lists_every_shipped_config_with_its_command(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(["configs"])
    assert result.code == 0
    rows = {line.split()[0]: line.split()[1:] for line in result.out.splitlines() if line.startswith("  ")}
    for path in shipped_dir().glob("*.yaml"):
        assert path.stem in rows, path.stem
    assert rows["sft_tiny"][0] == "sft" and rows["dpo_tiny"][0] == "dpo" and rows["iterate_tiny"][0] == "iterate"
    assert "accelerate/fsdp" in rows
    assert cli(["configs", "list"]).out == result.out


def test_configs_copy_takes_the_data_along_and_the_copy_runs_from_anywhere(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(["configs", "copy", "grpo_tiny", "exp"])
    assert result.code == 0
    written = {Path(line.split(" ", 1)[1]) for line in result.out.splitlines() if line.startswith("wrote ")}
    assert written == {Path("exp/grpo_tiny.yaml"), Path("exp/data/addition_prompts.jsonl"),
                       Path("exp/data/addition_test_prompts.jsonl")}
    assert (tmp_path / "exp" / "grpo_tiny.yaml").read_bytes() == (shipped_dir() / "grpo_tiny.yaml").read_bytes()
    (tmp_path / "exp" / "data" / "addition_prompts.jsonl").write_text('{"prompt": "2+2=?", "answer": "4"}\n')
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    config = load_config("grpo", "../exp/grpo_tiny.yaml")
    assert config.data.train == str(tmp_path / "exp" / "data" / "addition_prompts.jsonl")  # the copy's, edited
    monkeypatch.chdir(tmp_path)
    again = cli(["configs", "copy", "grpo_tiny", "exp"])  # the edited data file differs: refused, nothing written
    assert again.code == 2 and "exp/data/addition_prompts.jsonl exists and differs" in again.err
    assert "Traceback" not in again.err and "wrote" not in again.out
    assert (tmp_path / "exp" / "data" / "addition_prompts.jsonl").read_text().startswith('{"prompt": "2+2=?"')
    assert cli(["configs", "copy", "sft_tiny", "exp/mine.yaml"]).code == 0
    assert (tmp_path / "exp" / "mine.yaml").is_file() and (tmp_path / "exp" / "data" / "addition_sft.jsonl").is_file()
    assert "already identical" in cli(["configs", "copy", "sft_tiny", "exp/mine.yaml"]).out


@pytest.mark.parametrize("argv", [["configs", "copy", "nope"], ["sft", "-c", "nope.yaml"], ["show-config", "-c", "nope"]])
def test_an_unknown_config_name_says_where_to_find_the_shipped_ones(cli, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    result = cli(argv)
    assert result.code == 2 and "alignlab configs" in result.err and "nope" in result.err
    assert "Traceback" not in result.err


def test_show_config_reads_a_shipped_config_by_name(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(["show-config", "-c", "dpo_tiny", "dpo.beta=0.2"])
    assert result.code == 0
    shown = yaml.safe_load(result.out)
    assert "dpo" in shown and shown["dpo"]["beta"] == 0.2  # the command is read from the shipped file
    assert shown["data"]["train"] == str(shipped_dir().absolute() / "data" / "addition_pairs.jsonl")
