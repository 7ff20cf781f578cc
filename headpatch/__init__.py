"""headpatch: make a causal LM read its context better and ship it as an ordinary checkpoint."""

__version__ = "0.1.0"
