"""The command line: ``python -m httpx_coalesce COMMAND`` (or ``httpx-coalesce COMMAND``).

Each subcommand parses its own arguments: this module only picks the subcommand and
hands it the rest of the command line. Adding one is an entry in COMMANDS and a
runner taking that rest and returning the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__

__all__ = ["COMMANDS", "main"]

#: Runs a subcommand with the arguments after its name; returns the exit status.
Runner = Callable[[list[str]], int]


def _demo(args: list[str]) -> int:
    try:
        from ._demo.demo import main as demo
    except ImportError as error:  # uvicorn/starlette come with the demo extra
        print(f"the demo needs its extra: pip install 'httpx-coalesce[demo]' ({error})", file=sys.stderr)
        return 2
    return demo(args)


def _serve(args: list[str]) -> int:
    # Parses its flags with only the core installed; the server comes with the gateway extra.
    from .gateway._cli import main as serve

    return serve(args)


#: Subcommand name -> (one line of help, runner). ``COMMAND --help`` reaches the runner,
#: which prints the subcommand's own help.
COMMANDS: dict[str, tuple[str, Runner]] = {
    "demo": (
        "fire a burst of identical LLM calls at a local fake API, with and without coalescing",
        _demo,
    ),
    "serve": (
        "run the coalescing gateway: a reverse proxy any client, in any language, can point at",
        _serve,
    ),
}

_DESCRIPTION = (
    "httpx-coalesce: an httpx/httpx2 transport that turns identical in-flight requests "
    "into one upstream call. The library is used from Python (CoalescingTransport); "
    "these commands show it at work."
)
_EPILOG = "Run 'COMMAND --help' for a command's own options, e.g. '%(prog)s demo --help'."


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser: the subcommands and --version. Subcommands' own options are
    theirs to parse, so none is declared here."""
    top = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (text, _) in COMMANDS.items():
        # No -h of its own: "demo --help" must reach the demo's parser, which knows its options.
        commands.add_parser(name, help=text, description=text, add_help=False)
    return top


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    top = parser(prog or "httpx-coalesce")
    # Known arguments are the top-level ones (which exit: --help, --version) and the
    # subcommand's name; whatever follows the name is the subcommand's own.
    options, _ = top.parse_known_args(args)
    if options.command is None:
        top.print_help(sys.stderr)
        return 2
    position = args.index(options.command)
    if position != 0:
        top.error(f"unrecognized arguments before {options.command}: {' '.join(args[:position])}")
    _, run = COMMANDS[options.command]
    return run(args[position + 1 :])


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m httpx_coalesce"))
