"""``ivy schema MODULE [MODULE ...]``: the JSON Schema (draft-07) of the arguments and result
of every task the modules register, for producers in other languages
(:mod:`ivy.annotations.schema`; PROTOCOL.md, "Typed arguments and results")."""

from __future__ import annotations

import argparse
import json
from typing import Any

import ivy
from ivy.annotations.schema import DRAFT, registry_schemas
from ivy.cli._common import import_modules
from ivy.errors import IvyError


def add_parser(sub: Any) -> None:
    """Register ``ivy schema`` on the CLI's subparsers."""
    p = sub.add_parser(
        "schema", help="print the JSON Schema of tasks' arguments and results",
        description="Import MODULEs (which register tasks) and print, as one JSON object, "
                    "the JSON Schema (draft-07) of each task's arguments (the 'args' and "
                    "'kwargs' of its messages) and of its result, from their annotations: "
                    "what a producer in another language sends and gets back.")
    p.add_argument("modules", nargs="+", metavar="MODULE", help="module to import")
    p.add_argument("--task", "-t", action="append", metavar="NAME",
                   help="only this task (repeat for several; default: every task)")
    p.add_argument("--indent", type=int, default=2, metavar="N",
                   help="indentation of the JSON (default 2; 0: one line)")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: WARNING")


def run(args: argparse.Namespace) -> int:
    """Print the schemas; 0, or an IvyError for no task or an unknown ``--task``."""
    import_modules(args.modules)
    registry = ivy.default.registry
    if not len(registry):
        raise IvyError(f"modules {', '.join(args.modules)} registered no task: decorate "
                       "functions with @ivy.register_task(...)")
    document: dict[str, Any] = {"$comment": f"ivy {ivy.__version__}: one JSON Schema "
                                            f"({DRAFT}) per task's arguments and result",
                                **registry_schemas(registry)}
    if args.task:
        unknown = [name for name in args.task if name not in document["tasks"]]
        if unknown:
            raise IvyError(registry.not_registered_message(unknown[0]))
        document["tasks"] = {name: document["tasks"][name] for name in args.task}
    print(json.dumps(document, indent=args.indent or None, ensure_ascii=False))
    return 0
