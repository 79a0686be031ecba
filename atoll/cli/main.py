"""The ``atoll`` command for people.

Each verb lives in its own module (``atoll.cli.cmd_*``) exposing ``register(subparsers)``, which
adds its parser(s) and sets ``func`` to a callable taking the parsed namespace and returning an
exit code. Modules import their heavy dependencies (torch, grpc, pulp) inside ``func`` so that
``atoll --help`` stays fast. Adding a verb is one line in ``COMMAND_MODULES``.

Errors: an :class:`~atoll.core.errors.AtollError` (bad flag, bad spec, infeasible plan) prints one
line and exits 2; an RPC error prints its status code and message and exits 1; anything else
(a bug) prints one line naming the exception and exits 1. No tracebacks unless ``ATOLL_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from atoll.core.version import __version__
from atoll.core.errors import AtollError
from atoll.cli.table import SafeStream

COMMAND_MODULES = [
    "atoll.cli.cmd_coordinator",  # atoll coordinator
    "atoll.cli.cmd_agent",        # atoll agent
    "atoll.cli.cmd_nodes",        # atoll nodes, atoll drain
    "atoll.cli.cmd_plan",         # atoll plan (offline planner)
    "atoll.cli.cmd_generate",     # atoll generate (local runtime)
    "atoll.cli.cmd_workflows",    # atoll submit, workflows, status, delete, invoke, profile, push
    "atoll.cli.cmd_keys",         # atoll keys create | list | revoke
    "atoll.cli.cmd_tokens",       # atoll tokens create | list | revoke
    "atoll.cli.cmd_demo",         # atoll demo
]


SERVERS = ("coordinator", "agent")     # long-running: gRPC's own log lines (a refused handshake) stay on


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage; keep it to one clear line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atoll", description="atoll: cost-aware ML/LLM workflows on a hybrid GPU fleet")
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # verb not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    # gRPC's core logs a refused TLS handshake on stderr itself; a command says it once, in its one
    # line. Only for this call: a caller running main() in its own process (tests, scripts) keeps its
    # environment, and the servers it starts later still log the handshakes they refuse.
    quiet = ns.command not in SERVERS and "GRPC_VERBOSITY" not in os.environ
    if quiet:
        os.environ["GRPC_VERBOSITY"] = "ERROR"
    saved = sys.stdout, sys.stderr
    if ns.command not in SERVERS and ns.command != "demo" and not isinstance(sys.stdout, SafeStream):
        sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)   # what others sent is shown, not obeyed
    try:
        return _run(ns, quiet)
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = saved


def _run(ns, quiet: bool) -> int:
    try:
        return int(ns.func(ns) or 0)
    except AtollError as exc:
        if os.environ.get("ATOLL_DEBUG"):
            raise
        print(f"atoll {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # grpc.RpcError and friends: one line, no traceback
        if os.environ.get("ATOLL_DEBUG"):
            raise
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                name = code().name
                details = exc.details()  # type: ignore[attr-defined]
            except Exception:
                name, details = "ERROR", str(exc)
            print(f"atoll {ns.command}: {name}: {details}", file=sys.stderr)
            return 1
        text = " ".join(str(exc).split())[:300]
        print(f"atoll {ns.command}: internal error: {type(exc).__name__}: {text} "
              "(set ATOLL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        if quiet:
            os.environ.pop("GRPC_VERBOSITY", None)


if __name__ == "__main__":
    sys.exit(main())
