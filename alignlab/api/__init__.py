"""The Python API: `alignlab.sft / dpo / grpo / evaluate(...)` build the same run config the CLI builds and
call the same trainers; nothing here trains.

Keyword arguments are config keys, checked as the CLI checks them: a field name unique across the
command's sections (`beta`, `max_steps`, `lr`), a dotted key (`**{"train.lr": 1e-5}`), or a section as a
dict (`lora={"r": 8}`); `lora=True` is `lora.enabled=True`. `config=` (a YAML path, a dict, or a run
config dataclass) is the base they override. What a file cannot hold is turned into something it can,
so a run stays reproducible from its config.yaml:

- in-memory data (a list of dicts, a pandas DataFrame, a `datasets.Dataset`) is written as JSONL under
  `<runs>/.inputs/`, named by its content's hash;
- an already-loaded model (+ `tokenizer=`) is saved there too;
- a reward or tool given as a Python callable is recorded by its import path when it has one
  (`package.module:function`), else as `<python>:NAME`, which only this Python process can resolve:
  resuming such a run from the CLI says what to pass instead.
"""

from alignlab.api.evaluation import evaluate
from alignlab.api.keywords import build_config
from alignlab.api.run import Run
from alignlab.api.training import distill, dpo, grpo, rm, sft

__all__ = ["sft", "dpo", "grpo", "rm", "distill", "evaluate", "build_config", "Run"]
