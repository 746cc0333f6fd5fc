"""`alignlab chat` (piped prompt, streaming, /reset /system /quit) and `alignlab compare` (every model's answer)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.commands.compare import builtin_prompts, clean_cell
from alignlab.data.templates import Templater
from alignlab.generation.sampler import generate

REPO = Path(__file__).resolve().parents[2]


def write_distinct_model(path: Path, seed: int) -> Path:
    """A random tiny model that does not just repeat its last token: greedy answers differ between seeds
    (the residual branches are scaled up, so the tied embeddings no longer make it copy its input)."""
    from alignlab.model.tiny import write_tiny_model

    write_tiny_model(path, layers=2, hidden=64, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.mul_(5.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("distinct")
    return [write_distinct_model(root / "model_a", 0), write_distinct_model(root / "model_b", 1)]


def greedy_answers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The direct computation: the chat-templated prompt through `alignlab.generation.sampler.generate`, greedy."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    templater = Templater(tokenizer)
    ids = [templater.ids(templater.prompt_text(p)) for p in prompts]
    return generate(model, tokenizer, ids, greedy=True, max_new_tokens=max_new_tokens).texts


# ------------------------------------------------------------------------------ chat


def test_chat_answers_a_piped_prompt(models):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "alignlab", "chat", str(models[1]), "--temperature", "0", "--max-new-tokens", "8"],
        input="12+30=?\n", capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = greedy_answers(models[1], ["12+30=?"], 8)[0]
    assert expected.strip()  # a real answer, not whitespace
    assert done.stdout == expected + "\n"  # only the answer: scriptable


def test_chat_streams_and_handles_commands(models):
    from alignlab.commands.chat import ChatSession, chat_loop
    from alignlab.model.inference import load_for_inference

    out = io.StringIO()
    session = ChatSession(load_for_inference(str(models[0])), temperature=0, max_new_tokens=6, out=out)
    lines = iter(["/system Be brief.", "12+30=?", "/nonsense", "/reset", "5+5=?", "/quit", "never read"])
    chat_loop(session, read=lambda _: next(lines))
    text = out.getvalue()
    assert "(system prompt set)" in text and "(new conversation)" in text and "unknown command /nonsense" in text
    # After /reset only the last exchange remains, and the system prompt survives it.
    assert [m["role"] for m in session.messages()] == ["system", "user", "assistant"]
    assert session.messages()[1]["content"] == "5+5=?"
    # The streamed text is the answer that joined the history.
    assert session.messages()[2]["content"] in text
    assert next(lines) == "never read"  # /quit stopped the loop


def test_chat_each_line_answers_every_line_on_its_own(models, capsys):
    from alignlab.commands.chat import chat_command

    class Piped(io.StringIO):
        def isatty(self):
            return False

    lines = ["12+30=?", "5+5=?"]
    kwargs = dict(temperature=0, max_new_tokens=6)
    out = io.StringIO()
    answers = chat_command(str(models[0]), each_line=True, stdin=Piped("12+30=?\n\n5+5=?\n"), out=out, **kwargs)
    # Each answer is the one a fresh conversation gives to that line alone.
    assert answers == [chat_command(str(models[0]), prompt=line, out=io.StringIO(), **kwargs) for line in lines]
    assert out.getvalue() == "".join(a + "\n" for a in answers)
    # Without the flag, piped lines are one prompt (the documented default).
    whole = chat_command(str(models[0]), stdin=Piped("12+30=?\n5+5=?\n"), out=io.StringIO(), **kwargs)
    assert isinstance(whole, str)
    from alignlab.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--each-line" in text and "read whole as one prompt" in text


# ------------------------------------------------------------------------------ compare


def test_compare_prints_every_models_answer(models, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line per cell, so answers can be found whole
    result = cli(["compare", *models, "--max-new-tokens", "6"])
    assert result.code == 0, result.err
    items = builtin_prompts()
    prompts = [item.prompt for item in items]
    answers = [greedy_answers(path, prompts, 6) for path in models]
    assert answers[0] != answers[1]  # the two models really answer differently
    for path, model_answers in zip(models, answers):
        assert path.name in result.out
        for answer in model_answers:
            assert clean_cell(answer) in result.out
    for item in items:
        assert item.prompt in result.out
    # The built-in set has answers for the addition prompts, so there are per-model metrics.
    assert "metrics on the 4 prompts with answers" in result.out
    assert "format rate" in result.out


def test_compare_with_a_prompt_file_and_interactive(models, tmp_path):
    from alignlab.commands.compare import compare_command

    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Say hi."}\n')
    result = compare_command([str(m) for m in models], prompts=str(prompt_file), max_new_tokens=4, out=io.StringIO())
    assert list(result["answers"]) == ["model_a", "model_b"] and result["metrics"] == {"model_a": {}, "model_b": {}}

    out, lines = io.StringIO(), iter(["3+4=?", ""])
    compare_command([str(m) for m in models], interactive=True, max_new_tokens=4, read=lambda _: next(lines), out=out)
    expected = [greedy_answers(m, ["3+4=?"], 4)[0] for m in models]
    assert all(clean_cell(a)[:10] in out.getvalue() for a in expected)


def test_compare_needs_two_models(models, cli):
    result = cli(["compare", models[0]])
    assert result.code == 2 and "at least two models" in result.err


def test_chat_with_tools_runs_calls_shows_them_and_continues(models, monkeypatch):
    """--tools: the prompt lists the tools; a call in the reply is run and shown, its result joins the
    conversation as a tool turn, and the model answers again from there (model turns scripted)."""
    from alignlab.commands.chat import ChatSession
    from alignlab.generation.multi_turn import turn_settings
    from alignlab.model.inference import load_for_inference

    loaded = load_for_inference(str(models[0]))
    out = io.StringIO()
    session = ChatSession(loaded, out=out, tools=turn_settings(["multiply"], max_completion_length=64))
    prompts, script = [], iter(['<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>',
                                '<tool_call>{"name": "divide", "arguments": {}}</tool_call>', "<answer>408</answer>"])

    def scripted_turn():
        prompts.append(loaded.templater.prompt_text(session.messages()))
        answer = next(script)
        session.history.append({"role": "assistant", "content": answer})
        return answer

    monkeypatch.setattr(session, "_turn", scripted_turn)
    assert session.reply("12*34=?") == "<answer>408</answer>"
    shown = out.getvalue()
    assert "[tool] multiply(a=12, b=34) -> 408" in shown and "[tool] divide() -> Error: unknown tool 'divide'" in shown
    assert prompts[0].startswith("<|im_start|>system\nTools: multiply(a, b)")
    assert prompts[1].endswith("<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n")
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


def test_chat_cli_accepts_tools(models):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "alignlab", "chat", str(models[1]), "--temperature", "0", "--max-new-tokens", "8",
         "--tools", "multiply", "--prompt", "12*34=?"], capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    tokenizer = AutoTokenizer.from_pretrained(models[1])
    model = AutoModelForCausalLM.from_pretrained(models[1]).eval()
    from alignlab.generation.tools import load_tools, tool_schemas

    templater = Templater(tokenizer, tools=tool_schemas(load_tools(["multiply"])))
    expected = generate(model, tokenizer, [templater.ids(templater.prompt_text("12*34=?"))], greedy=True,
                        max_new_tokens=8).texts[0]
    assert done.stdout == expected + "\n"  # the tools were listed in the prompt the model answered
