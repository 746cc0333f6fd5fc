"""`alignlab chat MODEL_OR_RUN`: talk to a model through its chat template, tokens streamed as they come.

Interactive on a terminal, with `/help` (the commands), `/reset` (forget the conversation), `/system TEXT` (set the system
prompt; `/system` alone clears it), `/quit`. With `--prompt TEXT`, or text piped into stdin, it
answers once, prints only the answer, and exits, so scripts can use it:
`echo "12+30=?" | alignlab chat runs/grpo_x --temperature 0`. Piped text is one prompt, however many
lines it has; with `--each-line` every non-empty line is answered on its own, in a new conversation.

With `--tools multiply,path/to/tools.py:search` (or `--tools python`) the model's tool calls are run
(as in GRPO: alignlab.generation.tools), each call and its result is shown, the result joins the
conversation as a tool message, and the model continues, up to `--max-tool-turns` times per reply.

Streaming uses transformers' `TextStreamer` (synchronous: no thread), whose decoding holds back
incomplete words and bytes until they are whole; the history keeps the decoded generated ids.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import torch
from transformers import TextStreamer

from alignlab.errors import AlignlabError
from alignlab.generation.multi_turn import TurnSettings, turn_settings
from alignlab.model.inference import LoadedModel, load_for_inference
from alignlab.model.loading import stop_token_ids

HELP = "commands: /help (this list), /reset (new conversation), /system TEXT (set the system prompt), /quit"


class ChatSession:
    """One conversation: messages in, streamed replies out."""

    def __init__(self, loaded: LoadedModel, *, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 0.9, out=None, tools: Optional[TurnSettings] = None):
        self.loaded, self.system, self.history = loaded, system, []
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.out = out or sys.stdout
        self.stop_ids = stop_token_ids(loaded.tokenizer, loaded.model.generation_config)
        self.tools = tools
        if tools is not None:
            loaded.templater.tools = tools.tool_schemas  # the prompt lists them, as the chat template renders tools

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def reset(self) -> None:
        self.history = []

    def set_system(self, text: Optional[str]) -> None:
        self.system = text or None

    def reply(self, text: str) -> str:
        """Stream the answer to `text` to `out` and return it (the last turn, after any tool calls); the
        turns join the history."""
        self.history.append({"role": "user", "content": text})
        answer = self._turn()
        for _ in range(self.tools.max_tool_turns if self.tools is not None else 0):
            parsed = self.tools.parser(answer)
            if not parsed.calls and not parsed.errors:
                break
            results = self.tools.runner.run(parsed.calls)
            for call, result in zip(parsed.calls, results):
                arguments = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
                self.out.write(f"[tool] {call.name}({arguments}) -> {result.content}\n")
                self.history.append({"role": "tool", "name": call.name, "content": result.content})
            for message in parsed.errors:
                self.out.write(f"[tool] {message}\n")
                self.history.append({"role": "tool", "content": message})
            self.out.write(f"{self.loaded.label}> ")
            answer = self._turn()
        return answer

    @torch.no_grad()
    def _turn(self) -> str:
        loaded = self.loaded
        prompt_ids = loaded.templater.ids(loaded.templater.prompt_text(self.messages()))
        device = next(loaded.model.parameters()).device
        input_ids = torch.tensor([prompt_ids], device=device)  # [1, P]
        streamer = _Streamer(loaded.tokenizer, self.out)
        greedy = self.temperature <= 0
        try:
            output = loaded.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                max_new_tokens=self.max_new_tokens, do_sample=not greedy,
                temperature=None if greedy else self.temperature, top_p=None if greedy else self.top_p, top_k=None,
                eos_token_id=self.stop_ids, pad_token_id=loaded.tokenizer.pad_token_id,
            )
        except KeyboardInterrupt:
            while self.history and self.history.pop()["role"] != "user":
                pass  # a reply cut short is not part of the conversation, nor its tool turns
            self.out.write(" [stopped]\n")
            return ""
        new_ids = output[0, len(prompt_ids):].tolist()  # [C]
        answer = loaded.tokenizer.decode(new_ids, skip_special_tokens=True)
        self.history.append({"role": "assistant", "content": answer})
        return answer


class _Streamer(TextStreamer):
    """TextStreamer that writes to a given stream (the console, or a test's buffer)."""

    def __init__(self, tokenizer, out):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


def handle_line(session: ChatSession, line: str) -> bool:
    """Act on one line of input; False means quit."""
    text = line.strip()
    out = session.out
    if not text:
        return True
    if text in ("/quit", "/exit"):
        return False
    if text in ("/help", "/?"):
        out.write(f"{HELP}\n")
    elif text == "/reset":
        session.reset()
        out.write("(new conversation)\n")
    elif text == "/system" or text.startswith("/system "):
        session.set_system(text[len("/system"):].strip())
        out.write(f"(system prompt {'set' if session.system else 'cleared'})\n")
    elif text.startswith("/") and " " not in text:
        out.write(f"unknown command {text}; {HELP}\n")
    else:
        out.write(f"{session.loaded.label}> ")
        out.flush()
        session.reply(text)
    return True


def chat_loop(session: ChatSession, read: Callable[[str], str] = input) -> None:
    session.out.write(f"chatting with {session.loaded.label}. {HELP}\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            session.out.write("\n")
            return
        if not handle_line(session, line):
            return


def chat_command(model: str, *, prompt: Optional[str] = None, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 0.9, dtype: str = "auto", seed: Optional[int] = None,
                 each_line: bool = False, stdin=None, out=None, tools: Optional[list[str]] = None,
                 max_tool_turns: int = 4):
    """Answer `prompt` (or piped stdin) once and return the answer, or run the interactive loop.
    With `each_line`, every non-empty line is a prompt of its own, in a new conversation, and the
    answers are returned as a list."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    if prompt is None and not stdin.isatty():
        prompt = stdin.read().strip()
        if not prompt:
            raise AlignlabError("no prompt: stdin was empty (pipe some text in, or pass --prompt TEXT)")
    prompts = None
    if each_line and prompt is not None:
        prompts = [line.strip() for line in prompt.splitlines() if line.strip()]
    loaded = load_for_inference(model, dtype=dtype)
    if seed is not None:
        torch.manual_seed(seed)
    turns = turn_settings(list(tools or []), max_tool_turns=max_tool_turns, max_completion_length=max_new_tokens)
    session = ChatSession(loaded, system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          out=out, tools=turns)
    if prompts is not None:
        answers = []
        for text in prompts:
            session.reset()
            answers.append(session.reply(text))
        return answers
    if prompt is not None:
        return session.reply(prompt)
    chat_loop(session)
    return None
