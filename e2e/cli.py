"""``kserve-compat``: the command line of the harness.

Each subcommand lives in the module that owns its concern; this file only wires them up
and turns a ``HarnessError`` into one line on stderr and its exit code (a traceback only
with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from e2e import __version__
from e2e.errors import HarnessError
from e2e.secrets import install_log_redaction


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# As a shell reports a command killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141

# subcommand -> (module that owns it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "matrix": ("e2e.matrix_cli", "print the selected cells, or a GitHub Actions matrix (--github)"),
    "report": ("e2e.report_cli", "render saved JSON results as Markdown, HTML and JUnit"),
    "audit": ("e2e.audit", "flag retired, unpinned and unavailable images in manifests"),
    "preflight": ("e2e.preflight", "check a live cluster before a KServe upgrade or image swap"),
    "migrate": ("e2e.migrate", "move a live cluster's proxy sidecar to another image; rolls back on failure"),
    "watch-images": ("e2e.watch_images", "keep asking registries whether the images KServe runs still exist"),
    "binaries": (
        "e2e.binaries_cli",
        "build or locate etcd, kube-apiserver, kube-rbac-proxy, ... (a refused proxy version: from its image)",
    ),
    "images": ("e2e.imageset.cli", "list or build the kind tier's images offline from upstream source"),
    "run": ("e2e.run_cli", "run the scenarios on kind or the local tier (pytest with the harness's plugins)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 (argparse prints usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(
    command: str | None = None, loader: Callable[[str], CommandModule] | None = None
) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (a broken sibling cannot break it)."""
    load = loader or _load
    parser = _Parser(prog="kserve-compat", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command_parser.set_defaults(_module=module_name)
        if name == command:
            module = load(module_name)
            module.add_arguments(command_parser)
            command_parser.epilog = exit_codes_epilog(getattr(module, "EXIT_CODES", ()))
            command_parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def exit_codes_epilog(codes: Sequence[tuple[int, str]]) -> str | None:
    """The ``exit codes:`` section of a command's --help, from its module's ``EXIT_CODES``."""
    if not codes:
        return None
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in sorted(codes))


def _load(module_name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(module_name))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in arguments if arg in COMMANDS), None)
    if command == "run":
        # Everything after `run` is pytest's (and the harness plugin's): never parsed here.
        at = arguments.index("run") + 1
        arguments[at:at] = ["--"]
    args = build_parser(command).parse_args(arguments)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_redaction()
    try:
        code = _load(args._module).run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `kserve-compat matrix | head -1`: the reader has gone; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except HarnessError as exc:
        if debug:
            raise
        print(f"kserve-compat {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kserve-compat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
