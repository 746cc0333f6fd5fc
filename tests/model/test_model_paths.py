"""A model argument that is not a model: one message saying what was expected there and what is
missing, exit code 2, no traceback; offline with a hub id, a fast message saying what to use instead."""

from __future__ import annotations

import pytest


def fails(result, *fragments):
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "Traceback" not in result.out
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} not in {result.err!r}"


@pytest.fixture
def not_models(tmp_path, prefs):
    """name -> (a path that is not a model, what the message must say about it)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(prefs.read_text())
    stub = tmp_path / "stub_run"  # what a failed start used to leave: config.yaml and an empty train.log
    stub.mkdir()
    (stub / "config.yaml").write_text("# alignlab dpo\n")
    (stub / "train.log").write_text("")
    return {
        "empty": (empty, ["is not a model", "config.json", "it is empty"]),
        "data": (data, ["is not a model", "config.json", "train.jsonl"]),
        "stub": (stub, ["run directory", "no final/ and no checkpoint-*/"]),
        "missing": (tmp_path / "no" / "such_model", ["does not exist", "a hub id like org/name"]),
        "file": (data / "train.jsonl", ["is a file, not a model"]),
    }


def commands(path, tiny_model_dir, prefs, prompts, tmp_path):
    return {
        "dpo": ["dpo", f"model.name_or_path={path}", f"data.train={prefs}", f"train.output_dir={tmp_path / 'out'}",
                "train.progress=false"],
        "chat": ["chat", path, "--prompt", "hi"],
        "eval": ["eval", path, f"data.prompts={prompts}"],
        "compare": ["compare", tiny_model_dir, path],
    }


@pytest.mark.parametrize("kind", ["empty", "data", "stub", "missing", "file"])
@pytest.mark.parametrize("command", ["dpo", "chat", "eval", "compare"])
def test_a_path_that_is_not_a_model(cli, not_models, kind, command, tiny_model_dir, prefs, prompts, tmp_path):
    path, fragments = not_models[kind]
    fails(cli(commands(path, tiny_model_dir, prefs, prompts, tmp_path)[command]), str(path), *fragments)
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_tokenizer(cli, tmp_path, tiny_model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    fails(cli(["chat", bare, "--prompt", "hi"]), "cannot load a tokenizer", "has no tokenizer.json")


@pytest.mark.parametrize("command", ["dpo", "chat"])
def test_offline_hub_id_fails_at_once_with_what_to_use(cli, monkeypatch, tmp_path, prefs, command):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the id cannot be there
    name = "no-such-org/no-such-model"
    argv = (["dpo", f"model.name_or_path={name}", f"data.train={prefs}", f"train.output_dir={tmp_path / 'out'}"]
            if command == "dpo" else ["chat", name, "--prompt", "hi"])
    fails(cli(argv), f"cannot load '{name}'", "HF_HUB_OFFLINE is set", "not in the local hub cache",
          "alignlab tiny-model")
    assert not (tmp_path / "out").exists()


def test_a_run_directory_stands_for_its_final_model(tmp_path, tiny_model_dir):
    import shutil

    from alignlab.model.loading import resolve_model_path

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("# alignlab sft\n")
    shutil.copytree(tiny_model_dir, run / "final")
    assert resolve_model_path(str(run)) == str(run / "final")
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B" and resolve_model_path("gpt2") == "gpt2"
