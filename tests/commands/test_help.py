"""`alignlab COMMAND --help`: every command has a description, every argument a help line, and every
option with a default shows it; `chat` answers /help."""

from __future__ import annotations

import argparse
import io
from types import SimpleNamespace

import pytest

from alignlab.cli import build_parser


def commands(parser: argparse.ArgumentParser, prefix: str = "alignlab"):
    """(name, parser) of every command and subcommand, e.g. ("alignlab configs copy", ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from commands(sub, f"{prefix} {name}")


def test_every_command_is_described_and_every_argument_has_a_help_line_with_its_default():
    found = dict(commands(build_parser()))
    assert {"alignlab show-config", "alignlab tiny-model", "alignlab report", "alignlab demo", "alignlab vllm-serve",
            "alignlab configs copy"} <= set(found)
    for name, parser in found.items():
        assert parser.description and len(parser.description) > 20, f"{name}: no description"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{label}: no help"
            shown = formatter._expand_help(action)
            default = action.default
            if default is not None and default is not False and default != [] and action.nargs != "+":
                assert "default" in shown and str(default) in shown, f"{label}: default {default!r} not shown: {shown}"


@pytest.mark.parametrize("argv, expected", [
    (["demo", "--help"], ["(default: runs/demo", "runs/demo_tools", "(default: addition)", "(default: 0)"]),
    (["tiny-model", "--help"], ["--layers LAYERS", "(default: 4)", "(default: 128)", "OUT_DIR"]),
    (["configs", "copy", "--help"], ["DEST", "(default: .)"]),
    (["chat", "--help"], ["/help", "(default: 0.9)", "(default: 256)"]),
])
def test_help_text_shows_the_defaults(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for piece in expected:
        assert piece in text, piece


def test_chat_help_lists_the_commands():
    from alignlab.commands.chat import handle_line

    session = SimpleNamespace(out=io.StringIO())
    assert handle_line(session, "/help") is True
    shown = session.out.getvalue()
    assert "unknown" not in shown
    for command in ("/help", "/reset", "/system", "/quit"):
        assert command in shown
