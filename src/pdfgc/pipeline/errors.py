"""The one exception type of the inference pipeline for problems the user can fix (bad input, missing file)."""
from __future__ import annotations

from pdfgc.errors import UserError


class PipelineError(UserError, ValueError):
    """A user-fixable inference problem; the message names the input, what was expected and what to do.

    `infer.py` prints it without a traceback and exits with status 2.
    """
