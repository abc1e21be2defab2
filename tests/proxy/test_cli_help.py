"""``warmproxy <command> --help`` describes every flag it takes."""

from __future__ import annotations

import argparse

import pytest

from proxy.cli import _parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_has_help(command: str) -> None:
    parser = subcommands()[command]
    undocumented = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert undocumented == [], f"warmproxy {command}: flags without help"


def test_serve_help_shows_each_flag_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    serve = subcommands()["serve"]
    for action in serve._actions:
        for flag in action.option_strings:
            assert flag in shown
        # The first words of its help are printed (argparse may wrap the rest).
        assert " ".join(str(action.help).split()[:2]) in " ".join(shown.split()), action.dest
