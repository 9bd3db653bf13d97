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


def spreadsheet_text(value: str | None) -> str:
    """
    A text cell of a CSV export, safe to open in a spreadsheet: one starting
    with ``= + - @`` (or a tab, a carriage return) would be a formula there,
    so it gets a leading apostrophe.  Amounts are written as numbers, not
    through this.
    """
    value = "" if value is None else str(value)
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
