"""Chat templating and tokenisation: the one place text becomes token ids and loss masks.

A prompt is a string or a list of messages; a response is a string. With a chat template the
prompt is rendered with `add_generation_prompt=True` and the response is what the template adds
for the assistant turn (up to and including the end-of-turn token). Without one, the text is
used as it is and the EOS token closes the response.

Prefix consistency: tokenising the prompt alone must give the first tokens of tokenising
prompt + response. When it does not (a merge across the boundary, or a template that rewrites
earlier turns), we keep the separate tokenisations, which is what the model sees when it
generates, and count the mismatch so the caller can report it.

Multi-turn SFT renders each assistant turn as the difference between the conversation up to it
and up to the turn before. Templates that rewrite earlier turns (Qwen3 and the R1 distills strip
the <think> block of every assistant turn but the last) break that: the render up to a turn is
not a prefix of the next. Such a conversation is rendered once, whole, and each assistant turn is
trained as it appears there (earlier turns without their reasoning, as the model sees them when
it answers later), through its end-of-turn token; a turn that cannot be located fails, naming it.

The end of a response is any stop id (`stop_ids`: the tokenizer's EOS plus the generation config's
EOS ids, e.g. Qwen2.5-Instruct's <|im_end|> and <|endoftext|>): what a template writes after it
is never trained and never generated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Union

from alignlab.errors import DataError

Prompt = Union[str, list[dict]]


@dataclass
class EncodeStats:
    prefix_mismatches: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_long: int = 0
    skipped_bad: int = 0
    dropped: Counter = field(default_factory=Counter)  # rows that carry no preference, by reason ("ties")
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.examples} examples"]
        parts += [f"dropped {count} {reason}" for reason, count in self.dropped.items()]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to train.max_length")
        if self.dropped_long:
            parts.append(f"{self.dropped_long} dropped as longer than train.max_length")
        if self.skipped_bad:
            parts.append(f"{self.skipped_bad} bad rows skipped")
        if self.prefix_mismatches:
            parts.append(f"{self.prefix_mismatches} with a prompt/response tokenisation mismatch at the boundary")
        return ", ".join(parts)


def render_chat(tokenizer, messages: list[dict], **kwargs) -> str:
    """The chat template's text for `messages`; DataError (no location: callers add it) when the
    template rejects them, e.g. roles that do not alternate, or a system turn where it allows none."""
    try:
        from jinja2.exceptions import TemplateError
    except ImportError:  # pragma: no cover - transformers needs jinja2 for chat templates
        TemplateError = ValueError
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except (TemplateError, ValueError) as exc:
        raise DataError(f"the chat template cannot render these messages ({exc})") from None


class Templater:
    """Renders prompts and responses for one tokenizer; holds the choice of chat template or plain text."""

    def __init__(self, tokenizer, *, use_chat_template: bool = True, system_prompt: Optional[str] = None,
                 stop_ids: Optional[list[int]] = None, tools: Optional[list[dict]] = None):
        self.tokenizer = tokenizer
        self.tools = tools or None  # JSON schemas the chat template lists (tool-using GRPO, tool SFT rows)
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.stop_ids = set(stop_ids or []) | ({tokenizer.eos_token_id} - {None})
        self.stats = EncodeStats()

    def first_stop(self, ids: list[int]) -> Optional[int]:
        """Index of the first stop id in `ids`, or None."""
        return next((i for i, token in enumerate(ids) if token in self.stop_ids), None)

    # -- text
    def render(self, messages: list[dict], tools: Optional[list[dict]] = None, **kwargs) -> str:
        """The chat template's text, with the tools (these, or the templater's) rendered as it renders them."""
        tools = tools or self.tools
        return render_chat(self.tokenizer, messages, **({"tools": tools} if tools else {}), **kwargs)

    def messages(self, prompt: Prompt) -> list[dict]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.system_prompt and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.system_prompt}] + messages
        return messages

    def prompt_text(self, prompt: Prompt) -> str:
        if self.chat:
            return self.render(self.messages(prompt), add_generation_prompt=True)
        if isinstance(prompt, str):
            return prompt if not self.system_prompt else f"{self.system_prompt}\n\n{prompt}"
        return "".join(f"{m['role']}: {m['content']}\n" for m in self.messages(prompt)) + "assistant: "

    def response_text(self, prompt: Prompt, response: str) -> str:
        """What follows the prompt text for this response, end-of-turn included."""
        if not self.chat:
            return response + (self.tokenizer.eos_token or "")
        prefix = self.prompt_text(prompt)
        full = self.render(self.messages(prompt) + [{"role": "assistant", "content": response}])
        if not full.startswith(prefix):
            # Some templates (e.g. ones that strip reasoning from earlier turns) re-render the prompt.
            self.stats.prefix_mismatches += 1
            return response + (self.tokenizer.eos_token or "")
        return full[len(prefix):]

    # -- ids
    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, prompt: Prompt, response: str) -> tuple[list[int], list[int]]:
        """(prompt_ids, response_ids); the response ends at its first end-of-turn/EOS token."""
        prompt_text = self.prompt_text(prompt)
        response_text = self.response_text(prompt, response)
        prompt_ids = self.ids(prompt_text)
        response_ids = self.ids(response_text)
        joint = self.ids(prompt_text + response_text)
        if joint[: len(prompt_ids)] != prompt_ids or len(joint) != len(prompt_ids) + len(response_ids):
            self.stats.prefix_mismatches += 1
        stop = self.first_stop(response_ids)
        if stop is not None:
            # Drop what a template writes after end-of-turn (e.g. a newline): never trained, never generated.
            response_ids = response_ids[: stop + 1]
        return prompt_ids, response_ids


def fit_length(prompt_ids: list[int], response_ids: list[int], max_length: int, keep_prompt: int = 8):
    """Truncation policy: cut the prompt from the left first (keeping at least `keep_prompt` tokens),
    then the response from the right. Returns (prompt_ids, response_ids, truncated)."""
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow <= 0:
        return prompt_ids, response_ids, False
    keep_prompt = min(keep_prompt, max_length)  # a max_length below keep_prompt still bounds the total
    cut_prompt = min(overflow, max(0, len(prompt_ids) - keep_prompt))
    prompt_ids = prompt_ids[cut_prompt:]
    overflow -= cut_prompt
    if overflow > 0:
        response_ids = response_ids[: max(0, len(response_ids) - overflow)]  # not a negative (from-the-end) index
    return prompt_ids, response_ids, True


def encode_conversation(templater: Templater, messages: list[dict],
                        tools: Optional[list[dict]] = None) -> tuple[list[int], list[int]]:
    """Multi-turn SFT: (input_ids, loss_mask) with the loss on every assistant turn and nothing else
    (tool and user turns are context); `tools`: the row's tool schemas, which the template lists.

    Each turn is rendered as the difference between the template of the conversation up to it and
    up to the turn before, so the ids are exactly the template's text, split at turn boundaries.
    """
    tok = templater.tokenizer
    messages = templater.messages(messages)  # data.system_prompt first, unless the row has its own system turn
    if not templater.chat:
        ids, mask = [], []
        for m in messages:
            is_answer = m["role"] == "assistant"
            head = templater.ids(f"{m['role']}: ")
            body = templater.ids(m["content"] + ((tok.eos_token or "") if is_answer else "\n"))
            ids += head + body
            mask += [0] * len(head) + [int(is_answer)] * len(body)
        return ids, mask
    if messages and messages[0]["role"] == "assistant":
        raise DataError("the conversation starts with an assistant message; the chat template needs a user "
                        "(or system) turn before it")
    pieces, rendered = [], ""  # (text, is_answer), in order
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = templater.render(messages[:i], tools, add_generation_prompt=True)
        upto = templater.render(messages[: i + 1], tools)
        if not before.startswith(rendered) or not upto.startswith(before):
            templater.stats.prefix_mismatches += 1
            return _encode_by_spans(templater, messages, tools)  # the template rewrites earlier turns
        pieces += [(before[len(rendered):], False), (upto[len(before):], True)]
        rendered = upto
    ids, mask = [], []
    for text, is_answer in pieces:
        piece = templater.ids(text)
        stop = templater.first_stop(piece) if is_answer else None
        trained = len(piece) if not is_answer else (stop + 1 if stop is not None else len(piece))
        ids += piece
        mask += [int(is_answer)] * trained + [0] * (len(piece) - trained)
    return ids, mask


def _encode_by_spans(templater: Templater, messages: list[dict], tools=None) -> tuple[list[int], list[int]]:
    """The whole conversation rendered once; loss on each assistant turn as it appears there: from
    where the template's generation prompt for it ends (the render of the turns before it, with
    the generation prompt, is a prefix of the whole) through its first end-of-turn token."""
    tok = templater.tokenizer
    full = templater.render(messages, tools)
    stop_texts = [t for t in tok.convert_ids_to_tokens(sorted(templater.stop_ids)) if t]
    spans = []
    for number, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = templater.render(messages[:number], tools, add_generation_prompt=True)
        if not full.startswith(before):
            raise DataError(f"message {number} (assistant): the chat template renders the turns before it differently "
                            "inside the whole conversation, so this turn's tokens cannot be located and masked")
        start = len(before)
        ends = [full.find(stop, start) for stop in stop_texts]
        ends = [e + len(stop) for e, stop in zip(ends, stop_texts) if e >= 0]
        end = min(ends) if ends else len(full)
        spans.append((start, end))
    encoded = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [int(any(a < e and b > s for s, e in spans)) for a, b in offsets]
    return ids, mask
