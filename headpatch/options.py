"""Every setting of every step, with its default written once.

The CLI builds its flags from these dataclasses, recipes parse into them, and `headpatch export` merges the two into
one `ExportJob` (flags given on the command line replace recipe values with `dataclasses.replace`). Field metadata
`in_file: False` marks settings a recipe cannot set (they come from the command line or from the job's seed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headpatch.errors import HeadpatchError
from headpatch.typed import choices

PAPER_SETTINGS: tuple[tuple[int, int], ...] = ((20, 50), (40, 25), (80, 15), (100, 10))
MEAN_VECTORS = {
    "batch": "mean of the head's output over the samples of the batch at the scored position (reference code)",
    "sequence": "mean of the head's output over all positions of the same sample (paper text)",
}
PROPAGATIONS = {
    "direct": "attention of later layers frozen at the scored position; only the residual path and MLPs carry "
    "the change (path patching, reference code)",
    "total": "later layers recomputed normally (total effect)",
}
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
EVAL_SETTINGS = ("quick", "full")
BUILTIN_DATA = "builtin"
BUILTIN_EXAMPLES = 64  # built-in QRHead detection set: examples
BUILTIN_DOCS = 10  # and passages per example
LARGE_MODEL_PARAMETERS = 10_000_000_000  # QRHead keeps QR_HEADS_SMALL heads below this size, QR_HEADS_LARGE above
QR_HEADS_SMALL, QR_HEADS_LARGE = 16, 32
GUARD_WINDOW = 512  # tokens per window of tuning's guard text
CHAT_TEMPLATE = "chat-template"
PROMPT_LAYOUT_NAMES = (CHAT_TEMPLATE, "qrhead-llama3", "qrhead-qwen2.5")  # headpatch.qrhead.prompt.PROMPT_LAYOUTS

_POSITIVE = {"minimum": 1}
_NOT_IN_FILE = {"in_file": False}


@dataclass(frozen=True)
class LocateOptions:
    """PEAR location: how heads are scored and how many are kept; defaults follow the PEAR reference code."""

    k: int = field(default=10, metadata=_POSITIVE)
    settings: tuple[tuple[int, int], ...] = PAPER_SETTINGS  # (samples, n) pairs
    mean_vector: str = field(default="batch", metadata=choices(MEAN_VECTORS))
    propagation: str = field(default="direct", metadata=choices(PROPAGATIONS))
    seed: int = field(default=0, metadata=_NOT_IN_FILE)
    max_rows: int = field(default=1024, metadata=_NOT_IN_FILE)  # sequences recomputed in one batch

    def __post_init__(self) -> None:
        if self.mean_vector not in MEAN_VECTORS:
            raise HeadpatchError(f"unknown mean vector {self.mean_vector!r}; choose from {', '.join(MEAN_VECTORS)}")
        if self.propagation not in PROPAGATIONS:
            raise HeadpatchError(f"unknown propagation {self.propagation!r}; choose from {', '.join(PROPAGATIONS)}")
        if not self.settings:
            raise HeadpatchError("location needs at least one (samples, n) setting")
        for samples, n in self.settings:
            if samples < 1 or n < 2:
                raise HeadpatchError(f"setting ({samples}, {n}) needs at least 1 sample and n >= 2")


@dataclass(frozen=True)
class TrainOptions:
    """Coefficient training; defaults are the PEAR reference hyper-parameters."""

    steps: int = 60
    batch_size: int = 20
    n: int = 50
    lr: float = 5e-3
    warmup_steps: int = field(default=2, metadata={"minimum": 0})
    seed: int = field(default=0, metadata=_NOT_IN_FILE)
    eval_lengths: tuple[int, ...] = field(default=(25, 50, 100, 200), metadata=_NOT_IN_FILE)
    eval_samples: int = field(default=20, metadata=_NOT_IN_FILE)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.n < 2 or not 0 < self.lr < math.inf:
            raise HeadpatchError("training needs steps >= 1, batch size >= 1, n >= 2 and a positive, finite "
                                 f"learning rate (got lr {self.lr})")
        if self.warmup_steps < 0:
            raise HeadpatchError(f"training needs warm-up steps >= 0 (got {self.warmup_steps})")


@dataclass(frozen=True)
class TuneOptions:
    """Choosing K and training to convergence: one candidate per K on the ladder, each trained until a held-out copy
    loss stops improving, the best one kept among those that stay within the damage guard on generic text."""

    ladder: tuple[int, ...] = (5, 10, 20, 40)  # candidate K values, capped by the model's head count
    max_steps: int = field(default=40, metadata=_POSITIVE)  # per candidate
    batch_size: int = field(default=10, metadata=_POSITIVE)
    n: int = field(default=25, metadata={"minimum": 2})
    lr: float = 0.01
    warmup_steps: int = field(default=2, metadata={"minimum": 0})
    eval_every: int = field(default=5, metadata=_POSITIVE)  # steps between held-out evaluations
    patience: int = field(default=2, metadata=_POSITIVE)  # evaluations without improvement before stopping
    min_improvement: float = 0.01  # nats of held-out copy loss that count as an improvement
    select_samples: int = field(default=32, metadata=_POSITIVE)  # held-out sequences for selection
    # guard: relative perplexity change on the guard text; on the whole-text check, the upper end of its 95% interval
    max_perplexity_increase: float = 0.01
    max_kl: float = 0.01  # guard: mean KL(base || patched), nats per token, on the guard text
    # windows of 512 tokens of the guard text measured during training, spread evenly over it, first and last included
    guard_windows: int = field(default=8, metadata=_POSITIVE)
    # windows of the guard text a candidate is checked on, each a paired item, before it is chosen; the text holds 39
    # for Gemma-3's tokenizer and 41 for SmolLM2's, so by default every window
    check_windows: int = field(default=64, metadata=_POSITIVE)
    seed: int = field(default=0, metadata=_NOT_IN_FILE)

    def __post_init__(self) -> None:
        if not self.ladder or any(k < 1 for k in self.ladder):
            raise HeadpatchError("the K ladder needs at least one K, each at least 1")
        if self.warmup_steps < 0:
            raise HeadpatchError(f"tuning needs warm-up steps >= 0 (got {self.warmup_steps})")
        thresholds = (self.min_improvement, self.max_perplexity_increase, self.max_kl)
        if not 0 < self.lr < math.inf or not all(0 <= value < math.inf for value in thresholds):
            raise HeadpatchError("tuning needs a positive, finite learning rate and non-negative, finite thresholds")

    def ladder_for(self, total_heads: int) -> tuple[int, ...]:
        """The ladder's distinct K values, ascending, capped by the model's head count."""
        return tuple(sorted({min(k, total_heads) for k in self.ladder}))


@dataclass(frozen=True)
class QRHeadOptions:
    """QRHead detection: `data` is "builtin", a QRHead JSON/JSONL file, or None to skip detection."""

    data: str | None = None
    k: int | None = field(default=None, metadata=_POSITIVE)  # None: the paper's rule, see `resolved_k`
    # the prompt frame: the tokenizer's chat template, or the public implementation's Llama-3 / Qwen-2.5 strings
    layout: str = field(default=CHAT_TEMPLATE, metadata=choices(PROMPT_LAYOUT_NAMES))

    def __post_init__(self) -> None:
        if self.layout not in PROMPT_LAYOUT_NAMES:
            raise HeadpatchError(f"unknown prompt layout {self.layout!r}; available: {', '.join(PROMPT_LAYOUT_NAMES)}")

    def resolved_k(self, parameters: int, total_heads: int) -> int:
        """K as given, or the paper's: 16 heads below 10B parameters, 32 above, never more than the model has."""
        if self.k is not None:
            return self.k
        return min(QR_HEADS_SMALL if parameters < LARGE_MODEL_PARAMETERS else QR_HEADS_LARGE, total_heads)


