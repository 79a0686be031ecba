"""atoll demo: a local fleet (and, as atoll grows, a workflow) on loopback."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the local demo (coordinator and three agents on loopback)",
                       description="Start a coordinator and three agents as separate processes on this machine, "
                                   "show the fleet and a failure being detected, then shut everything down.")
    p.set_defaults(func=run)


def run(ns) -> int:
    from atoll.demo.run import run as run_demo   # lazy: keeps `atoll --help` fast

    return run_demo()
