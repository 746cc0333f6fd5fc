"""Preference data: rows in any of the common pair formats -> `PreferenceExample`.

Accepted row formats (after column renaming):

1. explicit strings      {"prompt": str, "chosen": str, "rejected": str}
2. conversational        {"prompt": [messages ending with a user turn],
                          "chosen": [one assistant message] or str, "rejected": likewise}
2b. prompt + whole        {"prompt": str or [messages], "chosen": [full conversation],
    conversations         "rejected": [full conversation]}  (UltraFeedback-binarized's columns)
                          The prompt is the conversations' shared turns, as in 3, which the prompt
                          column must agree with: a string must equal the last shared user turn, a
                          message list must equal the shared turns.
3. implicit, messages    {"chosen": [full conversation], "rejected": [full conversation]}
                         (UltraFeedback-binarized style: both share every message before their
                         final assistant reply, which is the prompt)
4. implicit, HH-RLHF     {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
                         (Anthropic transcripts, parsed into messages, then as in 3)

Public sets whose chosen and rejected follow from a label or scores in the row (Stanford SHP, WebGPT
comparisons, raw UltraFeedback ratings) are recognised from their columns and read by
`alignlab.data.public_formats`; `load_preference_source` detects a source's format (or takes
`data.format`), reads every row in it and reports what was dropped (WebGPT ties, ...).

Nothing is tokenised here; `alignlab.data.preference_encode` does that with the Templater.
Every rejected row raises `DataError` naming the file, the row and the field.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Union

from alignlab.data.io import Row, check_readable
from alignlab.data.public_formats import FORMATS, LoadReport, choose_format, check_score_ratio
from alignlab.data.sft import check_messages, check_text
from alignlab.errors import DataError

log = logging.getLogger("alignlab")

Prompt = Union[str, list[dict]]

HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# A turn marker is "Human:" / "Assistant:" at the very start (after optional whitespace) or
# after a blank line, which is how the Anthropic HH-RLHF transcripts separate turns.
_HH_MARKER = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")


@dataclass
class PreferenceExample:
    prompt: Prompt  # a string, or messages ending with a user turn
    chosen: str  # text of the preferred final assistant reply
    rejected: str  # text of the dispreferred final assistant reply
    source: str = ""  # where the row came from, e.g. "pairs.jsonl, line 3"
    margin: Optional[float] = None  # how much better chosen is (a `margin` column; reward-model training, Llama 2)


# -- helpers -------------------------------------------------------------------------------------


def _snippet(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _missing(row: Row, name: str, hint: str = "") -> DataError:
    found = ", ".join(sorted(row.values)) or "(none)"
    return DataError(
        f"{row.where(name)}: missing{hint}; columns found: {found}. "
        f"Map yours with data.columns.{name}=<your column>."
    )


def hh_to_messages(text: str) -> list[dict]:
    """Parse an Anthropic HH-RLHF transcript into messages.

    "\\n\\nHuman: Hi\\n\\nAssistant: Hello!" -> [{"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"}]. Turn contents are stripped of surrounding
    whitespace; blank lines inside a turn are kept. Raises DataError (without a row location)
    when the text has no markers or has text before the first marker.
    """
    parts = _HH_MARKER.split(text)
    # parts = [before, role, content, role, content, ...]
    if len(parts) < 3:
        raise DataError(
            "no 'Human:'/'Assistant:' turn markers found; expected an Anthropic HH-RLHF transcript "
            "(\"\\n\\nHuman: ...\\n\\nAssistant: ...\"), or give the prompt in its own column "
            "(data.columns.prompt=<your column>)"
        )
    if parts[0].strip():
        raise DataError(f"text before the first 'Human:'/'Assistant:' marker: {_snippet(parts[0])}")
    return [
        {"role": HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]


def _check_prompt(row: Row) -> Prompt:
    value = row.values["prompt"]
    if not isinstance(value, list):
        return check_text(row, "prompt")
    messages = check_messages(row, "prompt", need_assistant=False)
    _check_prompt_messages(row, "prompt", messages)
    return messages


def _check_prompt_messages(row: Row, name: str, messages: list[dict], what: str = "the prompt") -> None:
    if not messages:
        raise DataError(f"{row.where(name)}: no user message before the final assistant reply")
    last = messages[-1]
    if last["role"] != "user":
        raise DataError(
            f"{row.where(name)}: {what} must end with a user message, but its last message "
            f"(message {len(messages) - 1}) has role {last['role']!r}"
        )
    if not last["content"].strip():
        raise DataError(f"{row.where(name)}: the last user message of {what} is empty")


def _reply_after_prompt(row: Row, name: str) -> str:
    """chosen/rejected when a prompt column is given: a string or a list of one assistant message."""
    value = row.values[name]
    if not isinstance(value, list):
        return check_text(row, name)
    messages = check_messages(row, name, need_assistant=False)
    if len(messages) != 1:
        raise DataError(
            f"{row.where(name)}: has {len(messages)} messages starting with an assistant turn; with a 'prompt' "
            "column, chosen and rejected must each be a single assistant message (or a string), or each the "
            "whole conversation: the prompt's turns followed by the assistant reply."
        )
    message = messages[0]
    if message["role"] != "assistant":
        raise DataError(f"{row.where(name)}: message 0 has role {message['role']!r}; expected 'assistant'")
    if not message["content"].strip():
        raise DataError(f"{row.where(name)}: is empty")
    return message["content"]


def _split_conversation(row: Row, name: str, messages: list[dict], kind: str) -> tuple[list[dict], str]:
    """(messages before the final assistant reply, reply text)."""
    final = messages[-1]
    if final["role"] != "assistant":
        raise DataError(
            f"{row.where(name)}: the {kind} must end with an assistant reply, but its last message "
            f"has role {final['role']!r}"
        )
    if not final["content"].strip():
        raise DataError(f"{row.where(name)}: the final assistant reply is empty")
    return messages[:-1], final["content"]


def _shared_prompt(row: Row, chosen: list[dict], rejected: list[dict], kind: str) -> list[dict]:
    """The messages both conversations share before their final reply; DataError where they diverge."""
    for turn, (a, b) in enumerate(zip(chosen, rejected)):
        if a["role"] != b["role"] or a["content"].strip() != b["content"].strip():
            raise DataError(
                f"{row.where('rejected')}: chosen and rejected {kind}s must be identical up to their final "
                f"assistant reply, but they diverge at message {turn}: chosen has {a['role']} "
                f"{_snippet(a['content'])}, rejected has {b['role']} {_snippet(b['content'])}"
            )
    if len(chosen) != len(rejected):
        turn = min(len(chosen), len(rejected))
        longer, extra = ("chosen", chosen[turn]) if len(chosen) > len(rejected) else ("rejected", rejected[turn])
        raise DataError(
            f"{row.where('rejected')}: chosen and rejected {kind}s must be identical up to their final "
            f"assistant reply, but they diverge at message {turn}: chosen has {len(chosen)} messages before "
            f"its final reply and rejected has {len(rejected)} (message {turn} of {longer}: {extra['role']} "
            f"{_snippet(extra['content'])})"
        )
    return chosen


def _implicit_messages(row: Row) -> tuple[list[dict], str, str]:
    chosen = check_messages(row, "chosen")
    rejected = check_messages(row, "rejected")
    chosen_prompt, chosen_reply = _split_conversation(row, "chosen", chosen, "conversation")
    rejected_prompt, rejected_reply = _split_conversation(row, "rejected", rejected, "conversation")
    prompt = _shared_prompt(row, chosen_prompt, rejected_prompt, "conversation")
    _check_prompt_messages(row, "chosen", prompt, "the shared conversation")
    return prompt, chosen_reply, rejected_reply


def _is_conversation(value) -> bool:
    """A chosen/rejected list that holds the prompt's turns too, not only the reply: more than one
    message, the first not the assistant's (UltraFeedback-binarized's chosen/rejected columns)."""
    return (isinstance(value, list) and len(value) > 1 and isinstance(value[0], dict)
            and value[0].get("role") != "assistant")


def _same_turn(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def _check_prompt_agrees(row: Row, prompt: Prompt, shared: list[dict]) -> None:
    """The prompt column must say what the conversations' shared turns say (DataError on field 'prompt')."""
    if isinstance(prompt, str):
        last = shared[-1]["content"]  # shared ends with a user turn (_check_prompt_messages)
        if prompt.strip() != last.strip():
            raise DataError(
                f"{row.where('prompt')}: does not match the conversations in chosen and rejected: the prompt is "
                f"{_snippet(prompt)} but the user turn they answer (message {len(shared) - 1}) is {_snippet(last)}"
            )
        return
    for turn, (a, b) in enumerate(zip(prompt, shared)):
        if not _same_turn(a, b):
            raise DataError(
                f"{row.where('prompt')}: does not match the conversations in chosen and rejected at message {turn}: "
                f"the prompt has {a['role']} {_snippet(a['content'])}, they have {b['role']} {_snippet(b['content'])}"
            )
    if len(prompt) != len(shared):
        raise DataError(
            f"{row.where('prompt')}: has {len(prompt)} messages but chosen and rejected share {len(shared)} before "
            "their final reply; the prompt must be all of the shared turns"
        )


