"""A finished run -> a Hugging Face Hub repository (`alignlab push`, `train.push_to_hub`).

What goes up: a full fine-tune's final/ (plain transformers weights); for a LoRA run the adapter
(its last checkpoint's model/: a few MB, loaded onto the base with peft), or with `merged` the
merged weights final/ holds. Beside them a generated model card (README.md, alignlab.engine.model_card)
and the run's config. It is all assembled first in <run>/hub/ (hard links, so no weights are copied):
exactly what is uploaded, readable before and after.

Every check that can fail without the network comes first (offline mode, no token, the hub not
answering a TCP connection): huggingface_hub itself would retry with back-off for a minute first.
The token is read by huggingface_hub from its own store or HF_TOKEN; alignlab never writes it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from alignlab.engine.model_card import CONFIG_NAME, RunInfo, default_license, model_card, read_run
from alignlab.errors import AlignlabError
from alignlab.hub import endpoint, hub_offline, hub_reachable
from alignlab.model.run_files import latest_checkpoint

log = logging.getLogger("alignlab")

STAGING = "hub"  # <run>/hub/: the files of the last push (or dry run)
CARD = "README.md"
WEIGHTS = (".safetensors", ".bin", ".pt")  # hard-linked into hub/, not copied


@dataclass
class PushPlan:
    run_dir: Path
    repo_id: str
    source: Path  # the folder whose weights and tokenizer go up: final/ or <checkpoint>/model
    adapter: bool  # a LoRA adapter rather than full weights
    license: str
    info: RunInfo

    @property
    def staging(self) -> Path:
        return self.run_dir / STAGING


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise AlignlabError(f"'{repo_id}' is not a Hub repository id: expected org/name (letters, digits, '-', '_' "
                            "and '.')") from None


def plan_push(run_dir: Path, repo_id: str, *, merged: bool = False, license: Optional[str] = None) -> PushPlan:
    """What would be pushed, read from the run directory; nothing is written. Errors name what is missing."""
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "is not a run directory (no config.yaml in it)"
        raise AlignlabError(f"{run_dir} {what}: give the directory a training run wrote, e.g. runs/sft_tiny_...")
    info = read_run(run_dir)
    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise AlignlabError(
            f"{run_dir} has no final/ model: the run has not finished. Continue it with `alignlab {info.command} -c "
            f"{run_dir / 'config.yaml'} train.resume={run_dir}`, then push")
    latest = latest_checkpoint(run_dir)
    adapter_dir = latest / "model" if latest is not None else None
    is_lora = adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file()
    if is_lora and not merged:
        source, adapter = adapter_dir, True
    else:  # final/: a full fine-tune's weights, or a LoRA run's adapter merged into its base
        source, adapter = final, False
    return PushPlan(run_dir, repo_id, source, adapter, license or default_license(info), info)


def stage(plan: PushPlan) -> list[Path]:
    """Fill <run>/hub/ with what goes up; returns its files. The weights are hard links (copies where
    the file system has none); the small files are copies, so that editing one there (say,
    adapter_config.json's base model) leaves the run's own untouched. A README.md in the source
    (peft's empty template) gives way to our card."""
    out = plan.staging
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for file in sorted(plan.source.iterdir()):
        if not file.is_file() or file.name == CARD:
            continue
        if not (file.suffix in WEIGHTS and _hard_link(file, out / file.name)):
            shutil.copy2(file, out / file.name)
    shutil.copyfile(plan.run_dir / "config.yaml", out / CONFIG_NAME)
    card = model_card(plan.info, plan.repo_id, adapter=plan.adapter, license=plan.license)
    (out / CARD).write_text(card, encoding="utf-8")
    return sorted(out.iterdir())


def _hard_link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except OSError:  # another file system, or one without hard links
        return False


def check_can_push(repo_id: str) -> None:
    """Fail at once, in one line, when a push cannot work: offline, no token, no hub."""
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if hub_offline():
        raise AlignlabError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is "
                            "set). Unset it on a machine that reaches the Hub, or see what would go up with --dry-run")
    if get_token() is None:
        raise AlignlabError(f"cannot push to {repo_id}: no Hugging Face token. Log in with `hf auth login` (or set "
                            "HF_TOKEN) using a token with write access")
    if not hub_reachable():
        raise AlignlabError(f"cannot push to {repo_id}: {endpoint()} cannot be reached (no network?). Push from a "
                            "machine that reaches it, or see what would go up with --dry-run")


def upload(plan: PushPlan, *, private: bool = False, revision: Optional[str] = None) -> str:
    """Create the repository if needed (and the branch `revision`), upload <run>/hub/ as one commit;
    returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    what = "LoRA adapter" if plan.adapter else "model"
    try:
        api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(plan.repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=plan.repo_id, folder_path=plan.staging, revision=revision,
                                   commit_message=f"alignlab {plan.info.command}: {what} from {plan.run_dir.name}")
    except HfHubHTTPError as exc:  # the Hub answered: no write access, a name taken, ...
        raise AlignlabError(f"the Hub refused the push to {plan.repo_id}: {_first_line(exc)}") from None
    except Exception as exc:
        if not _network_error(exc):
            raise
        raise AlignlabError(f"the push to {plan.repo_id} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return commit.commit_url


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _network_error(exc: Exception) -> bool:
    """A connection lost or refused: huggingface_hub's HTTP client raises its own types (httpx's), not OSError."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests")


def push_run(run_dir: Path, repo_id: str, *, merged: bool = False, private: bool = False,
             revision: Optional[str] = None, license: Optional[str] = None) -> str:
    """The whole push, as `alignlab push` does it without --dry-run (train.push_to_hub: at the end of
    training); returns the commit URL. A failure says how to push the finished run later."""
    try:
        check_can_push(repo_id)
        plan = plan_push(run_dir, repo_id, merged=merged, license=license)
        stage(plan)
        url = upload(plan, private=private, revision=revision)
    except AlignlabError as exc:
        raise AlignlabError(f"{exc}. The run itself is complete: push it later with `alignlab push {run_dir} "
                            f"{repo_id}`") from None
    log.info("pushed the %s of %s to %s", "LoRA adapter" if plan.adapter else "model", run_dir, url)
    return url
