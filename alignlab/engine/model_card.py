"""A run directory -> the README.md (model card) that goes to the Hub with its weights.

Everything in it is read from the run: the resolved config.yaml (method, settings, data, base
model) and metrics.jsonl (the last training record and the last evaluation). The YAML header is the
Hub's metadata: `base_model` only when it is a Hub id (a local path there is an error on the Hub),
`library_name` peft for an adapter and transformers for full weights, and the tags the Hub filters by.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml


CONFIG_NAME = "alignlab_config.yaml"  # the run's config.yaml, uploaded beside the weights under this name
METHODS = {
    "sft": "supervised fine-tuning (SFT)",
    "dpo": "Direct Preference Optimization (DPO, Rafailov et al. 2023)",
    "grpo": "Group Relative Policy Optimization (GRPO, Shao et al. 2024)",
}
# Per-step bookkeeping in metrics.jsonl that says nothing about the model.
PLUMBING = {"step", "lr", "step_seconds", "elapsed", "skipped_steps", "tokens_per_second"}
LOCAL_DATA = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class RunInfo:
    """What the card says about a run, read from its directory."""
    command: str
    config: dict
    train_record: Optional[dict]  # the last record with a loss
    eval_record: Optional[dict]  # the eval/ metrics of the last step that has any, with that step
    base_model: str  # the model the run started from, as the config names it
    base_hub_id: Optional[str]  # the Hub model it derives from, when known (followed through earlier runs)


def read_run(run_dir: Path) -> RunInfo:
    """The run's config and final metrics. A directory without config.yaml is not a run: the caller checks."""
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    first = re.match(r"#\s*alignlab\s+(\w+)", text)
    config = yaml.safe_load(text) or {}
    command = first.group(1) if first else ("dpo" if "dpo" in config else "grpo" if "grpo" in config else "sft")
    records = _read_metrics(run_dir / "metrics.jsonl")
    train = next((r for r in reversed(records) if isinstance(r.get("loss"), (int, float))), None)
    evals: dict[int, dict] = {}
    for record in records:
        metrics = {k: v for k, v in record.items() if k.startswith("eval/")}
        if metrics:
            evals.setdefault(record.get("step", 0), {}).update(metrics)
    last_eval = {"step": max(evals), **evals[max(evals)]} if evals else None
    base = str(_get(config, "model", "name_or_path") or "tiny")
    return RunInfo(command, config, train, last_eval, base, hub_root(base))


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run: the others still count
            continue
    return [r for r in records if isinstance(r, dict)]


def hub_root(name: str, depth: int = 0) -> Optional[str]:
    """The Hub id a model derives from: `name` itself when it is one; for a run directory (or its
    final/ or a checkpoint's model/), the base of that run, followed back a few runs."""
    from alignlab.model.loading import HUB_ID  # here: `alignlab push` offline answers before torch is imported
    path = Path(name).expanduser()
    if not path.exists():  # org/name only: a bare name here is `tiny`, alignlab's own offline model
        return name if HUB_ID.match(name) and "/" in name else None
    for candidate in (path, path.parent, path.parent.parent):
        config = candidate / "config.yaml"
        if config.is_file() and depth < 4:
            try:
                base = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model", {}).get("name_or_path")
            except (OSError, yaml.YAMLError, AttributeError):
                return None
            return hub_root(str(base), depth + 1) if base else None
    return None


def _get(config: dict, section: str, key: str, default: Any = None) -> Any:
    value = (config.get(section) or {}).get(key, default)
    return default if value is None else value


def data_sources(config: dict) -> list[tuple[str, str]]:
    """(role, source) of every data file or Hub dataset the run read."""
    out = []
    train = _get(config, "data", "train")
    for item in train if isinstance(train, list) else [train]:
        source = item.get("path") if isinstance(item, dict) else item
        if source:
            out.append(("train", str(source)))
    if _get(config, "data", "eval"):
        out.append(("eval", str(_get(config, "data", "eval"))))
    return out


def is_hub_dataset(source: str) -> bool:
    """A source the data loader takes for a Hub dataset (io.read_rows): no local suffix, not a local path."""
    from alignlab.model.loading import HUB_ID
    name = source.split(":", 1)[0]
    return not name.endswith(LOCAL_DATA) and not Path(source).exists() and bool(HUB_ID.match(name))


