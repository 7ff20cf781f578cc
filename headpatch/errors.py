"""The one exception type the CLI turns into a one-line message and a non-zero exit, and text made safe to print."""


class HeadpatchError(Exception):
    """A problem with the user's input or files, explained in one line."""


def printable(text: str) -> str:
    """`text` safe for a terminal line: newlines and other control characters (an ANSI escape sequence planted in a
    file name or a config) shown as escapes instead of acting on the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
