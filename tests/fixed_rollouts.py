"""GRPO rollouts that do not depend on how prompts are split over processes, for 1-vs-2-process tests.

`install(setattr)` makes the GRPO trainer sample each prompt's completions on their own, under a
seed made from the prompt's ids and how often that prompt was sampled before, so one process with
4 prompts and two with 2 each draw the same completions. Run as a script (under torchrun), it
installs itself and then runs `alignlab <argv>`.
"""

from __future__ import annotations

import sys
import zlib


def install(setattr_fn) -> None:
    import torch

    import alignlab.trainers.grpo as grpo_module
    from alignlab.generation.sampler import concat_rollouts, generate

    seen: dict[tuple, int] = {}

    def per_prompt(model, tokenizer, prompts, **kwargs):
        parts = []
        for ids in prompts:
            key = tuple(ids)
            seen[key] = seen.get(key, 0) + 1
            torch.manual_seed(zlib.crc32(repr((key, seen[key])).encode()))
            parts.append(generate(model, tokenizer, [ids], **kwargs))
        return concat_rollouts(parts, tokenizer.pad_token_id)

    setattr_fn(grpo_module, "generate", per_prompt)


if __name__ == "__main__":
    install(setattr)
    from alignlab.cli import main

    sys.exit(main(sys.argv[1:]))
