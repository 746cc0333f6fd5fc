"""Chat templating and tokenisation: the one place text becomes token ids and loss masks.

A prompt is a string or a list of messages; a response is a string. With a chat template the
prompt is rendered with `add_generation_prompt=True` and the response is what the template adds
for the assistant turn (up to and including the end-of-turn token). Without one, the text is
used as it is and the EOS token closes the response.

BOS: a chat template writes the start of the sequence itself (`{{ bos_token }}` in Llama-3's,
Gemma's, R1-Distill's), so its text is tokenised without special tokens, as
`apply_chat_template(tokenize=True)`, vLLM's chat path and TRL do. Plain text (no chat template,
or `data.chat_template=false`) starts with the tokenizer's BOS exactly when `tokenizer(text)`
would put one first (Llama-3, Mistral and Gemma base models; not Qwen, which has none): a base
model was pretrained on sequences that start with it, and Gemma degrades badly without it. The
BOS is written as text at the head of the prompt (as a template writes it), so every path that
tokenises a prompt (SFT, DPO, GRPO, eval, chat) gets it once, and a prompt that already starts
with it is left alone. Left truncation keeps a leading BOS.

Prefix consistency: tokenising the prompt alone must give the first tokens of tokenising
prompt + response. When it does not (a merge across the boundary), we keep the separate
tokenisations, which is what the model sees when it generates, and count the mismatch so the
caller can report it.

Templates that rewrite history: Qwen3's hybrid-thinking template drops the <think> block of
every assistant turn before the last user message, and R1-Distill's drops the reasoning of every
assistant turn, the last included, while its generation prompt opens `<think>\n`. An assistant
turn is therefore trained as the model meets it at inference (`Templater.turn`): the prompt is
the render of the turns before it with the generation prompt, the completion what the template
writes for the turn when it is the last; where even that does not follow the prompt (R1-Distill),
the turn's content verbatim inside the template's frame for an assistant turn. Multi-turn SFT
(`encode_conversation`, `data.multi_turn`) trains such templates one example per assistant turn
(`per_turn`, chosen by `auto` when `rewrites_history` finds the template rewriting a probe
conversation), or the last turn only (`last_turn`); `all_turns` (one sequence, a mask per turn:
the default for templates that keep history as it was) refuses a conversation the template
rewrites. No path trains a turn the template renders differently: it fails naming the turn.

The end of a response is any stop id (`stop_ids`: the tokenizer's EOS plus the generation config's
EOS ids, e.g. Qwen2.5-Instruct's <|im_end|> and <|endoftext|>): what a template writes after it
is never trained and never generated.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Union

from alignlab.errors import DataError

log = logging.getLogger("alignlab")

Prompt = Union[str, list[dict]]

# data.multi_turn: how an SFT conversation becomes examples (encode_conversation).
MULTI_TURN_MODES = ("auto", "per_turn", "last_turn", "all_turns")

# Stands for an assistant turn's content while the template frames the turn (Templater.turn).
_TURN_MARK = "@@alignlab-assistant-turn@@"

# Two exchanges whose answers carry reasoning: the shape on which Qwen3 and R1-Distill rewrite history.
_PROBE = [
    {"role": "user", "content": "What is 1+1?"},
    {"role": "assistant", "content": "<think>\nOne and one.\n</think>\n\n2"},
    {"role": "user", "content": "And 2+2?"},
    {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"},
]


@dataclass
class EncodeStats:
    prefix_mismatches: int = 0
    examples: int = 0
    rows: int = 0  # rows the examples came from (a conversation gives one per assistant turn with per_turn)
    truncated: int = 0
    dropped_long: int = 0
    skipped_bad: int = 0
    dropped: Counter = field(default_factory=Counter)  # rows that carry no preference, by reason ("ties")
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rows = f" from {self.rows} rows" if self.rows not in (0, self.examples) else ""  # per_turn conversations
        parts = [f"{self.examples} examples{rows}"]
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


def default_bos_text(tokenizer) -> str:
    """The BOS token's text when `tokenizer(text)` puts it first by default (Llama-3, Mistral, Gemma), else ''
    (no bos_token, or one it does not add: Qwen)."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None or tokenizer("a")["input_ids"][:1] != [bos_id]:
        return ""
    if tokenizer(bos, add_special_tokens=False)["input_ids"] != [bos_id]:
        # split_special_tokens=True: the text would not become the BOS id, so it cannot travel in the prompt.
        log.warning("the tokenizer adds %s by default but does not read it back from text: plain-text prompts "
                    "go without it", bos)
        return ""
    return bos


