"""The one base class for problems a user can fix, and the one way every entry point reports them.

`UserError` is raised for bad input (a missing or corrupt file, an unknown option, a value out of range, a clip with
no face, ...). Its message names the input, what was expected, what was found and what to do. Every command-line
entry point (`infer.py`, `train.py`, `python -m preprocess`, `python -m pdfgc.eval`, `python -m pdfgc.models.convert`)
runs inside `report_user_errors(tool)`: a `UserError` becomes one line on stderr and exit status 2, never a traceback.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A user-fixable problem; `str(e)` is the whole message (one line: what, where, expected, found, what to do)."""


@contextlib.contextmanager
def report_user_errors(tool: str) -> Iterator[None]:
    """Run the body; a `UserError` (or a subclass) prints `pdfgc <tool>: error: <message>` on stderr and exits 2."""
    try:
        yield
    except UserError as e:
        msg = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"pdfgc {tool}: error: {msg}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
