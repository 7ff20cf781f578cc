"""Console behaviour shared by the commands."""

from __future__ import annotations


def progress_enabled(quiet: bool) -> bool:
    """Silence transformers' own bars and warnings too when asked to be quiet; return whether to show ours."""
    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    return not quiet
