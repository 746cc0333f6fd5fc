"""The tool task: 3-digit multiplication with a `multiply(a, b)` tool, which the tiny model cannot
do in its head (a 1M-parameter model does not learn 3-digit products from a few hundred examples)
but can do by calling the tool and copying its result.

SFT transcripts teach the format: half call the tool (`<tool_call>{"name": "multiply", "arguments":
{"a": 123, "b": 456}}</tool_call>`, the tool's result, then `<answer>56088</answer>`) and half
answer directly with the true product. So the SFT model calls the tool on about half the prompts
and guesses on the rest; GRPO, rewarded for a correct final answer, learns to call it every time.
Train and test prompts are disjoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from alignlab.commands.demo.tasks import write_jsonl
from alignlab.generation.tools import multiply, tool_schemas

TOOL_SPECS = ["multiply"]  # grpo.tools / eval.tools of the tool task


def prompt(a: int, b: int) -> str:
    return f"{a}*{b}=?"


def tool_call_text(a: int, b: int) -> str:
    return "<tool_call>" + json.dumps({"name": "multiply", "arguments": {"a": a, "b": b}}) + "</tool_call>"


def transcript(a: int, b: int, use_tool: bool) -> list[dict]:
    answer = f"<answer>{a * b}</answer>"
    if not use_tool:
        return [{"role": "user", "content": prompt(a, b)}, {"role": "assistant", "content": answer}]
    return [
        {"role": "user", "content": prompt(a, b)},
        {"role": "assistant", "content": tool_call_text(a, b)},
        {"role": "tool", "content": str(a * b)},
        {"role": "assistant", "content": answer},
    ]


def make_tool_splits(seed: int, *, sft: int = 3000, test: int = 200, dev: int = 50,
                     tool_share: float = 0.5) -> dict[str, list[dict]]:
    """{"sft", "dev", "prompts", "test"}: SFT transcripts (rows with messages and the tools' schemas;
    `dev` are held-out tool-using ones), GRPO prompts and held-out test prompts (prompt + answer),
    from disjoint factor pairs."""
    rng = random.Random(seed)
    pairs = set()
    while len(pairs) < sft + test + dev + 2000:
        pairs.add((rng.randint(100, 999), rng.randint(100, 999)))
    pairs = sorted(pairs)
    rng.shuffle(pairs)
    test_pairs, dev_pairs = pairs[:test], pairs[test : test + dev]
    sft_pairs, prompt_pairs = pairs[test + dev : test + dev + sft], pairs[test + dev + sft :]
    schemas = tool_schemas({"multiply": multiply})
    return {
        "sft": [{"messages": transcript(a, b, rng.random() < tool_share), "tools": schemas} for a, b in sft_pairs],
        "dev": [{"messages": transcript(a, b, True), "tools": schemas, "prompt": prompt(a, b), "answer": str(a * b)}
                for a, b in dev_pairs],
        "prompts": [{"prompt": prompt(a, b), "answer": str(a * b)} for a, b in prompt_pairs],
        "test": [{"prompt": prompt(a, b), "answer": str(a * b)} for a, b in test_pairs],
    }


def write_tool_task_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """The files configs/tools_tiny_*.yaml train on (shipped in alignlab/resources/configs/data/,
    which a checkout's data/ links to; regenerate with
    `python -c "from alignlab.commands.demo.tool_task import write_tool_task_data; write_tool_task_data('data')"`)."""
    splits = make_tool_splits(seed)
    out_dir = Path(out_dir)
    return {
        "sft": write_jsonl(splits["sft"], out_dir / "multiply_tool_sft.jsonl"),
        "dev": write_jsonl(splits["dev"], out_dir / "multiply_tool_dev.jsonl"),
        "prompts": write_jsonl(splits["prompts"], out_dir / "multiply_tool_prompts.jsonl"),
        "test": write_jsonl(splits["test"], out_dir / "multiply_tool_test_prompts.jsonl"),
    }
