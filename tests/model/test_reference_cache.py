"""The DPO reference cache key changes with every setting that changes the reference's numbers."""

from __future__ import annotations

from alignlab.config import load_config
from alignlab.model.pair_logps import cache_key, hub_commit, model_fingerprint
from alignlab.trainers.dpo import reference_settings, resolved_length_normalize


def _key(model_dir, *overrides):
    config = load_config("dpo", None, [f"model.name_or_path={model_dir}", *overrides])
    return cache_key("data", model_fingerprint(config.model.name_or_path, config.model.revision),
                     reference_settings(config))


def test_every_numerics_setting_is_in_the_key(tiny_model_dir):
    base = _key(tiny_model_dir)
    changed = [
        "model.load_in_4bit=true", "train.mixed_precision=bf16", "model.attn_implementation=sdpa",
        "model.dtype=bfloat16", "train.max_length=64", "data.chat_template=false",
    ]
    keys = [_key(tiny_model_dir, override) for override in changed]
    assert base not in keys and len(set(keys)) == len(keys)
    assert _key(tiny_model_dir, "dpo.beta=0.5") == base  # beta changes the loss, not the reference


def test_the_tiny_model_is_known_by_its_files(tmp_path, monkeypatch):
    """`tiny` is the model alignlab builds under runs/.tiny-model: rebuilt with other build parameters
    (here one config value, the files keeping their names and sizes) it is another model."""
    monkeypatch.chdir(tmp_path)
    before = model_fingerprint("tiny")
    config_file = tmp_path / "runs" / ".tiny-model" / "config.json"
    text = config_file.read_text()
    assert '"num_hidden_layers": 2' in text or '"num_hidden_layers": 4' in text
    config_file.write_text(text.replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
                           .replace('"num_hidden_layers": 4', '"num_hidden_layers": 3'))
    assert model_fingerprint("tiny") != before


def test_hub_revision_resolves_to_the_cached_commit(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--org--model"
    commit = "a" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert hub_commit("org/model", None) == commit
    assert hub_commit("org/other", "v1") == "v1"  # nothing cached: the revision as given
    assert model_fingerprint("org/model") != model_fingerprint("org/model", "v2")


def test_ipo_is_length_normalised_by_default():
    dpo = load_config("dpo", None, ["dpo.loss_type=ipo"]).dpo
    assert resolved_length_normalize(dpo)
    assert not resolved_length_normalize(load_config("dpo", None, []).dpo)
    assert not resolved_length_normalize(load_config("dpo", None, ["dpo.loss_type=ipo", "dpo.length_normalize=false"]).dpo)
