"""`alignlab push` and `train.push_to_hub`: the model card read from a real tiny run, what goes up
(the adapter, or the merged weights), dry runs, and the one-line failures before anything is done.
The Hub is never reached: HfApi's calls are recorded by a fake."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from alignlab.engine import hub_push
from alignlab.engine.model_card import RunInfo, default_license, hub_root, model_card
from conftest import base_args, eval_records, run_cli, train_records

TOKEN = "hf_secretTOKEN0123456789"  # a fake token: must never land in a file


def fake_hub(patch, calls: list) -> None:
    """Online with a token, and HfApi's writes recorded (with what the upload folder held then)."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    patch.delenv("HF_HUB_OFFLINE", raising=False)
    patch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    patch.setattr(constants, "HF_HUB_OFFLINE", False)
    patch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    patch.setattr(hub_push, "hub_reachable", lambda: True)

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(p.name for p in folder.iterdir())
        kwargs["card"] = (folder / "README.md").read_text()
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")

    patch.setattr(HfApi, "create_repo", create_repo)
    patch.setattr(HfApi, "create_branch", create_branch)
    patch.setattr(HfApi, "upload_folder", upload_folder)


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, tiny_model_dir, sft_train, sft_eval):
    """A 2-step LoRA SFT run with train.push_to_hub set, pushed to the fake Hub at its end."""
    out = tmp_path_factory.mktemp("push") / "run"
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        fake_hub(patch, calls)
        result = run_cli(base_args(
            "sft", tiny_model_dir, sft_train, out, f"data.eval={sft_eval}", "train.max_steps=2", "train.batch_size=4",
            "train.lr=3e-3", "lora.enabled=true", "lora.r=4", "lora.alpha=8", "train.push_to_hub=me/tiny-sft",
            "train.hub_private=true"))
    assert result.code == 0
    return SimpleNamespace(dir=out, calls=calls)


def card_parts(text: str) -> tuple[dict, str]:
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_push_to_hub_uploads_the_adapter_at_the_end_of_training(pushed_run):
    names = [c[0] for c in pushed_run.calls]
    assert names == ["create_repo", "upload_folder"]  # no branch: the default revision
    assert pushed_run.calls[0][1] == "me/tiny-sft" and pushed_run.calls[0][2]["private"] is True
    upload = pushed_run.calls[1][2]
    assert Path(upload["folder_path"]) == pushed_run.dir / "hub" and upload["revision"] is None
    adapter = pushed_run.dir / "checkpoint-000002" / "model"
    assert set(upload["files"]) == {p.name for p in adapter.iterdir()} | {"alignlab_config.yaml"}
    assert "model.safetensors" not in upload["files"]  # the merged weights stay home unless --merged
    # The token was used, never written.
    for file in pushed_run.dir.rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file


def test_card_says_what_the_run_did(pushed_run, tiny_model_dir, sft_train, sft_eval):
    meta, body = card_parts(pushed_run.calls[1][2]["card"])
    assert meta["library_name"] == "peft" and meta["tags"] == ["alignlab", "sft", "lora"]
    assert "base_model" not in meta  # a local directory is no Hub id
    assert meta["license"] == "other"  # the local base model has no card to read one from
    assert str(tiny_model_dir) in body and "supervised fine-tuning" in body
    assert f"`{sft_train}` (local file" in body and f"`{sft_eval}` (local file" in body
    assert "| learning rate | 0.003 " in body and "| optimizer steps | 2 |" in body
    assert "4 per process x 1 accumulation" in body and "r 4, alpha 8" in body
    last_train, last_eval = train_records(pushed_run.dir)[-1], eval_records(pushed_run.dir)[-1]
    assert f"Last training step ({last_train['step']})" in body
    assert f"| loss | {last_train['loss']:.4g} |" in body
    assert f"| eval/loss | {last_eval['eval/loss']:.4g} |" in body
    assert "step_seconds" not in body and "memory/" not in body
    assert "alignlab sft -c alignlab_config.yaml\n" in body
    assert (pushed_run.dir / "hub" / "alignlab_config.yaml").read_text() == (pushed_run.dir / "config.yaml").read_text()