@dataclass(frozen=True)
class ExportOptions:
    """Where the export goes, and what happens to it after the fold."""

    output: Path | None = field(default=None, metadata=_NOT_IN_FILE)
    overwrite: bool = field(default=False, metadata=_NOT_IN_FILE)  # replace an earlier export in `output`
    push_to_hub: str | None = None  # Hub repo id
    private: bool = False
    push_revision: str | None = field(default=None, metadata=_NOT_IN_FILE)
    commit_message: str | None = field(default=None, metadata=_NOT_IN_FILE)
    eval: str | None = field(default=None, metadata={**_NOT_IN_FILE, **choices(EVAL_SETTINGS)})
    gguf: bool = False  # fold into the source GGUF and write a GGUF, not a transformers folder

    def __post_init__(self) -> None:
        if self.eval not in (None, *EVAL_SETTINGS):
            raise HeadpatchError(f"--eval takes {' or '.join(EVAL_SETTINGS)}, not {self.eval!r}")
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)


def check_repo_id(repo_id: str) -> None:
    """Refuse a Hub repo id the Hub would refuse, before an export spends minutes ahead of its push."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HeadpatchError(f"{repo_id!r} is not a Hub repo id: {str(exc).split(':')[0]}") from None


@dataclass(frozen=True)
class ExportJob:
    """Everything one `headpatch export` run does: the model, its settings per step, and the output."""

    model: str | None = None  # Hub id, local directory, .gguf file or demo alias
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"  # a torch device, or "auto" for accelerate's placement
    seed: int = 0  # proxy sequences of location and training, and the built-in QRHead set
    patch: Path | None = None  # a trained patch.json: fold it, no location or training
    heads: str | None = None  # heads.json or a head list: train these instead of locating
    ia3: Path | None = None  # also write a peft IA3 adapter here
    quiet: bool = False
    locate: LocateOptions = LocateOptions()
    train: TrainOptions = TrainOptions()
    tune: TuneOptions | None = TuneOptions()  # None: train K=locate.k heads for train.steps steps, no tuning
    qrhead: QRHeadOptions = QRHeadOptions()
    export: ExportOptions = ExportOptions()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise HeadpatchError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")


# The job field(s) each `headpatch export` parameter sets: (section, field), section None for the job itself.
EXPORT_FLAGS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "model": ((None, "model"),), "revision": ((None, "revision"),), "dtype": ((None, "dtype"),),
    "device": ((None, "device"),), "patch": ((None, "patch"),), "heads": ((None, "heads"),),
    "ia3": ((None, "ia3"),), "quiet": ((None, "quiet"),),
    "seed": ((None, "seed"), ("locate", "seed"), ("train", "seed"), ("tune", "seed")),
    "k": (("locate", "k"),), "settings": (("locate", "settings"),), "mean_vector": (("locate", "mean_vector"),),
    "propagation": (("locate", "propagation"),),
    "steps": (("train", "steps"),), "batch_size": (("train", "batch_size"),), "n": (("train", "n"),),
    "lr": (("train", "lr"),), "warmup_steps": (("train", "warmup_steps"),),
    "ladder": (("tune", "ladder"),),
    "qrhead_data": (("qrhead", "data"),), "qrhead_k": (("qrhead", "k"),), "qrhead_layout": (("qrhead", "layout"),),
    "output": (("export", "output"),), "overwrite": (("export", "overwrite"),),
    "push_to_hub": (("export", "push_to_hub"),), "private": (("export", "private"),),
    "push_revision": (("export", "push_revision"),), "commit_message": (("export", "commit_message"),),
    "eval": (("export", "eval"),), "gguf": (("export", "gguf"),),
}


def with_flags(job: ExportJob, flags: Mapping[str, Any]) -> ExportJob:
    """`job` with the given `headpatch export` parameters (keyed by parameter name) replacing its values."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in flags.items():
        for section, name_in_section in EXPORT_FLAGS[name]:
            (top if section is None else sections.setdefault(section, {}))[name_in_section] = value
    # a job without tuning (fixed K and steps) ignores tuning flags
    replaced = {section: dataclasses.replace(getattr(job, section), **values) for section, values in sections.items()
                if getattr(job, section) is not None}
    return dataclasses.replace(job, **top, **replaced)


def settings_text(settings: tuple[tuple[int, int], ...]) -> str:
    """Location settings in the CLI's form, e.g. "20x50,40x25"."""
    return ",".join(f"{samples}x{n}" for samples, n in settings)


def parse_ladder(text: str) -> tuple[int, ...]:
    """A K ladder from the CLI's form "5,10,20,40"."""
    try:
        ladder = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        ladder = ()
    if not ladder or min(ladder) < 1:
        raise HeadpatchError(f"malformed ladder {text!r}; expected positive K values such as 5,10,20,40")
    return ladder


def parse_settings(text: str) -> tuple[tuple[int, int], ...]:
    """Location settings from the CLI's form "20x50,40x25"."""
    try:
        pairs = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip())
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise HeadpatchError(f"malformed settings {text!r}; expected e.g. 20x50,40x25")
    return pairs  # type: ignore[return-value]
