"""`headpatch eval`: does the patched model read context better, and what did it cost?"""

from headpatch.evaluation.report import summary_markdown, write_report
from headpatch.evaluation.run import run_eval

__all__ = ["run_eval", "summary_markdown", "write_report"]
