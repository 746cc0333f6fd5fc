"""vLLM settings decided before any engine starts: the LoRA rank the engine is set up for."""

import typing

import pytest

from alignlab.config.validation import VLLM_LORA_RANKS
from alignlab.generation.vllm import vllm_max_lora_rank
from conftest import base_args


@pytest.mark.parametrize("rank, served", [(1, 1), (4, 8), (8, 8), (12, 16), (48, 64), (300, 320), (512, 512)])
def test_an_adapter_is_served_by_the_smallest_rank_vllm_accepts(rank, served):
    assert vllm_max_lora_rank(rank) == served


def test_the_ranks_are_vllms_own():
    lora = pytest.importorskip("vllm.config.lora")
    assert tuple(typing.get_args(lora.MaxLoRARanks)) == VLLM_LORA_RANKS
    for rank in (4, 12, 48):  # what the engine used to be given (max(8, r)) fails inside vLLM for some
        lora.LoRAConfig(max_lora_rank=vllm_max_lora_rank(rank))
    with pytest.raises(ValueError, match="max_lora_rank"):
        lora.LoRAConfig(max_lora_rank=max(8, 12))


def test_a_rank_vllm_cannot_serve_fails_when_the_config_loads(tmp_path, tiny_model_dir, cli):
    out = tmp_path / "run"
    result = cli(base_args("grpo", tiny_model_dir, tmp_path / "absent.jsonl", out, "grpo.backend=vllm",
                           "grpo.vllm_sync=adapter", "lora.enabled=true", "lora.r=1024", "grpo.rewards=[length]"))
    assert result.code == 2
    assert "lora.r=1024" in result.err and "up to 512" in result.err and "grpo.vllm_sync=merged" in result.err
    assert not out.exists()  # nothing was started


def test_an_unknown_importance_sampling_mode_fails_when_the_config_loads(tmp_path, tiny_model_dir, cli):
    result = cli(base_args("grpo", tiny_model_dir, tmp_path / "absent.jsonl", tmp_path / "run",
                           "grpo.vllm_importance_sampling_mode=sequence_clip", "grpo.rewards=[length]"))
    assert result.code == 2
    assert "grpo.vllm_importance_sampling_mode" in result.err and "sequence_mask" in result.err
