"""Command line: `python -m tl_core COMMAND`. Argument parsing and printing only: every command
asks the service layer (service/) and prints what it answers.

Exit status: 0 done, 2 bad input (one line on stderr), 1 training failed (recorded as failed), or
(`worker --health`) this machine's worker is not heartbeating.
Every command takes --json (one JSON object on stdout) and --db URL. The processes whose output is
read later (worker, serve, train-run) write it through logging, each line with its time (logs.py).

Where things are: parser.py (every command's flags), output.py (text, JSON, tables), commands.py
(the table of commands), and the commands by concern: catalog.py, datasets.py, runs.py,
results.py, measure.py, predict.py, worker.py. A new command: its flags in parser.py, and a
`@command` function in the module of its concern that calls the service and prints.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from .. import service
from ..errors import UserError
from ..service import jobs
from ..store.store import UnknownRun, default_db_url
from . import catalog, datasets, measure, predict, results, runs, worker  # noqa: F401  (each registers its commands)
from .commands import COMMANDS
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "job", None):  # a page's job (service/jobs.py): its end is recorded in the store too
            return jobs.recorded(service.open_store(args.db), args.job, lambda: COMMANDS[args.command](args))
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnknownRun as e:
        print(f"error: {e}; list runs with `python -m tl_core runs`", file=sys.stderr)
        return 2
    except DBAPIError as e:  # nothing was half-written: every store write is one transaction
        print(
            f"error: the database {args.db or default_db_url()} cannot be used ({e.orig}); check that its "
            f"folder is writable and the disk has space, or pass --db URL",
            file=sys.stderr,
        )
        return 2
