"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HeadpatchError(Exception):
    """A problem with the user's input or files, explained in one line."""