def _conversations_after_prompt(row: Row, prompt: Prompt) -> tuple[list[dict], str, str]:
    """chosen and rejected as whole conversations beside a prompt column (format 2b): like TRL's prompt
    extraction, the prompt is the turns both share before their final replies."""
    chosen, rejected = row.values["chosen"], row.values["rejected"]
    if not (_is_conversation(chosen) and _is_conversation(rejected)):
        whole, single = ("chosen", "rejected") if _is_conversation(chosen) else ("rejected", "chosen")
        raise DataError(
            f"{row.where(single)}: {whole} is a whole conversation (prompt turns and reply) but {single} is not; "
            "give both as whole conversations, or both as the reply alone"
        )
    shared, chosen_reply, rejected_reply = _implicit_messages(row)
    _check_prompt_agrees(row, prompt, shared)
    return shared, chosen_reply, rejected_reply


def _parse_hh(row: Row, name: str) -> list[dict]:
    text = check_text(row, name)
    try:
        return hh_to_messages(text)
    except DataError as exc:
        raise DataError(f"{row.where(name)}: {exc}") from None


def _implicit_hh(row: Row) -> tuple[list[dict], str, str]:
    chosen = _parse_hh(row, "chosen")
    rejected = _parse_hh(row, "rejected")
    chosen_prompt, chosen_reply = _split_conversation(row, "chosen", chosen, "transcript")
    rejected_prompt, rejected_reply = _split_conversation(row, "rejected", rejected, "transcript")
    prompt = _shared_prompt(row, chosen_prompt, rejected_prompt, "transcript")
    _check_prompt_messages(row, "chosen", prompt, "the shared transcript")
    return prompt, chosen_reply, rejected_reply


