"""Metrics: metrics.jsonl (always), console progress, train.log, and TensorBoard / W&B when asked."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Optional

from alignlab.errors import ConfigError

log = logging.getLogger("alignlab")


def setup_logging(log_file: Optional[Path] = None, *, console: bool = True, hold: bool = False) -> None:
    """alignlab's logger writes to `log_file` and (through tqdm, so bars stay intact) to the console.

    `hold`: no file yet; what is logged meanwhile is kept and written first into the next call's
    file (a run makes its directory only once its data and model have loaded). Files added with
    `keep_log_file` stay through every call."""
    logger = logging.getLogger("alignlab")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    held = []
    for handler in list(logger.handlers):
        if isinstance(handler, _Held):
            held += handler.records
        if not getattr(handler, "kept", False):
            logger.removeHandler(handler)
            handler.close()
    if console:
        logger.addHandler(_TqdmHandler())
    if log_file is not None:
        handler = _file_handler(log_file)
        for record in held:
            handler.handle(record)
        logger.addHandler(handler)
    if hold:  # from now on; lines held for a start that failed are dropped
        logger.addHandler(_Held())


def keep_log_file(log_file: Path) -> logging.Handler:
    """Everything alignlab logs also goes to `log_file` until `drop_log_file` (the demo's log holds
    every stage's run)."""
    handler = _file_handler(log_file)
    handler.kept = True
    logging.getLogger("alignlab").addHandler(handler)
    return handler


def drop_log_file(handler: logging.Handler) -> None:
    logging.getLogger("alignlab").removeHandler(handler)
    handler.close()


def _file_handler(log_file: Path) -> logging.Handler:
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


class _Held(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        from tqdm.auto import tqdm

        if getattr(record, "file_only", False):  # already printed to stdout (the demo's stage lines)
            return
        tqdm.write(self.format(record), file=sys.stderr)


def append_jsonl(path: Path, record: dict) -> None:
    """One line per call, written with a single write(): a killed process leaves whole lines only.

    No fsync per line: the kernel keeps what was written when a process dies; syncing every step
    would cost more than a tiny model's training step. Checkpoints are fsync'd."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """All whole records; a torn last line (from a crash on a filesystem without atomic appends) is skipped."""
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None keeps the file parseable by strict readers
    return value


class Tracker:
    """Writes each logged step to metrics.jsonl and to any configured experiment trackers."""

    def __init__(self, run_dir: Path, report_to: list[str], config_dict: dict, *, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.backends = []
        if not enabled:
            return
        for name in report_to:
            if name == "tensorboard":
                self.backends.append(_TensorBoard(run_dir))
            elif name == "wandb":
                self.backends.append(_WandB(run_dir, config_dict))
            elif name not in ("none", ""):
                raise ConfigError(f"train.report_to: unknown tracker '{name}' (use tensorboard or wandb)")

    def truncate_after(self, step: int) -> None:
        """On resume: forget metrics logged after the checkpoint we restart from."""
        from alignlab.engine.checkpoint import atomic_write_text

        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: clean(v) for k, v in metrics.items()}}
        append_jsonl(self.path, record)
        for backend in self.backends:
            backend.log(step, metrics)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


class _TensorBoard:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.report_to=[tensorboard] needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, step, metrics):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config_dict: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.report_to=[wandb] needs the wandb package: pip install wandb") from None
        # WANDB_MODE=offline works without network; wandb sync uploads later.
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "alignlab"), name=Path(run_dir).name, dir=str(run_dir),
                config=config_dict,
            )
        except Exception as exc:  # wandb's error types (UsageError, CommError, ...) differ between versions
            raise ConfigError(
                f"train.report_to=[wandb]: W&B did not start ({type(exc).__name__}: {exc}). Log in with `wandb login`, "
                "or set WANDB_MODE=offline to log locally without network (upload later with `wandb sync`)."
            ) from None

    def log(self, step, metrics):
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self):
        import wandb

        self.run.finish()
        # finish() can return before W&B's service process has written the run file (an offline run's
        # .wandb file was seen empty right after it); shutting the service down waits for its writers,
        # so the run's files are complete when the command returns. Not while another run is open.
        if wandb.run is None:
            wandb.teardown()