def test_dry_run_writes_the_card_and_lists_the_files_offline(pushed_run, cli, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no token needed either
    result = cli(["push", pushed_run.dir, "me/other", "--dry-run", "--license", "mit"])
    assert result.code == 0, result.err
    hub = pushed_run.dir / "hub"
    for file in hub.iterdir():
        assert file.name in result.out
    assert "nothing uploaded" in result.out and "LoRA adapter" in result.out
    meta, body = card_parts((hub / "README.md").read_text())
    assert meta["license"] == "mit" and "# other" in body and '"me/other"' in body
    adapter = pushed_run.dir / "checkpoint-000002" / "model" / "adapter_model.safetensors"
    assert (hub / "adapter_model.safetensors").read_bytes() == adapter.read_bytes()


def test_merged_pushes_final(pushed_run, cli):
    from transformers import AutoModelForCausalLM

    result = cli(["push", pushed_run.dir, "me/tiny-merged", "--merged", "--dry-run"])
    assert result.code == 0, result.err
    hub, final = pushed_run.dir / "hub", pushed_run.dir / "final"
    assert {p.name for p in hub.iterdir()} == {p.name for p in final.iterdir()} | {"README.md", "alignlab_config.yaml"}
    meta, body = card_parts((hub / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "AutoModelForCausalLM" in body
    assert AutoModelForCausalLM.from_pretrained(hub).num_parameters() > 0  # what goes up loads as it is


def test_upload_branch_and_visibility(pushed_run, cli, monkeypatch):
    calls = []
    fake_hub(monkeypatch, calls)
    result = cli(["push", pushed_run.dir, "me/tiny-sft", "--revision", "v2"])
    assert result.code == 0, result.err
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["private"] is False and calls[1][2]["branch"] == "v2" and calls[2][2]["revision"] == "v2"
    assert "pushed: https://huggingface.co/me/tiny-sft/commit/abc" in result.out


def _must_not_run(*args, **kwargs):
    raise AssertionError("called after a failed check")


@pytest.fixture
def nothing_done(monkeypatch):
    """Staging or any Hub call fails the test: a failed check must come first."""
    from huggingface_hub import HfApi

    monkeypatch.setattr(hub_push, "stage", _must_not_run)
    for method in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, method, _must_not_run)


def test_offline_fails_at_once_in_one_line(pushed_run, cli, monkeypatch, nothing_done):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    start = time.perf_counter()
    result = cli(["push", pushed_run.dir, "me/tiny-sft"])
    assert time.perf_counter() - start < 3
    assert result.code == 2 and "offline mode is on" in result.err and "--dry-run" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_unreachable_hub_fails_fast(pushed_run, cli, monkeypatch, nothing_done):
    import huggingface_hub
    from huggingface_hub import constants

    from alignlab.hub import hub_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        result = cli(["push", pushed_run.dir, "me/tiny-sft"])
        assert time.perf_counter() - start < 5
    finally:
        hub_reachable.cache_clear()
    assert result.code == 2 and f"http://127.0.0.1:{port} cannot be reached" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_missing_token_is_one_clear_line(pushed_run, cli, monkeypatch, nothing_done):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    result = cli(["push", pushed_run.dir, "me/tiny-sft"])
    assert result.code == 2 and "no Hugging Face token" in result.err and "hf auth login" in result.err


def test_bad_run_dirs(pushed_run, cli, tmp_path):
    missing = cli(["push", tmp_path / "nope", "me/x", "--dry-run"])
    assert missing.code == 2 and "does not exist" in missing.err
    (tmp_path / "empty").mkdir()
    not_run = cli(["push", tmp_path / "empty", "me/x", "--dry-run"])
    assert not_run.code == 2 and "not a run directory (no config.yaml" in not_run.err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(pushed_run.dir / "config.yaml", unfinished / "config.yaml")
    result = cli(["push", unfinished, "me/x", "--dry-run"])
    assert result.code == 2 and "has no final/ model" in result.err and f"train.resume={unfinished}" in result.err
    bad_id = cli(["push", pushed_run.dir, "not a repo//id", "--dry-run"])
    assert bad_id.code == 2 and "not a Hub repository id" in bad_id.err
    assert not (unfinished / "hub").exists()


def test_push_to_hub_offline_fails_before_loading(cli, monkeypatch, tiny_model_dir, sft_train, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(base_args("sft", tiny_model_dir, sft_train, tmp_path / "run", "train.max_steps=1",
                           "train.push_to_hub=me/x"))
    assert result.code == 2 and "offline mode is on" in result.err
    assert not (tmp_path / "run").exists()


def _info(command: str, config: dict, base: str = "Qwen/Qwen2.5-0.5B-Instruct") -> RunInfo:
    config = {"model": {"name_or_path": base}, "train": {"lr": 5e-6, "max_steps": 300, "batch_size": 2},
              "lora": {"enabled": False}, **config}
    return RunInfo(command, config, {"step": 300, "loss": 0.25}, {"step": 300, "eval/loss": 0.5}, base, hub_root(base))


def test_card_of_dpo_and_grpo_runs():
    dpo = _info("dpo", {"data": {"train": "trl-lib/ultrafeedback_binarized", "eval": "pairs.jsonl"},
                        "dpo": {"beta": 0.25, "loss_type": "ipo", "reference": "adapter"}})
    meta, body = card_parts(model_card(dpo, "me/q-dpo", adapter=False, license="apache-2.0"))
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and meta["tags"] == ["alignlab", "dpo"]
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"]
    assert "beta 0.25, loss ipo, reference adapter" in body and "`pairs.jsonl` (local file" in body
    grpo = _info("grpo", {"data": {"train": [{"path": "openai/gsm8k:main", "weight": 1}]},
                          "grpo": {"num_generations": 16, "rewards": ["answer_correct", "answer_format"],
                                   "reward_weights": [1.0, 0.2], "beta": 0.04}})
    meta, body = card_parts(model_card(grpo, "me/q-grpo", adapter=False, license="apache-2.0"))
    assert meta["datasets"] == ["openai/gsm8k"] and meta["tags"] == ["alignlab", "grpo"]
    assert "16 generations per prompt" in body and "answer_correct x 1.0, answer_format x 0.2" in body
    assert "KL beta 0.04" in body


def test_base_model_and_license_followed_through_earlier_runs(tmp_path):
    sft = tmp_path / "sft"
    (sft / "final").mkdir(parents=True)
    (sft / "config.yaml").write_text("# alignlab sft\nmodel:\n  name_or_path: Qwen/Qwen2.5-0.5B\n")
    dpo = _info("dpo", {}, base=str(sft / "final"))
    assert dpo.base_hub_id == "Qwen/Qwen2.5-0.5B"  # DPO on the SFT run's final/ derives from the SFT's base
    assert hub_root("tiny") is None and hub_root(str(tmp_path / "missing")) is None
    local = tmp_path / "local_model"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: llama3.2\ntags: [x]\n---\n# a model\n")
    assert default_license(_info("sft", {}, base=str(local))) == "llama3.2"
    assert default_license(_info("sft", {}, base="tiny")) == "apache-2.0"


def test_a_failed_push_at_the_end_says_how_to_push_later(pushed_run, monkeypatch):
    from huggingface_hub import HfApi

    from alignlab.errors import AlignlabError

    fake_hub(monkeypatch, [])

    def lost(self, **kwargs):
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(HfApi, "upload_folder", lost)
    with pytest.raises(AlignlabError) as failed:
        hub_push.push_run(pushed_run.dir, "me/tiny-sft")
    assert "the push to me/tiny-sft failed: ConnectionResetError: connection reset by peer" in str(failed.value)
    assert f"push it later with `alignlab push {pushed_run.dir} me/tiny-sft`" in str(failed.value)

    def bug(self, **kwargs):
        raise TypeError("a bug, not the network")

    monkeypatch.setattr(HfApi, "upload_folder", bug)
    with pytest.raises(TypeError):  # not dressed up as a user error
        hub_push.push_run(pushed_run.dir, "me/tiny-sft")
