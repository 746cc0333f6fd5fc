"""Embedders for diversity (alignlab/scoring/embeddings.py): mean-pooled hidden states equal sentence-transformers'
own mean pooling of the same model, whatever the batching; names pick the embedder."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.scoring.embeddings import hidden_state_embeddings, is_sentence_transformer, load_embedder

TEXTS = ["hello world", "a much longer text, with commas and more words.", "x", ""]


@pytest.fixture(scope="module")
def st_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved by sentence-transformers with mean pooling (its tokenizer without a chat template:
    sentence-transformers 5+ would wrap each text in it)."""
    models = pytest.importorskip("sentence_transformers.models")
    from sentence_transformers import SentenceTransformer

    root = tmp_path_factory.mktemp("st")
    plain = shutil.copytree(tiny_model_dir, root / "plain")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    transformer = models.Transformer(str(plain))
    hidden = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.hidden_size
    pooling = models.Pooling(hidden, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(root / "st"))
    return root / "st"


def test_hidden_states_are_mean_pooled_like_sentence_transformers(st_model_dir, tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ours = hidden_state_embeddings(model, tiny_tokenizer, TEXTS[:3], batch_size=2)
    theirs = load_embedder(str(st_model_dir))(TEXTS[:3])
    assert ours.shape == theirs.shape == (3, model.config.hidden_size)
    assert torch.allclose(ours, theirs, atol=1e-5)
    one_by_one = torch.cat([hidden_state_embeddings(model, tiny_tokenizer, [t]) for t in TEXTS])
    assert torch.allclose(hidden_state_embeddings(model, tiny_tokenizer, TEXTS, batch_size=4), one_by_one, atol=1e-5)
    assert torch.isfinite(one_by_one).all()  # the empty text too


def test_names_pick_the_embedder(st_model_dir, tiny_model_dir):
    assert is_sentence_transformer(str(st_model_dir))
    assert is_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")  # a hub id
    assert not is_sentence_transformer(str(tiny_model_dir))  # a language model: its hidden states
    vectors = load_embedder(str(tiny_model_dir))(TEXTS[:2])
    assert vectors.shape == (2, AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.hidden_size)
