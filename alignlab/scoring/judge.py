"""An LLM judge on any OpenAI-compatible server (vLLM's by default): text in, scores in [0, 1] (or None) out.

One client for every use: GRPO rewards (`grpo.rewards: [judge]`), ranking responses into DPO pairs
(`alignlab pairs --judge`), judged win rates (`alignlab eval eval.judge=...`) and iterate's scorer.

Modes (`judge.mode`; prompts and parsing in `judge_rubrics`):
- pointwise: each completion alone against the rubric, a score on its scale (RLAIF-style);
- pairwise: each completion against the row's reference answer column, asked twice with the two in
  swapped positions (a judge's order bias cancels); 1 = completion better, 0.5 = tie, 0 = worse;
- group: all G completions of one prompt in one request, scored relative to one another (ART's RULER;
  fits GRPO's group-relative advantages); scores are mapped back by the number the judge wrote, so a
  reordered or partial reply still lands on the right completions, and skipped ones are None.

Robustness, named: `judge.max_concurrency` requests in flight at most (a thread pool); a timeout per
request; retries with exponential backoff and jitter on 429 / 5xx / connection errors / timeouts
(`judge.max_retries`), then a JudgeError that stops the caller (a training run keeps its last
checkpoint); a request budget (`judge.max_requests`, counted over the client's life); a disk cache
(`judge_cache`) so that no judgment is paid for twice. A reply that cannot be read is None, counted in
`judge/unparsed` and logged, never a silent 0. The API key is read from the environment variable named by
`judge.api_key_env` when the client is made and is held by the HTTP client only: configs, logs, samples and
checkpoints never see it (messages here name the variable, not its value).

Left out: judging while the policy still samples (the rollout returns all completions of a step at once,
and their requests then go out together, `max_concurrency` at a time).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

from alignlab.errors import AlignlabError, ConfigError
from alignlab.scoring.judge_cache import JudgeCache, cache_key
from alignlab.scoring.judge_rubrics import (constraint, load_rubric, max_reply_tokens, numbered, pairwise_score,
                                            parse_group, parse_pairwise, parse_pointwise, render_prompt)

log = logging.getLogger("alignlab")
METRICS = ("requests", "cache_hits", "seconds", "unparsed", "tokens", "retries")


class JudgeError(AlignlabError):
    """The judge server cannot be used: unreachable after retries, a refused key, an unknown model, a spent budget."""


class JudgeClient:
    def __init__(self, settings, *, sleep: Callable[[float], None] = time.sleep):
        import openai

        if not settings.base_url or not settings.model:
            raise ConfigError("the judge needs a server and a model: set judge.base_url (e.g. http://127.0.0.1:8000/v1) "
                              "and judge.model (the name the server serves)")
        self.settings, self.sleep = settings, sleep
        self.rubric = load_rubric(settings.rubric, settings.mode, settings.scale)
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        # A local vLLM server without --api-key takes any key, but the client insists on one.
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=key or "no-key", max_retries=0,
                                     timeout=settings.timeout)
        self.cache = JudgeCache(settings.cache_dir) if settings.cache else None
        self.constrained = settings.constrained != "off"
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="judge")
        self._lock = threading.Lock()
        self.totals: Counter = Counter()
        self._step: Counter = Counter()
        self._unparsed_example: Optional[str] = None

    # ------------------------------------------------------------ one request

    def _request(self, messages: list[dict], structured: Optional[dict], max_tokens: int) -> Optional[str]:
        """The reply text of one chat completion (cached), after retries; JudgeError when none comes."""
        s = self.settings
        request = {"messages": messages, "structured_outputs": structured if self.constrained else None,
                   "temperature": s.temperature, "max_tokens": max_tokens}
        key = cache_key(s.model, self.rubric.template, self.rubric.mode, request)
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is not None:
            self._count(cache_hits=1)
            return entry["reply"]
        with self._lock:
            if s.max_requests is not None and self.totals["requests"] >= s.max_requests:
                raise JudgeError(f"judge.max_requests={s.max_requests} spent: raise it (or null for no limit) to judge more")
            self.totals["requests"] += 1
            self._step["requests"] += 1
        reply, tokens = self._send(request)
        self._count(tokens=tokens)
        if self.cache is not None:
            self.cache.put(key, {"reply": reply or "", "model": s.model, "tokens": tokens})
        return reply

    def _send(self, request: dict) -> tuple[Optional[str], int]:
        import openai

        s = self.settings
        for attempt in range(s.max_retries + 1):
            extra = {"structured_outputs": request["structured_outputs"]} if request["structured_outputs"] else None
            try:
                response = self._client.chat.completions.create(
                    model=s.model, messages=request["messages"], temperature=request["temperature"],
                    max_tokens=request["max_tokens"], extra_body=extra)
            except openai.BadRequestError as exc:
                if extra and s.constrained == "auto":  # a server without vLLM's structured outputs
                    self._unconstrain(exc)
                    request = {**request, "structured_outputs": None}
                    continue
                raise JudgeError(f"judge: the server at {s.base_url} rejected the request: {_short(exc)}") from None
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                if attempt == s.max_retries:
                    raise JudgeError(f"judge: no answer from {s.base_url} after {attempt + 1} tries "
                                     f"(judge.max_retries={s.max_retries}): {_short(exc)}") from None
                self._count(retries=1)
                self.sleep(min(s.backoff * 2 ** attempt, 60.0) * (0.5 + random.random()))
                continue
            except openai.APIStatusError as exc:
                raise JudgeError(status_message(exc, s)) from None
            usage = getattr(response, "usage", None)
            return response.choices[0].message.content, int(getattr(usage, "total_tokens", 0) or 0)
        raise JudgeError(f"judge: no answer from {s.base_url}")  # only reached when every try was unconstrained

    def _unconstrain(self, exc: Exception) -> None:
        with self._lock:
            if self.constrained:
                log.warning("judge: the server at %s refused structured outputs (%s); replies are parsed without "
                            "constraints from now on (judge.constrained=off skips the try)", self.settings.base_url,
                            _short(exc))
            self.constrained = False

    def _count(self, **values: float) -> None:
        with self._lock:
            self.totals.update(values)
            self._step.update(values)

    def _unparsed(self, count: int, reply: Optional[str]) -> None:
        if count:
            self._count(unparsed=count)
            with self._lock:
                if self._unparsed_example is None:
                    self._unparsed_example = (reply or "")[:200]

    # ------------------------------------------------------------ batches

    def _messages(self, **fields: Any) -> list[dict]:
        return [{"role": "user", "content": self.rubric.fill(**fields)}]

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        tick = time.perf_counter()
        try:
            return list(self._pool.map(fn, items))
        finally:
            self._count(seconds=time.perf_counter() - tick)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], answers: Optional[Sequence[Any]] = None,
              group_size: Optional[int] = None) -> list[Optional[float]]:
        """One score in [0, 1] or None per completion. `answers`: the reference column (pairwise: the
        response compared against). Group mode judges runs of equal prompts, at most `group_size` rows each."""
        if len(prompts) != len(completions) or (answers is not None and len(answers) != len(completions)):
            raise ValueError(f"{len(prompts)} prompts and {len(answers or [])} answers for {len(completions)} completions")
        if answers is None and (self.rubric.needs_answer or self.rubric.mode == "pairwise"):
            raise ConfigError(f"judge.rubric={self.rubric.name} in judge.mode={self.rubric.mode} compares with a "
                              f"reference answer, but the data has no '{self.settings.answer_column}' column "
                              "(judge.answer_column names it)")
        answers = list(answers) if answers is not None else [None] * len(completions)
        rows = list(zip(map(render_prompt, prompts), completions, ["" if a is None else str(a) for a in answers]))
        if self.rubric.mode == "pointwise":
            return self._map(self._pointwise, rows)
        if self.rubric.mode == "pairwise":
            return self._pairwise(rows)
        groups = group_spans([r[0] for r in rows], group_size)
        scores = self._map(lambda span: self._group(rows[span[0]:span[1]]), groups)
        return [score for group in scores for score in group]

    def _pointwise(self, row: tuple[str, str, str]) -> Optional[float]:
        prompt, completion, answer = row
        reply = self._request(self._messages(prompt=prompt, completion=completion, answer=answer),
                              constraint(self.rubric), self.settings.max_tokens)
        score = parse_pointwise(reply, self.rubric)
        self._unparsed(score is None, reply)
        return score

    def _verdict(self, job: tuple[str, str, str, str]) -> Optional[str]:
        prompt, a, b, answer = job
        reply = self._request(self._messages(prompt=prompt, response_a=a, response_b=b, answer=answer),
                              constraint(self.rubric), self.settings.max_tokens)
        verdict = parse_pairwise(reply)
        self._unparsed(verdict is None, reply)
        return verdict

    def _pairwise(self, rows: list[tuple[str, str, str]]) -> list[Optional[float]]:
        """Each completion against its reference twice, as A then as B; the mean of the verdicts read."""
        jobs = [(p, c, a, a) for p, c, a in rows] + [(p, a, c, a) for p, c, a in rows]
        verdicts = self._map(self._verdict, jobs)
        n, scores = len(rows), []
        for first, second in zip(verdicts[:n], verdicts[n:]):
            read = [s for s in (pairwise_score(first, True), pairwise_score(second, False)) if s is not None]
            scores.append(sum(read) / len(read) if read else None)
        return scores

    def _group(self, rows: list[tuple[str, str, str]]) -> list[Optional[float]]:
        prompt, answer, completions = rows[0][0], rows[0][2], [r[1] for r in rows]
        reply = self._request(self._messages(prompt=prompt, completions=numbered(completions), answer=answer),
                              constraint(self.rubric, len(rows)),
                              max_reply_tokens(self.rubric, len(rows), self.settings.max_tokens))
        scores = parse_group(reply, self.rubric, len(rows))
        self._unparsed(sum(s is None for s in scores), reply)
        return scores

    # ------------------------------------------------------------ metrics and checks

    def step_metrics(self) -> dict[str, float]:
        """judge/<name> since the last call (requests sent, cache hits, wall seconds, unscored, tokens, retries)."""
        with self._lock:
            step, self._step = self._step, Counter()
            example, self._unparsed_example = self._unparsed_example, None
        if example is not None:
            log.warning("judge: %d completion(s) unscored this step (a reply the parser could not read scores None, "
                        "not 0); one reply: %r", step["unparsed"], example)
        return {f"judge/{name}": float(step[name]) for name in METRICS}

    def preflight(self) -> None:
        """One real request before any work: a down server, a wrong model or a refused key fail now, in one line."""
        import openai

        s = self.settings
        fields = dict(prompt="1+1=?", completion="2", completions=numbered(["2", "3"]), response_a="2",
                      response_b="3", answer="2")
        structured = constraint(self.rubric, 2) if self.rubric.mode == "group" else constraint(self.rubric)
        try:
            self._send({"messages": self._messages(**fields), "temperature": 0.0, "max_tokens": 16,
                        "structured_outputs": structured if self.constrained else None})
        except JudgeError as exc:
            raise JudgeError(f"{exc}. Is the judge server running? Start one (README: a local judge server) or set "
                             "judge.base_url") from None
        except openai.OpenAIError as exc:
            raise JudgeError(f"judge: {_short(exc)}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def group_spans(prompts: Sequence[str], group_size: Optional[int]) -> list[tuple[int, int]]:
    """[start, end) of each group: runs of equal consecutive prompts, cut every `group_size` rows (a prompt drawn
    twice in a row is two groups; greedy rows, one per prompt, are groups of one).

    >>> group_spans(["p", "p", "q", "q"], 2), group_spans(["p", "p", "p", "p", "q"], 2), group_spans(["p", "q"], 2)
    ([(0, 2), (2, 4)], [(0, 2), (2, 4), (4, 5)], [(0, 1), (1, 2)])
    """
    spans, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start] or (group_size and i - start == group_size):
            spans.append((start, i))
            start = i
    return spans


def status_message(exc: Any, settings) -> str:
    """One line for an HTTP status the user must act on (no retry helps)."""
    status = getattr(exc, "status_code", "?")
    if status in (401, 403):
        return (f"judge: the server at {settings.base_url} refused the API key (HTTP {status}): put the right key in "
                f"the environment variable {settings.api_key_env} (judge.api_key_env)")
    if status == 404:
        return (f"judge: the server at {settings.base_url} has no model '{settings.model}' or no chat completions "
                f"endpoint (HTTP 404: {_short(exc)}); set judge.model to a name it serves (GET {settings.base_url}/models)")
    return f"judge: the server at {settings.base_url} answered HTTP {status}: {_short(exc)}"


def _short(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return text[:300].rstrip(".")
