"""The one error type users see: its message is a single line, printed without a traceback."""


class EdgedfError(Exception):
    """A problem with the user's input or environment, stated in one line."""


def one_line(e: BaseException) -> str:
    """An unexpected exception as one line: its type and its message with whitespace collapsed."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
