"""The one exception a TV Middleware method raises to answer an error code."""

from __future__ import annotations


class TvmwError(Exception):
    """
    Answered as ``{"error": code, "error_message": message, **extra}``.

    ``code`` is the spec's number for that method (``error`` in the answer);
    ``extra`` carries the spec's additional fields for that error, e.g.
    ``error_messages`` for parameter errors.  Nothing is written by a call
    that raises it: a method raises before it writes, or inside the
    transaction it aborts.
    """

    def __init__(self, code: int, message: str = "", **extra):
        super().__init__(code, message)
        self.code = int(code)
        self.message = message
        self.extra = extra
