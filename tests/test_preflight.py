"""Everything a training config names that can be checked is checked before any model, tokenizer or
data loads: one line naming the key and the value, exit code 2, and no run directory."""

from __future__ import annotations

import socket

import pytest

from conftest import base_args


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or tokenizer (or reading training data) fails the test: the checks must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model, tokenizer or data loader ran before the config's checks")

    for module in ("alignlab.trainers.sft", "alignlab.trainers.dpo", "alignlab.trainers.grpo"):
        monkeypatch.setattr(f"{module}.load_model", forbidden)
        monkeypatch.setattr(f"{module}.load_tokenizer", forbidden)
    monkeypatch.setattr("alignlab.trainers.sft.load_sft_data", forbidden)
    monkeypatch.setattr("alignlab.trainers.dpo.load_pairs", forbidden)
    monkeypatch.setattr("alignlab.trainers.grpo.load_prompt_data", forbidden)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cases(tmp_path, sft_train, prefs, prompts):
    """name -> (command, its data file, extra overrides, fragments the one-line error must hold)."""
    missing = tmp_path / "nowhere" / "train.jsonl"
    broken_env = tmp_path / "env.py"
    broken_env.write_text("class Env:\n    def reset(self, **row):\n        return ''\n")  # no step()
    return {
        "sft data file": ("sft", missing, [], ["data.train", "data file not found", str(missing)]),
        "sft eval file": ("sft", sft_train, [f"data.eval={tmp_path / 'dev.jsonl'}"], ["data.eval", "dev.jsonl"]),
        "mixture source": ("sft", sft_train, [f"data.train=[{sft_train},{missing}]"],
                           ["data.train[1].path", "data file not found"]),
        "data directory": ("dpo", tmp_path, [], ["data.train", "is a directory"]),
        "model path": ("dpo", prefs, [f"model.name_or_path={tmp_path / 'no_model'}"],
                       ["model.name_or_path", "does not exist"]),
        "dpo adapter without lora": ("dpo", prefs, ["dpo.reference=adapter"], ["dpo.reference=adapter", "lora"]),
        "unknown tracker": ("sft", sft_train, ["train.report_to=[mlflow]"], ["train.report_to", "mlflow"]),
        "unknown reward": ("grpo", prompts, ["grpo.rewards=[answer_corect]"],
                           ["grpo.rewards[0]", "unknown reward 'answer_corect'", "did you mean 'answer_correct'"]),
        "reward file": ("grpo", prompts, [f"grpo.rewards=[answer_format,{tmp_path / 'mine.py'}:score]"],
                        ["grpo.rewards[1]", "mine.py", "does not exist"]),
        "unknown tool": ("grpo", prompts, ["grpo.tools=[calculator]"], ["grpo.tools", "unknown tool 'calculator'"]),
        "environment": ("grpo", prompts, [f"grpo.environment={broken_env}:Env"], ["grpo.environment", "step()"]),
        "vllm server": ("grpo", prompts, ["grpo.backend=vllm", "grpo.vllm_mode=server",
                                          f"grpo.vllm_server=127.0.0.1:{closed_port()}"],
                        ["grpo.vllm_server", "cannot reach the vLLM server", "alignlab vllm-serve"]),
    }


CASES = ["sft data file", "sft eval file", "mixture source", "data directory", "model path", "dpo adapter without lora",
         "unknown tracker", "unknown reward", "reward file", "unknown tool", "environment", "vllm server"]


@pytest.mark.parametrize("case", CASES)
def test_fails_before_anything_loads(case, cli, no_loading, tmp_path, tiny_model_dir, sft_train, prefs, prompts):
    command, data, extra, fragments = cases(tmp_path, sft_train, prefs, prompts)[case]
    out = tmp_path / "run"
    result = cli(base_args(command, tiny_model_dir, data, out, *extra))
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not out.exists()


def test_good_config_passes_the_checks(tmp_path, tiny_model_dir, prompts, crc_reward):
    from alignlab.config import load_config
    from alignlab.engine.preflight import preflight

    config = load_config("grpo", None, [f"model.name_or_path={tiny_model_dir}", f"data.train={prompts}",
                                        f"data.eval={prompts}", f"grpo.rewards=[answer_format,{crc_reward}]",
                                        "grpo.tools=[multiply]"])
    preflight(config)  # raises on the first problem