class Templater:
    """Renders prompts and responses for one tokenizer; holds the choice of chat template or plain text."""

    def __init__(self, tokenizer, *, use_chat_template: bool = True, system_prompt: Optional[str] = None,
                 stop_ids: Optional[list[int]] = None, tools: Optional[list[dict]] = None):
        self.tokenizer = tokenizer
        self.tools = tools or None  # JSON schemas the chat template lists (tool-using GRPO, tool SFT rows)
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.stop_ids = set(stop_ids or []) | ({tokenizer.eos_token_id} - {None})
        self.bos_text = "" if self.chat else default_bos_text(tokenizer)  # a chat template writes its own
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

    def with_bos(self, text: str) -> str:
        """Plain text as the start of a sequence: the tokenizer's BOS first, once (module docstring)."""
        return text if text.startswith(self.bos_text) else self.bos_text + text

    def prompt_text(self, prompt: Prompt) -> str:
        if self.chat:
            return self.render(self.messages(prompt), add_generation_prompt=True)
        if isinstance(prompt, str):
            return self.with_bos(prompt if not self.system_prompt else f"{self.system_prompt}\n\n{prompt}")
        return self.with_bos("".join(f"{m['role']}: {m['content']}\n" for m in self.messages(prompt)) + "assistant: ")

    def response_text(self, prompt: Prompt, response: str) -> str:
        """What follows the prompt text for this response, end-of-turn included."""
        if not self.chat:
            return response + (self.tokenizer.eos_token or "")
        return self.turn(self.messages(prompt), response)[1]

    def turn(self, history: list[dict], content: str, tools: Optional[list[dict]] = None) -> tuple[str, str]:
        """(prompt, completion) texts of the assistant turn `content` after `history` (whole messages), as the model
        meets it at inference: the prompt is the template's render of the history with the generation prompt, the
        completion what follows it when the template renders the turn as the last one, end of turn included.

        R1-Distill's template drops the reasoning even from the last turn, while its generation prompt opens the
        <think> block the model then writes and closes: there the completion is the turn's content verbatim, in the
        frame the template gives an assistant turn. DataError when neither follows the prompt."""
        prompt = self.render(history, tools, add_generation_prompt=True)
        whole = self.render(history + [{"role": "assistant", "content": content}], tools)
        if whole.startswith(prompt):
            return prompt, whole[len(prompt):]
        framed = self.render(history + [{"role": "assistant", "content": _TURN_MARK}], tools)
        verbatim = framed.replace(_TURN_MARK, content) if framed.count(_TURN_MARK) == 1 else whole
        if verbatim.startswith(prompt):
            return prompt, verbatim[len(prompt):]
        same = len(os.path.commonprefix([prompt, verbatim]))
        raise DataError(f"the chat template's generation prompt writes {prompt[same:][:60]!r} where this assistant "
                        f"turn has {verbatim[same:][:60]!r}, so the turn cannot be trained as the model generates it; "
                        "give the turn's content the start the generation prompt writes (e.g. its <think> block)")

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


def fit_length(prompt_ids: list[int], response_ids: list[int], max_length: int, keep_prompt: int = 8,
               bos_id: Optional[int] = None):
    """Truncation policy: cut the prompt from the left first (keeping at least `keep_prompt` tokens,
    and a leading `bos_id`: it marks the start of a sequence, it is not context), then the response
    from the right. Returns (prompt_ids, response_ids, truncated)."""
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow <= 0:
        return prompt_ids, response_ids, False
    keep_prompt = min(keep_prompt, max_length)  # a max_length below keep_prompt still bounds the total
    head = int(bos_id is not None and prompt_ids[:1] == [bos_id])
    cut_prompt = min(overflow, max(0, len(prompt_ids) - max(keep_prompt, head)))
    prompt_ids = prompt_ids[:head] + prompt_ids[head + cut_prompt:]
    overflow -= cut_prompt
    if overflow > 0:
        response_ids = response_ids[: max(0, len(response_ids) - overflow)]  # not a negative (from-the-end) index
    return prompt_ids, response_ids, True


# ---------------------------------------------------------------------------- multi-turn SFT

def rewrites_history(templater: Templater, tools: Optional[list[dict]] = None) -> bool:
    """Whether the chat template renders earlier turns differently once later turns follow (Qwen3, R1-Distill), so
    one sequence with a mask per assistant turn cannot show each turn as the model generated it. Found by rendering
    a probe conversation of two exchanges whose answers carry <think> blocks: True when a render up to an assistant
    turn (or of the turns before it, with the generation prompt) is not a prefix of the next render, or when the
    template cannot render the probe (one example per turn is right for every template). Plain text: False."""
    if not templater.chat:
        return False
    try:
        _chat_pieces(templater, _PROBE, tools)
    except DataError:
        return True
    return False


