"""Sequence log-probs of preference pairs, and the reference model's, computed once and cached.

Chosen and rejected go through the model in one concatenated forward ([2B, T]), so a pair costs
one call and shares its batch statistics. The reference strategies:
- precomputed (default): before training, in large no-grad batches, for the pairs the run will
  see; cached on disk keyed by the data's token ids, the model's identity and the log-prob
  settings, so another run on the same data and base model (e.g. another beta) reuses them and
  computes only the pairs none has seen;
- adapter: LoRA policy with the adapter disabled (no second copy of the weights);
- copy: a frozen copy of the initial policy (full fine-tuning);
- none: reference-free (SimPO-style): reference log-probs are zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from alignlab.data.collate import collate_masked, pad_left, pad_right
from alignlab.model.logprobs import shared_prefix_token_logps, token_logps

log = logging.getLogger("alignlab")


@dataclass
class PairLogps:
    chosen: torch.Tensor  # [B] summed log-prob of the chosen response
    rejected: torch.Tensor  # [B]
    chosen_tokens: torch.Tensor  # [B] response lengths, for length normalisation and NLL
    rejected_tokens: torch.Tensor  # [B]


def pair_logps(model, pairs, pad_id: int, device, *, chunk_size: int = 0, share_prompt: bool = True) -> PairLogps:
    """Chosen and rejected in one batch; response tokens only. With `share_prompt`, each prompt
    runs once and both responses continue it through the KV cache (same numbers, less compute)."""
    count = len(pairs)
    if share_prompt:
        prompts = pad_left([p.prompt_ids for p in pairs], pad_id).to(device)  # [B, Lp]
        prompt_mask = pad_left([[1] * len(p.prompt_ids) for p in pairs], 0).to(device)  # [B, Lp]
        responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
        completion_ids = pad_right(responses, pad_id).to(device)  # [2B, C]
        completion_mask = pad_right([[1] * len(r) for r in responses], 0).to(device)  # [2B, C]
        index = torch.arange(count, device=device).repeat(2)  # [2B]: chosen rows, then rejected rows
        per_token = shared_prefix_token_logps(model, prompts, prompt_mask, completion_ids, completion_mask, index,
                                              chunk_size=chunk_size)
        lengths = completion_mask.sum(-1).float()  # [2B]
    else:
        ids = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
        masks = [[0] * len(p.prompt_ids) + [1] * len(p.chosen_ids) for p in pairs]
        masks += [[0] * len(p.prompt_ids) + [1] * len(p.rejected_ids) for p in pairs]
        batch = {k: v.to(device) for k, v in collate_masked(ids, masks, pad_id).items()}
        per_token = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"], chunk_size=chunk_size)
        lengths = batch["loss_mask"][:, 1:].sum(-1).float()  # [2B]
    sums = per_token.sum(-1)  # [2B]
    return PairLogps(sums[:count], sums[count:], lengths[:count], lengths[count:])


@torch.no_grad()
def compute_all(model, pairs, pad_id: int, device, *, batch_size: int, chunk_size: int, progress: bool = False) -> torch.Tensor:
    """[N, 2] (chosen, rejected) summed log-probs for every pair, in no-grad batches."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out = []
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="reference log-probs", disable=not progress, leave=False):
        result = pair_logps(model, pairs[start : start + batch_size], pad_id, device, chunk_size=chunk_size)
        out.append(torch.stack([result.chosen, result.rejected], dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def model_fingerprint(name_or_path: str, revision: Optional[str] = None) -> str:
    """Identity of a base model. A local dir (a run directory's final/ or checkpoint, the built tiny
    model) by its files: configs by content, weights by name, size and mtime. A hub id by its
    revision, resolved to the commit hash of the locally cached snapshot when there is one (a
    branch name like `main` moves)."""
    from alignlab.model.loading import ensure_tiny_model, resolve_model_path

    path = Path(resolve_model_path(ensure_tiny_model(name_or_path)))
    if not path.is_dir():
        return hashlib.sha256(f"{name_or_path}@{hub_commit(name_or_path, revision)}".encode()).hexdigest()[:16]
    parts = [str(path.resolve())]
    for file in sorted(path.iterdir()):
        if file.suffix == ".json":
            parts.append(f"{file.name}:{hashlib.sha256(file.read_bytes()).hexdigest()}")
        elif file.suffix in (".safetensors", ".bin"):
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def hub_commit(repo_id: str, revision: Optional[str]) -> str:
    """The commit hash of a hub model's cached snapshot for `revision`, else the revision as given."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    except Exception:  # not a valid repo id, or no cache: the name is all there is
        cached = None
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/")[1].split("/")[0]
    return revision or "main"


def cache_key(data_fingerprint: str, model_id: str, settings: dict) -> str:
    blob = json.dumps({"data": data_fingerprint, "model": model_id, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ReferenceCache:
    """Reference log-probs on disk, shared across runs: <cache_dir>/<key>.pt, an [N, 2] float tensor
    (chosen, rejected) per pair of the split the key names; NaN where a pair is not computed yet
    (a run computes only the pairs it will see, and later runs add theirs)."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.pt"

    def load(self, key: str) -> Optional[torch.Tensor]:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError):
            log.warning("reference cache %s is unreadable; recomputing", path)
            return None

    def store(self, key: str, values: torch.Tensor) -> torch.Tensor:
        """Write `values` merged with what the file holds now (another run on the same key may have
        added pairs since it was read); returns the merged table."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with _locked(self.cache_dir):
            on_disk = self.load(key)
            if on_disk is not None and on_disk.shape == values.shape:
                values = torch.where(values.isnan(), on_disk, values)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(values, tmp)
            os.replace(tmp, path)  # atomic: concurrent runs never read half a file
        return values


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on a directory (flock on its descriptor; no lock file left behind), where
    the platform has one."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the merge above still loses nothing but a concurrent run's last pairs
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
