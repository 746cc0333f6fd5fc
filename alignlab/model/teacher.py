"""A frozen teacher model for distillation, and the check that it reads the student's token ids.

Distillation compares the two models' probabilities of the same token ids: with another tokenizer
every id means another string and the loss is silently meaningless (TRL's GKD trainer takes any
teacher). So the start fails unless both tokenizers agree on the vocabulary, the special tokens and
the ids of a probe text, naming both models and the first difference.
"""

from __future__ import annotations

import dataclasses

from alignlab.errors import ConfigError
from alignlab.model.loading import disable_dropout, load_model

# Text the two tokenizers must split into the same ids: words, digits, punctuation, whitespace, non-ASCII.
PROBE = "The answer is 42.\n<answer>3+4=7</answer>  Ça coûte 12,50 € — 東京 🙂 def f(x): return x**2"


def _special(tokenizer) -> dict:
    return {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}


def tokenizer_difference(student, teacher) -> str | None:
    """What differs between two tokenizers as a distillation pair would see it, or None."""
    if len(student) != len(teacher):
        return f"vocabulary sizes differ: {len(student)} vs {len(teacher)}"
    s_ids, t_ids = student(PROBE, add_special_tokens=False)["input_ids"], teacher(PROBE, add_special_tokens=False)["input_ids"]
    if s_ids != t_ids:
        at = next((i for i, (a, b) in enumerate(zip(s_ids, t_ids)) if a != b), min(len(s_ids), len(t_ids)))
        return (f"the text {PROBE[:30]!r}... becomes other token ids: from position {at}, "
                f"{s_ids[at:at + 5]} vs {t_ids[at:at + 5]}")
    s_special, t_special = _special(student), _special(teacher)
    # pad is only a filler the loaders may set to EOS: it never reaches a loss.
    differ = [f"{n}: {s_special[n]} vs {t_special[n]}" for n in s_special if n != "pad" and s_special[n] != t_special[n]]
    if differ:
        return "special token ids differ (" + ", ".join(differ) + ")"
    return None


def check_same_tokenizer(student, teacher, student_name: str, teacher_name: str) -> None:
    difference = tokenizer_difference(student, teacher)
    if difference is not None:
        raise ConfigError(f"the teacher distill.teacher={teacher_name} does not share the student's tokenizer "
                          f"(model.name_or_path={student_name}): {difference}. On-policy distillation compares "
                          "both models' probabilities of the same token ids; pick a teacher of the student's family")


def load_teacher(model_config, teacher: str, device):
    """The teacher model in eval mode, without gradients or dropout, on `device`. `teacher`: a path, run
    directory or hub id, loaded with the student's dtype and remote-code setting, never with LoRA."""
    config = dataclasses.replace(model_config, name_or_path=teacher, load_in_4bit=False, revision=None)
    model = load_model(config, None, for_training=False)
    disable_dropout(model)
    return model.eval().requires_grad_(False).to(device)
