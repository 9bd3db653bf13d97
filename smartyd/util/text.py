"""Text helpers for log events and one-line operator messages."""

from __future__ import annotations


def one_line(e: BaseException | str) -> str:
    """
    The first line of an exception's message (its type name when empty):
    what an operator reads in a log event or on stderr, never a traceback.
    """
    text = (e if isinstance(e, str) else str(e)).strip()
    if not text:
        return type(e).__name__ if isinstance(e, BaseException) else ""
    return text.splitlines()[0].strip()
