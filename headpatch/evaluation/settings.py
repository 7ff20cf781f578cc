"""Quick and full settings of every evaluation task, as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headpatch.errors import HeadpatchError

TASK_NAMES = ("copy", "niah", "mdqa", "ppl", "retrieval")


@dataclass(frozen=True)
class CopySetting:
    """Held-out proxy copy task: `samples` random sequences per length n."""

    lengths: tuple[int, ...]
    samples: int


@dataclass(frozen=True)
class NiahSetting:
    """Needle in a haystack: haystack lengths (tokens) × needle depths (0 = start, 1 = end) × the first `needles`."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    needles: int
    max_new_tokens: int
    batch_tokens: int  # prompts of similar length are answered together, up to this many tokens per batch


@dataclass(frozen=True)
class MdqaSetting:
    """Lost in the middle: `passages` essay chunks of about `passage_words` words, the first `facts` planted facts."""

    passages: int
    passage_words: int
    facts: int
    max_new_tokens: int
    batch_tokens: int


@dataclass(frozen=True)
class PplSetting:
    """Perplexity over `windows` non-overlapping windows of `window` tokens of held-out essays."""

    window: int
    windows: int


@dataclass(frozen=True)
class RetrievalSetting:
    """QR-head reranking of `examples` held-out built-in examples of `docs` passages each."""

    examples: int
    docs: int
    batch_size: int


# quick: a few minutes for two 135M models on a 2-core CPU; full: the figures a report shows (~15 min per such model)
SETTINGS: dict[str, dict[str, Any]] = {
    "copy": {
        "quick": CopySetting(lengths=(25, 50, 100), samples=10),
        "full": CopySetting(lengths=(25, 50, 100, 200), samples=50),
    },
    "niah": {
        "quick": NiahSetting(lengths=(256, 1024), depths=(0.0, 0.5, 1.0), needles=4, max_new_tokens=32,
                             batch_tokens=4096),
        "full": NiahSetting(lengths=(512, 1024, 2048, 4096), depths=(0.0, 0.25, 0.5, 0.75, 1.0), needles=4,
                            max_new_tokens=32, batch_tokens=4096),
    },
    "mdqa": {
        "quick": MdqaSetting(passages=5, passage_words=70, facts=4, max_new_tokens=32, batch_tokens=4096),
        "full": MdqaSetting(passages=10, passage_words=70, facts=12, max_new_tokens=32, batch_tokens=8192),
    },
    "ppl": {
        "quick": PplSetting(window=512, windows=8),
        "full": PplSetting(window=512, windows=48),
    },
    "retrieval": {
        "quick": RetrievalSetting(examples=8, docs=5, batch_size=4),
        "full": RetrievalSetting(examples=48, docs=10, batch_size=4),
    },
}


def check_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from a comma list or a sequence, checked, in the canonical order."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [t.strip() for t in tasks]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise HeadpatchError(f"unknown task(s) {given}; choose from {', '.join(TASK_NAMES)}")
    return [t for t in TASK_NAMES if t in names]


def setting_for(task: str, quick: bool) -> Any:
    """The quick or full setting of a task."""
    return SETTINGS[task]["quick" if quick else "full"]
