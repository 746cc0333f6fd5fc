"""Texts -> vectors, for `diversity/embedding` (alignlab.data.diversity) and `alignlab pairs --strategy diverse`.

Two kinds of embedder, chosen by what the name is (`eval.embedding_model`, `compare`/`pairs --embedding-model`):
- a sentence-transformers model: a hub id, or a directory sentence-transformers saved (it has `modules.json`).
  Trained so that texts of similar meaning land close together: the embedding diversity to report. Needs
  `pip install "alignlab[embeddings]"` (sentence-transformers).
- any other local model, adapter or run directory: a language model, whose texts are embedded by the mean of its
  last layer's hidden states over each text's tokens. A weaker proxy: a next-token predictor's states also encode
  surface form (length, punctuation) and are not trained to make cosine distance mean a difference in meaning.
  It needs nothing extra and works offline, so it is `alignlab eval`'s default: the evaluated model itself.
Distances between two embedders' vectors are not comparable: compare models' diversity under one embedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from alignlab.errors import AlignlabError

if TYPE_CHECKING:  # torch is imported when something is embedded: `alignlab pairs` stays light otherwise
    import torch

Embedder = Callable[[list[str]], "torch.Tensor"]  # texts -> [N, D] float32 on the CPU
MAX_TOKENS = 512  # longer texts are embedded by their first MAX_TOKENS tokens
ST_HINT = 'pip install "alignlab[embeddings]" (sentence-transformers)'


def is_sentence_transformer(name: str) -> bool:
    """A directory sentence-transformers saved, or a name that is not a local path (a hub id)."""
    path = Path(name)
    return (path / "modules.json").is_file() if path.exists() else True


def hidden_state_embeddings(model, tokenizer, texts: list[str], *, batch_size: int = 32) -> torch.Tensor:
    """[N, H] float32: each text's mean last-layer hidden state over its tokens (special tokens as the tokenizer
    adds them; an empty text is embedded as its EOS token)."""
    import torch

    device = next(model.parameters()).device
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    encoded = [tokenizer(text)["input_ids"][:MAX_TOKENS] or [fallback] for text in texts]
    out = []
    for start in range(0, len(encoded), batch_size):
        part = encoded[start:start + batch_size]
        width = max(len(ids) for ids in part)
        # [b, T], right-padded: positions count from 0 without position ids
        ids = torch.tensor([row + [fallback] * (width - len(row)) for row in part], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in part], device=device)  # [b, T]
        with torch.no_grad():  # the LM head on one position only
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1].float()  # [b, T, H]
        weights = mask[:, :, None].float()  # [b, T, 1]
        out.append(((hidden * weights).sum(1) / weights.sum(1)).cpu())  # [b, H]
    return torch.cat(out)


def sentence_transformer_embedder(name: str, *, batch_size: int = 32) -> Embedder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise AlignlabError(f"embedding model {name} is a sentence-transformers model, which is not installed: "
                            f"{ST_HINT}; or give a local language-model directory (its mean-pooled hidden states, "
                            "a weaker proxy)") from None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = SentenceTransformer(name, device=device)
    except OSError as exc:  # not in the local cache and no network, or no such model
        raise AlignlabError(f"cannot load the sentence-transformers model {name}: {exc}") from None
    return lambda texts: model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True).float().cpu()


def language_model_embedder(loaded, *, batch_size: int = 32) -> Embedder:
    """The mean-pooled hidden states of a model loaded by `load_for_inference`."""
    return lambda texts: hidden_state_embeddings(loaded.model, loaded.tokenizer, list(texts), batch_size=batch_size)


def load_embedder(name: str, *, batch_size: int = 32, dtype: str = "auto") -> Embedder:
    """The embedder a name stands for (see the module docstring)."""
    if is_sentence_transformer(name):
        return sentence_transformer_embedder(name, batch_size=batch_size)
    from alignlab.model.inference import load_for_inference

    return language_model_embedder(load_for_inference(name, dtype=dtype), batch_size=batch_size)


def embedder_on_first_use(name: Optional[str], *, batch_size: int = 32) -> Optional[Embedder]:
    """`load_embedder(name)`, loaded when first called (None for no name): a model only when texts need it."""
    if not name:
        return None
    loaded: list = []

    def embed(texts: list[str]):
        if not loaded:
            loaded.append(load_embedder(name, batch_size=batch_size))
        return loaded[0](texts)

    return embed


def embedder_for(name: Optional[str], loaded=None, *, batch_size: int = 32) -> Optional[Embedder]:
    """`name`'s embedder; without a name, the loaded model's own hidden states (None when there is neither)."""
    if name:
        return load_embedder(name, batch_size=batch_size)
    return language_model_embedder(loaded, batch_size=batch_size) if loaded is not None else None
