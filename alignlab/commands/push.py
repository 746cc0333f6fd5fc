"""`alignlab push RUN_DIR org/name`: a finished run's model (or LoRA adapter) and a generated model
card to the Hugging Face Hub. `--dry-run` writes the card and lists what would go up, offline.
The work is in alignlab.engine.hub_push, which `train.push_to_hub` also uses at the end of training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from alignlab.engine.hub_push import CARD, check_can_push, plan_push, stage, upload


def push_command(run_dir: str, repo_id: str, *, merged: bool = False, private: bool = False,
                 revision: Optional[str] = None, license: Optional[str] = None, dry_run: bool = False) -> None:
    if not dry_run:
        check_can_push(repo_id)  # first of all: offline, this is the one line the user sees
    plan = plan_push(Path(run_dir), repo_id, merged=merged, license=license)
    files = stage(plan)
    lora = bool((plan.info.config.get("lora") or {}).get("enabled"))
    what = "LoRA adapter" if plan.adapter else "merged model" if lora else "model"
    where = f"{repo_id}" + (f" (branch {revision})" if revision else "") + (", private" if private else "")
    print(f"{'would push' if dry_run else 'pushing'} the {what} of {plan.run_dir} (from {plan.source}) to {where}:")
    for file in files:
        print(f"  {file.name:<32} {_size(file.stat().st_size):>10}")
    if plan.license == "other":
        print(f"license: not known for {plan.info.base_model}; the card says \"other\" (pass --license ID to state it)")
    if plan.adapter:
        print("the adapter alone; --merged pushes the merged weights in final/ instead")
    if dry_run:
        print(f"dry run: nothing uploaded. The card is {plan.staging / CARD}; the files are in {plan.staging}/")
        return
    url = upload(plan, private=private, revision=revision)
    print(f"pushed: {url}")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