def settings(info: RunInfo) -> list[tuple[str, str]]:
    """The settings someone comparing models asks about first, as (name, value) rows."""
    c, train = info.config, info.config.get("train") or {}
    rows = [
        ("method", METHODS.get(info.command, info.command)),
        ("base model", info.base_model + (f" (from {info.base_hub_id})" if info.base_hub_id not in (None, info.base_model)
                                          else "")),
        ("optimizer steps", str(train.get("max_steps"))),
        ("batch", f"{train.get('batch_size')} per process x {train.get('grad_accum', 1)} accumulation "
                  f"({'sequences' if info.command == 'sft' else 'pairs' if info.command == 'dpo' else 'prompts'})"),
        ("learning rate", f"{train.get('lr')} ({train.get('lr_scheduler', 'constant')} schedule, "
                          f"{train.get('warmup_steps', 0)} warmup steps), weight decay {train.get('weight_decay', 0)}"),
        ("max length", f"{train.get('max_length')} tokens"),
        ("precision", f"weights {_get(c, 'model', 'dtype', 'float32')}, mixed precision {train.get('mixed_precision', 'no')}"),
        ("seed", str(train.get("seed", 0))),
    ]
    if info.command == "dpo":
        dpo = c.get("dpo") or {}
        rows.append(("DPO", f"beta {dpo.get('beta')}, loss {dpo.get('loss_type')}, reference {dpo.get('reference')}, "
                            f"label smoothing {dpo.get('label_smoothing', 0)}, NLL weight {dpo.get('sft_weight', 0)}"))
    elif info.command == "grpo":
        g = c.get("grpo") or {}
        rows.append(("GRPO", f"{g.get('num_generations')} generations per prompt, up to {g.get('max_completion_length')} "
                             f"tokens, temperature {g.get('temperature')}, loss {g.get('loss_type')}, KL beta "
                             f"{g.get('beta')}, clip {g.get('epsilon_low')}/{g.get('epsilon_high')}, "
                             f"{g.get('num_iterations')} update(s) per rollout, reward scaling {g.get('scale_rewards')}"))
        rewards, weights = g.get("rewards") or [], g.get("reward_weights")
        rows.append(("rewards", ", ".join(f"{r} x {w}" for r, w in zip(rewards, weights)) if weights
                     else ", ".join(rewards)))
        if g.get("tools") or g.get("environment"):
            rows.append(("tools", ", ".join(g.get("tools") or []) or f"environment {g.get('environment')}"))
    lora = c.get("lora") or {}
    if lora.get("enabled"):
        targets = ", ".join(lora.get("target_modules") or []) or "every attention and MLP projection"
        kind = "QLoRA (4-bit base)" if _get(c, "model", "load_in_4bit", False) else "LoRA"
        rows.append((kind, f"r {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}; {targets}"))
    return rows


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _metric_table(record: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in record.items():
        if key in PLUMBING or key.startswith("memory/"):
            continue
        lines.append(f"| {key} | {_number(value)} |")
    return lines


def metadata(info: RunInfo, *, adapter: bool, license: str) -> dict:
    """The card's YAML header: what the Hub indexes."""
    meta: dict[str, Any] = {}
    if info.base_hub_id:
        meta["base_model"] = info.base_hub_id
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["license"] = license
    tags = ["alignlab", info.command]
    if _get(info.config, "lora", "enabled", False):
        tags.append("lora")
    meta["tags"] = tags
    hub_data = [s.split(":", 1)[0] for _, s in data_sources(info.config) if is_hub_dataset(s)]
    if hub_data:
        meta["datasets"] = sorted(set(hub_data))
    meta["pipeline_tag"] = "text-generation"
    return meta


def model_card(info: RunInfo, repo_id: str, *, adapter: bool, license: str) -> str:
    """README.md for `repo_id`: YAML metadata, then what the model is, how it was trained, how it
    did, how to load it and how to train it again."""
    header = yaml.safe_dump(metadata(info, adapter=adapter, license=license), sort_keys=False, allow_unicode=True)
    what = "a LoRA adapter" if adapter else "a model"
    base = info.base_hub_id or info.base_model
    lines = [f"---\n{header}---", "", f"# {repo_id.split('/')[-1]}", "",
             f"{what[0].upper() + what[1:]} trained from `{base}` with {METHODS.get(info.command, info.command)} "
             "by alignlab.", ""]
    if adapter and not info.base_hub_id:
        lines += [f"The base model `{info.base_model}` is not on the Hub: this adapter loads only where that model "
                  "is (its path is in `adapter_config.json`).", ""]
    lines += ["## Use", "", "```python"]
    if adapter:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  # loads the base, then this adapter']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")']
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", "", "## Training", "",
              "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in settings(info)]
    lines += ["", "Data:", ""]
    for role, source in data_sources(info.config) or [("train", "(not recorded)")]:
        where = "Hub dataset" if is_hub_dataset(source) else "local file, not uploaded"
        lines.append(f"- {role}: `{source}` ({where})")
    lines += ["", "## Results", ""]
    if info.train_record:
        lines += [f"Last training step ({info.train_record.get('step')}):", ""] + _metric_table(info.train_record) + [""]
    if info.eval_record:
        lines += [f"Last evaluation (step {info.eval_record['step']}), on the eval data above:", ""]
        lines += _metric_table(info.eval_record) + [""]
    if not (info.train_record or info.eval_record):
        lines += ["No metrics were recorded (metrics.jsonl is missing or empty).", ""]
    lines += ["## Reproduce", "",
              f"The run's resolved config is in this repository as `{CONFIG_NAME}`. With the same data files:", "",
              "```bash", "pip install alignlab", reproduce_command(info), "```", "",
              "## License", "", license_text(license, base), ""]
    return "\n".join(lines)


def reproduce_command(info: RunInfo) -> str:
    command = f"alignlab {info.command} -c {CONFIG_NAME}"
    resume = _get(info.config, "train", "resume", False)
    if resume not in (False, None, "", "false"):  # the run was continued: a new one starts from scratch
        command += " train.resume=false"
    return command


def license_text(license: str, base: str) -> str:
    if license == "other":
        return (f"Not stated. Weights derived from `{base}` are bound by that model's license; "
                "push again with `--license <id>` to say which.")
    return f"`{license}`. Weights derived from `{base}` are also bound by that model's license."


def default_license(info: RunInfo) -> str:
    """The base model's license, read offline from its card (a local model's README.md, or the Hub
    cache's copy); apache-2.0 for `tiny`, alignlab's own random-init model; else "other"."""
    if info.base_model == "tiny":
        return "apache-2.0"
    card: Optional[Path] = None
    local = Path(info.base_model).expanduser()
    if (local / "README.md").is_file():
        card = local / "README.md"
    elif info.base_hub_id:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(info.base_hub_id, "README.md")
        card = Path(cached) if isinstance(cached, str) else None
    license = _card_license(card) if card else None
    return license or "other"


def _card_license(card: Path) -> Optional[str]:
    """The `license:` of a model card's YAML header, if it has one."""
    try:
        text = card.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return None
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None
