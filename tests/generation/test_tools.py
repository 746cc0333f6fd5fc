"""ToolRunner's time limits: each call's limit starts when a worker starts it; the batch is bounded apart."""

import threading
import time

from alignlab.generation.tools import ToolCall, ToolRunner


def _napper(release: threading.Event):
    def nap(seconds: float) -> float:
        """Sleeps (or until the test releases it).

        Args:
            seconds: how long
        """
        release.wait(seconds)
        return seconds

    return nap


def test_calls_queued_behind_busy_workers_get_their_own_full_limit():
    # 8 calls of 0.3 s on 2 workers take 4 waves (1.2 s): past a 1 s limit counted from submission,
    # well inside a 1 s limit counted from each call's start.
    release = threading.Event()
    runner = ToolRunner({"nap": _napper(release)}, timeout=1.0, workers=2)
    try:
        results = runner.run([ToolCall("nap", {"seconds": 0.3}) for _ in range(8)])
    finally:
        runner.close()
    assert [r.failed for r in results] == [False] * 8, [r.content for r in results]
    assert [r.content for r in results] == ["0.3"] * 8


def test_a_slow_call_still_times_out_at_its_own_limit_and_the_others_do_not_wait_for_it():
    release = threading.Event()
    runner = ToolRunner({"nap": _napper(release)}, timeout=0.5, workers=2)
    calls = [ToolCall("nap", {"seconds": 30})] + [ToolCall("nap", {"seconds": 0.1}) for _ in range(5)]
    start = time.monotonic()
    try:
        results = runner.run(calls)
    finally:
        release.set()
        runner.close()
    assert time.monotonic() - start < 2.0  # the slow call was given up on at about 0.5 s
    assert results[0].failed and "timed out after 0.5 s" in results[0].content
    assert [r.failed for r in results[1:]] == [False] * 5


def test_the_batch_bound_reports_calls_that_never_got_a_worker():
    # One worker, held by a call past its limit: the queued call never starts, and the batch's own
    # limit (2 waves x 0.3 s) ends the wait instead of the rollout stalling until the worker frees.
    release = threading.Event()
    runner = ToolRunner({"nap": _napper(release)}, timeout=0.3, workers=1)
    start = time.monotonic()
    try:
        results = runner.run([ToolCall("nap", {"seconds": 30}), ToolCall("nap", {"seconds": 0.01})])
    finally:
        release.set()
        runner.close()
    assert time.monotonic() - start < 2.0
    assert "timed out after 0.3 s" in results[0].content
    assert results[1].failed and "did not run" in results[1].content and "0.6 s" in results[1].content
