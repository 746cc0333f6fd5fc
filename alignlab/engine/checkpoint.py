"""Atomic checkpoints and resume: model (full weights or adapter), optimizer, scheduler, RNG, data position.

A checkpoint is written into `checkpoint-NNNNNN.tmp/` and renamed into place only when complete, so
a process killed mid-save leaves the previous checkpoint usable. `state.json` is written last
inside it; a directory without one is never resumed from. Before the rename every file and folder
in it is flushed to disk (fsync), and the parent after it: after a power loss the rename may be
lost, but a durable state.json never sits beside weights still in the page cache.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from alignlab.model.run_files import CHECKPOINT_PREFIX, checkpoint_dirs



def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    save_model_fn,
    optimizer_state: Optional[dict],
    scheduler_state: dict,
    state: dict[str, Any],
    extra: Optional[dict] = None,
    keep: Optional[int] = None,
    per_process: Optional[list] = None,
    prepared_tmp: bool = False,
) -> Path:
    """Write checkpoint-<step>/ atomically and record it in checkpoints.jsonl.

    `per_process`: with several processes, each one's {"rng": ..., "extra": ...} in process order
    (their samplers draw from their own RNG streams, and GRPO's rollout buffer is per process)."""
    final = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
    # prepared_tmp: every process has already written its part into it (DeepSpeed).
    tmp = tmp_checkpoint_dir(run_dir, step) if prepared_tmp else start_checkpoint(run_dir, step)
    save_model_fn(tmp / "model")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    saved = {"rng": rng_state(), "extra": extra}
    if per_process is not None:
        saved["per_process"] = per_process
    torch.save(saved, tmp / "rng_and_extra.pt")
    sync_tree(tmp)  # the weights and optimizer state are on disk before state.json says they are complete
    atomic_write_text(tmp / "state.json", json.dumps({**state, "step": step}, indent=2))
    sync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. the last step after a resume)
        remove_checkpoint(final)
    os.replace(tmp, final)
    sync_dir(Path(run_dir))
    _record(run_dir, final, step)
    if keep:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            remove_checkpoint(old)
    return final


def sync_dir(path: Path) -> None:
    """fsync a directory: makes the names created or renamed in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory, deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        sync_dir(Path(folder))


def tmp_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoint-<step> is assembled before it is renamed into place."""
    return Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}.tmp"


def start_checkpoint(run_dir: Path, step: int) -> Path:
    """An empty checkpoint-<step>.tmp/ (a leftover of a killed save is dropped)."""
    tmp = tmp_checkpoint_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint so that a kill part-way leaves an incomplete one (never resumed from),
    not a state.json beside missing weights: state.json goes first."""
    (Path(path) / "state.json").unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def _record(run_dir: Path, path: Path, step: int) -> None:
    index = Path(run_dir) / "checkpoints.jsonl"
    lines = [json.loads(l) for l in index.read_text().splitlines() if l.strip()] if index.exists() else []
    lines = [l for l in lines if l.get("step") != step]
    lines.append({"name": path.name, "step": step, "path": str(path), "model_path": str(path / "model")})
    atomic_write_text(index, "".join(json.dumps(l) + "\n" for l in lines))


def load_checkpoint(
    path: Path, *, load_model_fn, load_optimizer_fn, scheduler, process_index: int = 0, num_processes: int = 1
) -> tuple[dict, Optional[dict], bool]:
    """Restore a checkpoint into live objects (`load_optimizer_fn` gets the saved optimizer state); returns (state.json contents, extra trainer state,
    whether this process's own RNG and extra state were found). They are not when the checkpoint was
    written by a different number of processes: then the main process's are returned."""
    load_model_fn(path / "model")
    optimizer_file = path / "optimizer.pt"  # absent under DeepSpeed, which keeps its own (path / "deepspeed")
    load_optimizer_fn(torch.load(optimizer_file, weights_only=False) if optimizer_file.is_file() else None)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    saved = torch.load(path / "rng_and_extra.pt", weights_only=False)
    per_process = saved.get("per_process")
    if per_process is not None and len(per_process) == num_processes:
        mine, own = per_process[process_index], True
    else:
        mine, own = saved, num_processes == 1
    set_rng_state(mine["rng"])
    return json.loads((path / "state.json").read_text()), mine.get("extra"), own


def load_model_weights(model, model_dir: Path, *, sharded: bool = False) -> None:
    """Load saved full weights or adapter weights into an in-memory model of the same shape
    (`sharded`: an FSDP model, every process passing the whole file; each keeps its shard)."""
    from safetensors.torch import load_file

    adapter = model_dir / "adapter_model.safetensors"
    if adapter.is_file() and not sharded:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    if adapter.is_file():
        from alignlab.engine.sharding import adapter_to_model_keys

        state = adapter_to_model_keys(load_file(adapter), model.state_dict().keys(), model.active_adapter)
    else:
        state = {}
        for shard in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(shard))
    if sharded:
        from alignlab.engine.sharding import load_model_state

        missing, unexpected = load_model_state(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied LM head is not saved; an adapter file holds only the adapter (the base stays as loaded).
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or (set(missing) - tied and not adapter.is_file()):
        raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {missing}, unexpected {unexpected}")
