"""The one error type users see: its message is a single line, printed without a traceback."""


class EdgedfError(Exception):
    """A problem with the user's input or environment, stated in one line."""