def resolve_multi_turn(templater: Templater, mode: str) -> str:
    """data.multi_turn for this templater: `auto` is per_turn where the template rewrites history, else all_turns."""
    if mode not in MULTI_TURN_MODES:
        raise ValueError(f"data.multi_turn must be one of {', '.join(MULTI_TURN_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "per_turn" if rewrites_history(templater) else "all_turns"


def encode_conversation(templater: Templater, messages: list[dict], tools: Optional[list[dict]] = None, *,
                        mode: str = "all_turns") -> list[tuple[list[int], list[int]]]:
    """Multi-turn SFT: [(input_ids, loss_mask)], the loss on assistant turns only (tool and user turns are
    context); `tools`: the row's tool schemas, which the template lists. `mode` (data.multi_turn, resolved):

    - all_turns: one sequence, every assistant turn trained; each turn's text is the difference between the
      renders up to it and up to the turn before, so the ids are the template's text split at turn boundaries.
      A template that rewrites earlier turns fails here, naming the turn.
    - per_turn: one example per assistant turn, the turns before it as context, rendered as when that turn is
      the last (Templater.turn): what the model sees when it generates it.
    - last_turn: only the last assistant turn's example.
    """
    messages = templater.messages(messages)  # data.system_prompt first, unless the row has its own system turn
    if templater.chat and messages and messages[0]["role"] == "assistant":
        raise DataError("the conversation starts with an assistant message; the chat template needs a user "
                        "(or system) turn before it")
    if templater.chat and mode != "all_turns":
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        return [_encode_turn(templater, messages, i, tools) for i in (answers[-1:] if mode == "last_turn" else answers)]
    pieces = _chat_pieces(templater, messages, tools) if templater.chat else _plain_pieces(templater, messages)
    encoded = [(ids, mask) for ids, mask in (_piece_ids(templater, text, answer) for text, answer in pieces)]
    if mode == "all_turns":
        return [([i for ids, _ in encoded for i in ids], [m for _, mask in encoded for m in mask])]
    # Plain text never rewrites history: turn k's example is the sequence up to it, only it trained.
    answers = [k for k, (_, answer) in enumerate(pieces) if answer]
    examples = []
    for k in answers[-1:] if mode == "last_turn" else answers:
        context = [i for ids, _ in encoded[:k] for i in ids]
        ids, mask = encoded[k]
        examples.append((context + ids[: sum(mask)], [0] * len(context) + [1] * sum(mask)))
    return examples


def _chat_pieces(templater: Templater, messages: list[dict], tools=None) -> list[tuple[str, bool]]:
    """The template's text of the conversation through its last assistant turn, as (text, is_answer) pieces."""
    pieces, rendered = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = templater.render(messages[:i], tools, add_generation_prompt=True)
        upto = templater.render(messages[: i + 1], tools)
        if not before.startswith(rendered) or not upto.startswith(before):
            raise DataError(
                f"message {i} (assistant): the chat template renders the conversation up to this turn as no "
                "extension of its render of the turns before (it rewrites history: Qwen3's and R1-Distill's drop "
                "the reasoning of earlier turns), so one sequence cannot show every turn as the model generates it; "
                "set data.multi_turn=per_turn (one example per assistant turn) or last_turn")
        pieces += [(before[len(rendered):], False), (upto[len(before):], True)]
        rendered = upto
    return pieces


def _plain_pieces(templater: Templater, messages: list[dict]) -> list[tuple[str, bool]]:
    """Without a chat template: `role: content` lines, each assistant turn closed by EOS, after the BOS."""
    eos = templater.tokenizer.eos_token or ""
    pieces = [(templater.bos_text, False)] if templater.bos_text else []
    for message in messages:
        answer = message["role"] == "assistant"
        pieces += [(f"{message['role']}: ", False), (message["content"] + (eos if answer else "\n"), answer)]
    return pieces


def _piece_ids(templater: Templater, text: str, answer: bool) -> tuple[list[int], list[int]]:
    """A piece's ids and mask: an answer is trained through its first stop id; what follows it never is."""
    ids = templater.ids(text)
    stop = templater.first_stop(ids) if answer else None
    trained = 0 if not answer else (stop + 1 if stop is not None else len(ids))
    return ids, [1] * trained + [0] * (len(ids) - trained)


def _encode_turn(templater: Templater, messages: list[dict], i: int, tools=None) -> tuple[list[int], list[int]]:
    """Assistant message `i` as its own example: the template's prompt for it, then the turn through its end."""
    try:
        prompt, completion = templater.turn(messages[:i], messages[i]["content"], tools)
    except DataError as exc:
        raise DataError(f"message {i} (assistant): {exc}") from None
    prompt_ids, completion_ids = templater.ids(prompt), templater.ids(completion)
    if templater.ids(prompt + completion) != prompt_ids + completion_ids:
        raise DataError(f"message {i} (assistant): the prompt and this turn tokenise differently apart than together "
                        f"(tokens merge across {prompt[-20:]!r} + {completion[:20]!r}), so the trained tokens would "
                        "not be the ones the model generates after the prompt")
    stop = templater.first_stop(completion_ids)
    completion_ids = completion_ids[: stop + 1] if stop is not None else completion_ids
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)
