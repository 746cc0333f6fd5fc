"""`alignlab sample MODEL PROMPTS OUT --n 8`: several sampled responses per prompt (for `pairs`, `label`, judges).

Each output line is a prompt's row with its responses: `{"prompt", "responses": [n strings], ...the row's other
columns}` (an `answer` column stays, so rewards and judges can use it). Columns `responses`, `scores` and `ranks`
of the input are replaced: they belonged to other responses.

Sampling is `alignlab eval`'s: the model loaded by `load_for_inference` (hub id, model or adapter dir, run dir),
prompts rendered by its templater (the chat template unless --no-chat-template), completions from
`evaluate_prompts` through our KV-cache sampler or the vLLM engine (--backend vllm).

Resumable. Prompts are sampled in batches of --batch-size, in input order. A finished batch is appended to OUT
with one write, one JSON line per prompt, flushed and fsynced before the next batch starts, so a kill loses at
most the batch being sampled. Rerun the same command to continue: the rows already in OUT must be the first
prompts of PROMPTS, each with n responses (else the run stops and says which line differs), a torn last line
is dropped, and sampling resumes at the first prompt not written. Batch b is sampled under a seed drawn from
(--seed, b): a run resumed after whole batches writes what an uninterrupted run writes (same model, backend,
batch size and machine).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from alignlab.errors import DataError

# Input columns that describe earlier responses, not the prompt: not copied to the new rows.
STALE_COLUMNS = ("responses", "scores", "ranks")


@dataclass
class SampleSettings:
    n: int = 8
    temperature: float = 1.0  # 0: greedy (only with n = 1)
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 8  # prompts per batch: decoded together (n each) and appended to OUT together
    chat_template: bool = True
    system_prompt: Optional[str] = None
    backend: str = "hf"  # hf | vllm
    seed: int = 0
    dtype: str = "auto"
    split: str = "train"  # of a hub dataset

    def check(self) -> None:
        problems = [f"--n must be at least 1, got {self.n}" if self.n < 1 else "",
                    f"--batch-size must be at least 1, got {self.batch_size}" if self.batch_size < 1 else "",
                    f"--max-new-tokens must be at least 1, got {self.max_new_tokens}"
                    if self.max_new_tokens < 1 else "",
                    f"--top-p must be in (0, 1], got {self.top_p}" if not 0 < self.top_p <= 1 else "",
                    f"--temperature must be at least 0, got {self.temperature}" if self.temperature < 0 else "",
                    "--temperature 0 is greedy: all n responses would be the same; use --n 1 or a temperature above 0"
                    if self.temperature == 0 and self.n > 1 else "",
                    f"--backend must be hf or vllm, got {self.backend!r}" if self.backend not in ("hf", "vllm") else ""]
        problems = [p for p in problems if p]
        if problems:
            raise DataError("; ".join(problems))


def output_row(item, responses: list[str]) -> dict:
    """{"prompt", "responses", ...the item's other columns}: what `pairs`, `label` and judges read."""
    others = {k: v for k, v in item.columns.items() if k not in STALE_COLUMNS and k != "prompt"}
    return {"prompt": item.prompt, "responses": list(responses), **others}


def rows_written(out: Path, items, n: int) -> int:
    """How many prompts OUT already holds (a rerun continues after them). A torn last line (a kill in the middle
    of a write) is cut off; rows that are not the first prompts of the input, in order, stop the run."""
    if not out.exists():
        return 0
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):  # what follows the last newline is a line cut short
        with out.open("r+b") as handle:
            handle.truncate(len(whole))
            os.fsync(handle.fileno())
    lines = [line for line in whole.decode("utf-8").split("\n") if line.strip()]
    fix = f"delete {out} (or write to another file) to sample from the start"
    if len(lines) > len(items):
        raise DataError(f"{out} already has {len(lines)} rows but the prompt file has only {len(items)} prompts: "
                        f"it was written from another prompt file; {fix}")
    for number, (line, item) in enumerate(zip(lines, items), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{out}, line {number}: not a JSON row ({exc.msg}); {fix}") from None
        if not isinstance(row, dict) or row.get("prompt") != item.prompt:
            raise DataError(f"{out}, line {number}: its prompt is not the one at {item.where} (resuming needs the same "
                            f"prompts in the same order); {fix}")
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) != n:
            got = len(responses) if isinstance(responses, list) else 0
            raise DataError(f"{out}, line {number}, field 'responses': {got} responses, but this run samples --n {n}; "
                            f"rerun with --n {got}, or {fix}")
    return len(lines)


def append_rows(out: Path, rows: list[dict]) -> None:
    """Append rows to OUT with one write, flushed and fsynced: on disk before the next batch starts."""
    new = not out.exists()
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with out.open("ab") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    if new:  # the file's name is on disk too
        directory = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def batch_seed(seed: int, batch: int) -> int:
    """Batch b's seed: a function of the run's seed and b only, so a resumed run draws what it would have."""
    from alignlab.generation.vllm import draw_seed

    return draw_seed(seed, batch)


def sample_batches(loaded, items, out: Path, settings: SampleSettings, *, start: int = 0, engine=None) -> int:
    """Sample items[start:] in batches and append each to OUT; returns the number of prompts written."""
    import torch

    from alignlab.generation.prompt_eval import evaluate_prompts

    greedy = settings.temperature == 0
    size, written = settings.batch_size, 0
    position = start
    while position < len(items):
        batch = position // size  # batches keep their place in the input when a run resumes
        part = items[position: (batch + 1) * size]
        seed = batch_seed(settings.seed, batch)
        torch.manual_seed(seed)  # our sampler draws from torch's generator; the engine takes the seed
        result = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, part, [], None,
                                  max_new_tokens=settings.max_new_tokens, num_samples=settings.n, greedy=greedy,
                                  temperature=settings.temperature or 1.0, top_p=settings.top_p, seed=seed,
                                  batch_size=len(part) * settings.n, engine=engine)
        k = 1 if greedy else settings.n
        texts = [s["completion"] for s in result.samples]
        append_rows(out, [output_row(item, texts[i * k: (i + 1) * k]) for i, item in enumerate(part)])
        position += len(part)
        written += len(part)
        print(f"[sample] {position}/{len(items)} prompts", flush=True)
    return written


def sample_command(model: str, prompts: str, out: str, settings: SampleSettings) -> Path:
    """`alignlab sample`: load, check what OUT already holds, sample the rest."""
    from alignlab.data.prompts import load_prompt_items
    from alignlab.generation.vllm import engine_for_model, engine_or_none
    from alignlab.model.inference import load_for_inference

    settings.check()
    items, _ = load_prompt_items(prompts, split=settings.split, label=f"prompts ({prompts})")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = rows_written(path, items, settings.n)
    if start == len(items):
        print(f"{path} already has all {start} prompts; nothing to sample")
        return path
    if start:
        print(f"[sample] {path} has {start} of {len(items)} prompts; continuing from prompt {start + 1}")
    loaded = load_for_inference(model, dtype=settings.dtype, use_chat_template=settings.chat_template,
                                system_prompt=settings.system_prompt)
    longest = max(len(loaded.templater.ids(loaded.templater.prompt_text(item.prompt))) for item in items[start:])
    engine = engine_or_none(settings.backend, lambda: engine_for_model(
        loaded.path, loaded.model, loaded.tokenizer, max_model_len=longest + settings.max_new_tokens,
        seed=settings.seed))
    written = sample_batches(loaded, items, path, settings, start=start, engine=engine)
    print(f"wrote {written} prompts x {settings.n if settings.temperature else 1} responses to {path}")
    return path
