"""What an LLM judge is asked and how its reply is read: rubrics, prompts, output constraints, parsers.

Pure text in, text out (no network): `judge.py` sends what is built here.

A rubric is a prompt template with named fields, filled per request:
    {prompt}      the task given to the policy (a message list is rendered as `role: content` lines)
    {completion}  the response judged (pointwise)
    {response_a}, {response_b}  the two responses compared (pairwise: the completion and the reference
                  answer, asked twice with their positions swapped to cancel the judge's order bias)
    {completions} all G responses of one prompt, numbered 1..G (group)
    {answer}      the row's reference answer column (`judge.answer_column`), when the template wants it
    {min_score}, {max_score}  the score scale
Any other field is a config error (named with the file), and so is a template that lacks the field its
mode needs. Built-in rubrics are named (`helpful`, `correct`); anything else is read as a file path.

Replies: with a server that supports structured outputs (vLLM) the reply is constrained to exactly what
the parser reads (a choice of the scale's numbers, "A"/"B"/"tie", or one `N: SCORE` line per response),
because a JSON schema lets a weak model pad with whitespace until max_tokens. Without constraints the
parsers are tolerant (a `Score: 7`, "7/10", "Response A is better") but never guess: a reply they
cannot read is None (unscorable), not 0.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from alignlab.errors import ConfigError

MODES = ("pointwise", "pairwise", "group")
FIELDS = ("prompt", "completion", "completions", "answer", "response_a", "response_b", "min_score", "max_score")
NEEDED = {"pointwise": ("completion",), "pairwise": ("response_a", "response_b"), "group": ("completions",)}
PAIRWISE_CHOICES = ("A", "B", "tie")

_POINTWISE_REPLY = "Reply with only the score: one whole number from {min_score} to {max_score}."
_GROUP_REPLY = ("Reply with one line per response, in order, each `NUMBER: SCORE` (for example `1: {max_score}`), "
                "SCORE a whole number from {min_score} to {max_score}, and nothing else.")
_PAIRWISE_REPLY = "Reply with only `A` if response A is better, `B` if response B is better, or `tie`."

BUILTIN: dict[str, dict[str, str]] = {
    "helpful": {
        "pointwise": ("Rate how helpful, correct and clear the response is to the user's request "
                      "({min_score} = useless or wrong, {max_score} = excellent).\n\n"
                      "[Request]\n{prompt}\n\n[Response]\n{completion}\n\n" + _POINTWISE_REPLY),
        "pairwise": ("Which response answers the user's request more helpfully, correctly and clearly?\n\n"
                     "[Request]\n{prompt}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\n"
                     + _PAIRWISE_REPLY),
        "group": ("Rate each response to the user's request for helpfulness, correctness and clarity, comparing "
                  "them with one another ({min_score} = useless or wrong, {max_score} = the best possible).\n\n"
                  "[Request]\n{prompt}\n\n{completions}\n\n" + _GROUP_REPLY),
    },
    "correct": {
        "pointwise": ("Is the response's final answer correct? The reference answer is {answer}.\n\n"
                      "[Question]\n{prompt}\n\n[Response]\n{completion}\n\n"
                      "Reply with only {max_score} if the response's answer equals the reference answer, "
                      "else {min_score}."),
        "group": ("Which responses give the correct final answer? The reference answer is {answer}.\n\n"
                  "[Question]\n{prompt}\n\n{completions}\n\n"
                  "Reply with one line per response, in order, each `NUMBER: SCORE`, SCORE {max_score} if that "
                  "response's answer equals the reference answer, else {min_score}, and nothing else."),
        "pairwise": ("Which response gives the correct final answer? The reference answer is {answer}.\n\n"
                     "[Question]\n{prompt}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\n"
                     + _PAIRWISE_REPLY),
    },
}
BUILTIN_SCALES = {"helpful": (1, 10), "correct": (0, 1)}
FILE_SCALE = (1, 10)


@dataclass(frozen=True)
class Rubric:
    """A template for one mode and the integer score scale its replies use (normalised to [0, 1])."""

    name: str
    mode: str
    template: str
    min_score: int
    max_score: int

    def fill(self, **values: Any) -> str:
        values.update(min_score=self.min_score, max_score=self.max_score)
        return self.template.format(**{k: values.get(k, "") for k in template_fields(self.template, self.name)})

    def normalise(self, value: float) -> Optional[float]:
        """A score on the scale -> [0, 1]; None outside the scale (the judge broke the rubric)."""
        if not self.min_score <= value <= self.max_score:
            return None
        return (value - self.min_score) / (self.max_score - self.min_score)

    @property
    def needs_answer(self) -> bool:
        return "answer" in template_fields(self.template, self.name)


def template_fields(template: str, where: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # an unmatched brace
        raise ConfigError(f"judge.rubric {where}: not a valid template ({exc}); write a literal brace as {{{{ or }}}}")
    return list(dict.fromkeys(names))


def load_rubric(spec: str, mode: str, scale: Optional[Sequence[int]] = None) -> Rubric:
    """The rubric `spec` (a built-in name or a template file) for `mode`; ConfigError on what cannot work."""
    if mode not in MODES:
        raise ConfigError(f"judge.mode must be one of {', '.join(MODES)}, got '{mode}'")
    if spec in BUILTIN:
        if mode not in BUILTIN[spec]:
            raise ConfigError(f"judge.rubric={spec} has no {mode} form (it has {', '.join(BUILTIN[spec])})")
        template, default_scale, where = BUILTIN[spec][mode], BUILTIN_SCALES[spec], f"'{spec}'"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"judge.rubric '{spec}' is neither a built-in rubric ({', '.join(BUILTIN)}) nor a file")
        template, default_scale, where = path.read_text(encoding="utf-8"), FILE_SCALE, str(path)
    fields = template_fields(template, where)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ConfigError(f"judge.rubric {where}: unknown field {{{unknown[0]}}} (a template may use "
                          f"{', '.join('{' + f + '}' for f in FIELDS)}); write a literal brace as {{{{ or }}}}")
    missing = [f for f in NEEDED[mode] if f not in fields]
    if missing:
        raise ConfigError(f"judge.rubric {where}: judge.mode={mode} needs the field {{{missing[0]}}} in the template")
    low, high = (int(v) for v in (scale or default_scale))
    if not low < high:
        raise ConfigError(f"judge.scale must be [min, max] with min < max, got {list(scale or ())}")
    return Rubric(spec, mode, template, low, high)


# ------------------------------------------------------------------ prompts


def render_prompt(prompt: Any) -> str:
    """A prompt as the judge reads it: a string as is, a message list as `role: content` lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt if isinstance(m, dict))
    return "" if prompt is None else str(prompt)


