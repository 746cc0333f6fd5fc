"""`RewardModel`: a trained reward model (a run of `alignlab rm`, a model directory or a hub id) that scores
(prompt, completion) texts. The one scoring path for GRPO, iterate, pairs and eval.

Text in, floats out: the completion is rendered with the reward model's *own* tokenizer and chat
template (as its training rendered the pairs: `Templater.encode`, the assistant turn closed by the
template's end-of-turn), never handed over as another model's token ids, so a policy and a reward
model with different vocabularies or templates work together. Scoring runs batched (rows sorted by
length, so a batch pads little), in eval mode, without gradients, in the model's dtype.

Truncation: a sequence longer than `max_length` loses the start of its prompt first (at least 8
prompt tokens kept), then the end of the completion, as training does (`data.templates.fit_length`);
`truncated` counts such sequences.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch

from alignlab.data.templates import Prompt, Templater, fit_length
from alignlab.scoring.heads import load_classifier, pad_batch, score_head, sequence_scores

log = logging.getLogger("alignlab")


def _run_settings(path_or_run: str) -> dict:
    """The data settings a run of `alignlab rm` trained with (chat template, system prompt, max length)."""
    import yaml

    directory = Path(path_or_run)
    for config_file in (directory / "config.yaml", directory.parent / "config.yaml"):  # a run dir, or its final/
        if config_file.is_file():
            values = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
            data, train = values.get("data") or {}, values.get("train") or {}
            return {"use_chat_template": data.get("chat_template", True), "system_prompt": data.get("system_prompt"),
                    "max_length": train.get("max_length")}
    return {}


class RewardModel:
    """A reward model ready to score text.

    >>> rm = RewardModel.load("runs/rm_tiny")  # doctest: +SKIP
    >>> rm.score(["37+48=?"], ["<answer>85</answer>"])  # doctest: +SKIP
    [2.31]
    """

    def __init__(self, model, tokenizer, *, device=None, batch_size: int = 32, max_length: int = 1024,
                 use_chat_template: bool = True, system_prompt: Optional[str] = None, name: str = ""):
        from alignlab.model.loading import stop_token_ids

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size, self.max_length = batch_size, max_length
        self.templater = Templater(tokenizer, use_chat_template=use_chat_template, system_prompt=system_prompt,
                                   stop_ids=stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
        self.head = score_head(model)
        self.truncated = 0  # sequences cut to max_length so far
        self.scored = 0

    @classmethod
    def load(cls, path_or_run: Union[str, Path], *, device=None, dtype: str = "auto", batch_size: int = 32,
             max_length: Optional[int] = None, trust_remote_code: bool = False) -> "RewardModel":
        """From a run directory of `alignlab rm` (its final/, else its latest checkpoint), a model directory
        or a hub id of a one-output sequence classifier. The run's chat-template settings and max length
        are used unless `max_length` is given."""
        from alignlab.config.sections import ModelConfig
        from alignlab.model.inference import model_label, pick_dtype
        from alignlab.model.loading import load_tokenizer

        name = str(path_or_run)
        settings = _run_settings(name)
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        config = ModelConfig(name_or_path=name, dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code)
        model = load_classifier(config, None, pad_token_id=tokenizer.pad_token_id, for_training=False,
                                require_trained=True)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model.to(device), tokenizer, device=device, batch_size=batch_size,
                   max_length=max_length or settings.get("max_length") or 1024,
                   use_chat_template=settings.get("use_chat_template", True),
                   system_prompt=settings.get("system_prompt"), name=model_label(name))

    def encode(self, prompt: Prompt, completion: str) -> list[int]:
        """The token ids this model scores for one (prompt, completion), truncated to max_length."""
        prompt_ids, completion_ids = self.templater.encode(prompt, completion)
        kept_prompt, kept_completion, cut = fit_length(prompt_ids, completion_ids, self.max_length,
                                                       bos_id=self.tokenizer.bos_token_id)
        self.truncated += int(cut)
        return kept_prompt + kept_completion

    def encode_conversation(self, messages: list[dict]) -> list[int]:
        """A whole conversation ending with an assistant turn (a tool-using trajectory), as the template renders it."""
        prompt, completion = self.templater.turn(self.templater.messages(messages[:-1]), messages[-1]["content"])
        completion_ids = self.templater.ids(completion)
        stop = self.templater.first_stop(completion_ids)  # what a template writes after end-of-turn is not scored
        completion_ids = completion_ids[: stop + 1] if stop is not None else completion_ids
        kept_prompt, kept_completion, cut = fit_length(self.templater.ids(prompt), completion_ids,
                                                       self.max_length, bos_id=self.tokenizer.bos_token_id)
        self.truncated += int(cut)
        return kept_prompt + kept_completion

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        """Scores of token-id sequences, in order; batched by similar length."""
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores: list[float] = [0.0] * len(sequences)
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                ids, mask = pad_batch([sequences[i] for i in rows], self.tokenizer.pad_token_id, side="right")
                values = sequence_scores(self.model, ids.to(self.device), mask.to(self.device), head=self.head)
                for i, value in zip(rows, values.float().tolist()):
                    scores[i] = value
        finally:
            self.model.train(was_training)
        self.scored += len(sequences)
        return scores

    def score(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """One score per (prompt, completion): prompts are strings or message lists, completions text."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.score_ids([self.encode(p, c) for p, c in zip(prompts, completions)])

    def score_conversations(self, conversations: list[list[dict]]) -> list[float]:
        """One score per conversation, judged on its last assistant turn in the context of the rest."""
        return self.score_ids([self.encode_conversation(c) for c in conversations])