# -- public API ----------------------------------------------------------------------------------


def normalize_preference_row(row: Row) -> PreferenceExample:
    """One row in any accepted format -> PreferenceExample; DataError naming file, row and field."""
    check_readable(row)
    values = row.values
    for name in ("chosen", "rejected"):
        if name not in values:
            raise _missing(row, name, " (preference rows need 'chosen' and 'rejected', and optionally 'prompt')")

    if "prompt" in values:
        prompt = _check_prompt(row)
        if _is_conversation(values["chosen"]) or _is_conversation(values["rejected"]):
            prompt, chosen, rejected = _conversations_after_prompt(row, prompt)
        else:
            chosen = _reply_after_prompt(row, "chosen")
            rejected = _reply_after_prompt(row, "rejected")
    else:
        chosen_value, rejected_value = values["chosen"], values["rejected"]
        if isinstance(chosen_value, list) and isinstance(rejected_value, list):
            prompt, chosen, rejected = _implicit_messages(row)
        elif isinstance(chosen_value, str) and isinstance(rejected_value, str):
            prompt, chosen, rejected = _implicit_hh(row)
        elif isinstance(chosen_value, (list, str)) and isinstance(rejected_value, (list, str)):
            raise DataError(
                f"{row.where('rejected')}: without a 'prompt' column, chosen and rejected must both be "
                "message lists or both be Human/Assistant transcripts; got "
                f"{type(chosen_value).__name__} and {type(rejected_value).__name__}"
            )
        else:
            bad = "chosen" if not isinstance(chosen_value, (list, str)) else "rejected"
            raise DataError(
                f"{row.where(bad)}: expected a string or a list of messages, got {type(values[bad]).__name__}"
            )

    if chosen.strip() == rejected.strip():
        raise DataError(
            f"{row.where('rejected')}: identical to chosen ({_snippet(chosen)}); a preference pair needs "
            "two different responses"
        )
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, source=row.where(),
                             margin=_margin(row))


def _margin(row: Row) -> Optional[float]:
    """The row's `margin` column (a number; null or absent: none), used by `alignlab rm` (rm.use_margin)."""
    value = row.values.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise DataError(f"{row.where('margin')}: expected a number (how much better chosen is), got {value!r}")
    return float(value)


def _first_missing(values: dict) -> str:
    return "chosen" if "chosen" not in values else "rejected"


def load_preference_source(rows: list[Row], *, skip_bad_rows: bool, format: str = "auto",
                           min_score_ratio: Optional[float] = None,
                           label: str = "") -> tuple[list[PreferenceExample], LoadReport]:
    """Every row of one source read in its format (detected from the columns, or `format`), and the report
    (format, bad rows skipped, rows dropped by reason), which is logged. With skip_bad_rows=False the first
    bad row's DataError propagates."""
    fmt, forced = choose_format(rows, "preference", format, skip_bad_rows=skip_bad_rows, missing=_first_missing)
    report = LoadReport(fmt or FORMATS["preference"], label or (rows[0].source if rows else ""), rows=len(rows),
                        forced=forced)
    check_score_ratio(report.format, min_score_ratio, report.label)
    read = report.format.read
    examples: list[PreferenceExample] = []
    first_error = ""
    for row in rows:
        try:
            check_readable(row)
            if read is None:
                examples.append(normalize_preference_row(row))
                continue
            pairs, dropped = read(row, min_score_ratio=min_score_ratio)
            report.dropped.update(dropped)
            examples += [PreferenceExample(prompt, chosen, rejected, row.where()) for prompt, chosen, rejected in pairs]
        except DataError as exc:
            if not skip_bad_rows:
                raise
            report.skipped += 1
            first_error = first_error or str(exc)
    if report.skipped:
        log.warning("skipped %d bad preference rows (data.skip_bad_rows=true); first: %s", report.skipped, first_error)
    report.examples = len(examples)
    report.log()
    return examples, report


def load_preference_rows(rows: list[Row], *, skip_bad_rows: bool, format: str = "auto",
                         min_score_ratio: Optional[float] = None, label: str = "") -> tuple[list[PreferenceExample], int]:
    """`load_preference_source`, returning (examples, number of bad rows skipped)."""
    examples, report = load_preference_source(rows, skip_bad_rows=skip_bad_rows, format=format,
                                              min_score_ratio=min_score_ratio, label=label)
    return examples, report.skipped