def numbered(completions: Sequence[str]) -> str:
    return "\n\n".join(f"[Response {i}]\n{text}" for i, text in enumerate(completions, 1))


# ------------------------------------------------------------------ constraints (vLLM structured outputs)


def scale_choices(rubric: Rubric) -> list[str]:
    return [str(v) for v in range(rubric.min_score, rubric.max_score + 1)]


def constraint(rubric: Rubric, group_size: int = 0) -> dict:
    """vLLM's `structured_outputs` for a reply the parser reads whole: a choice, or a regex for a group."""
    if rubric.mode == "pointwise":
        return {"choice": scale_choices(rubric)}
    if rubric.mode == "pairwise":
        return {"choice": list(PAIRWISE_CHOICES)}
    score = "(" + "|".join(reversed(scale_choices(rubric))) + ")"  # longest first: "10" before "1"
    return {"regex": "".join(f"{i}: {score}\n" for i in range(1, group_size + 1))}


def max_reply_tokens(rubric: Rubric, group_size: int, configured: int) -> int:
    """Room for the reply: a group's lines need more than one score (about 4 tokens a line, with slack)."""
    return max(configured, 6 * group_size + 8) if rubric.mode == "group" else configured


# ------------------------------------------------------------------ parsers

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_OUT_OF = re.compile(r"\s*(?:/|out of)\s*\d+(?:\.\d+)?", re.IGNORECASE)
_LABELLED = re.compile(rf"(?:score|rating|grade)\s*(?:is|[:=])?\s*\**\s*({_NUMBER})", re.IGNORECASE)


def parse_pointwise(reply: Optional[str], rubric: Rubric) -> Optional[float]:
    """A reply's score in [0, 1], or None. A labelled score wins; else the last number (`7/10` reads as 7).

    >>> r = Rubric("t", "pointwise", "{completion}", 1, 10)
    >>> parse_pointwise("8", r), parse_pointwise("Score: 4/10. Good.", r), parse_pointwise("great", r)
    (0.7777777777777778, 0.3333333333333333, None)
    """
    if not reply:
        return None
    text = _OUT_OF.sub("", reply)
    found = _LABELLED.findall(text) or re.findall(_NUMBER, text)
    return rubric.normalise(float(found[-1])) if found else None


_VERDICT = re.compile(r"(?:winner|verdict|answer|better|choice)\s*(?:is|[:=])?\s*\**\s*(?:response\s*)?(A|B|tie)\b",
                      re.IGNORECASE)


def parse_pairwise(reply: Optional[str]) -> Optional[str]:
    """"A", "B" or "tie" from a reply, or None when it names none or several.

    >>> parse_pairwise("B"), parse_pairwise("Response A is better."), parse_pairwise("A or B?")
    ('B', 'A', None)
    """
    if not reply:
        return None
    labelled = _VERDICT.findall(reply)
    if labelled:
        found = {v.upper() if v.lower() != "tie" else "tie" for v in labelled}
    else:
        found = set(re.findall(r"\b(A|B)\b", reply)) | ({"tie"} if re.search(r"\btie\b", reply, re.I) else set())
    return found.pop() if len(found) == 1 else None


_GROUP_LINE = re.compile(rf"^\W*(?:response\s*)?#?(\d+)\]?\s*[:=)\-]\s*\**\s*({_NUMBER})", re.IGNORECASE)


def parse_group(reply: Optional[str], rubric: Rubric, size: int) -> list[Optional[float]]:
    """One score in [0, 1] (or None) per response 1..size, read from `N: SCORE` lines in any order.

    Responses the judge skipped, numbered twice with different scores, or scored off the scale are None;
    numbers outside 1..size are ignored.
    >>> r = Rubric("t", "group", "{completions}", 0, 10)
    >>> parse_group("2: 10\\n1: 5\\n5: 3", r, 3)
    [0.5, 1.0, None]
    """
    seen: dict[int, set[float]] = {}
    for line in (reply or "").splitlines():
        match = _GROUP_LINE.match(_OUT_OF.sub("", line.strip()))
        if match and 1 <= int(match.group(1)) <= size:
            seen.setdefault(int(match.group(1)), set()).add(float(match.group(2)))
    return [rubric.normalise(next(iter(seen[i]))) if len(seen.get(i, ())) == 1 else None
            for i in range(1, size + 1)]


def pairwise_score(verdict: Optional[str], completion_is_a: bool) -> Optional[float]:
    """The completion's score from one verdict: 1 it won, 0.5 tie, 0 the reference won; None unread."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    return 1.0 if (verdict == "A") == completion_is_a else 0.0
