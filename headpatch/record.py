"""The patch record: what was patched and found, and how. Every step reads and extends it; exports carry it.

The record is the contract between the steps (`heads.json`, `patch.json`), the export (`headpatch.json` and
`config.json` under `headpatch`) and every reader (card, inspect, verify, retriever). Its JSON form is these
dataclasses field by field, in declaration order, with unset (None) fields left out; every rule about a valid record
lives here. Compute modules never build records: the pipeline turns their results into these parts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads, format_head, parse_head
from headpatch.typed import build, choices, to_plain

FORMAT_VERSION = 1
_POSITIVE = {"minimum": 1}


def check_k(k: int, total_heads: int, name: str = "K", holder: str = "the model") -> None:
    """Raise unless 1 <= K <= the number of heads `holder` has."""
    if not 1 <= k <= total_heads:
        raise HeadpatchError(f"{name}={k} is out of range: {holder} has {total_heads} heads")


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """The head geometry a record was made for; a record never applies to a model of another geometry."""

    model_type: str
    num_layers: int = field(metadata=_POSITIVE)
    num_heads: int = field(metadata=_POSITIVE)
    head_dim: int = field(metadata=_POSITIVE)

    @classmethod
    def of(cls, layout: HeadLayout) -> Architecture:
        """The record form of a model's layout."""
        return cls(model_type=layout.model_type, num_layers=layout.num_layers, num_heads=layout.num_heads,
                   head_dim=layout.head_dim)

    @property
    def total_heads(self) -> int:
        """Number of (layer, head) pairs."""
        return self.num_layers * self.num_heads


@dataclass(frozen=True, kw_only=True)
class CopyFigures:
    """Held-out copy-task figures: loss at the training length, accuracy per length (keys are lengths as text)."""

    loss: float
    copy_accuracy: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class Location:
    """How the PEAR heads were chosen: located (every field set) or given by the user (method and k only)."""

    method: str
    settings: tuple[tuple[int, int], ...] | None = None
    mean_vector: str | None = None
    mean_vector_meaning: str | None = None
    propagation: str | None = None
    propagation_meaning: str | None = None
    seed: int | None = None
    special_tokens_excluded: bool | None = None
    k: int = field(metadata=_POSITIVE)
    seconds: float | None = None
    scores: dict[str, float] | None = None  # Δπ of every head, strongest suppressor first


@dataclass(frozen=True, kw_only=True)
class Training:
    """The training settings, what they optimised, and the held-out figures before and after."""

    steps: int
    batch_size: int
    n: int
    lr: float
    warmup_steps: int
    seed: int
    eval_lengths: tuple[int, ...]
    eval_samples: int
    optimizer: str
    loss: str
    coefficient_dtype: str
    seconds: float
    train_loss_first: float
    train_loss_last: float
    heldout_before: CopyFigures
    heldout_after: CopyFigures


@dataclass(frozen=True, kw_only=True)
class GuardCheckFigures:
    """A candidate's damage over the guard text's check windows (all of them by default), each a paired item."""

    windows: int = field(metadata=_POSITIVE)
    perplexity_change: float  # relative
    perplexity_interval: tuple[float, float]  # 95% bootstrap interval over windows; its upper end meets the bound
    kl: float  # mean KL(base || patched), nats per token
    within_guard: bool

    @property
    def summary(self) -> str:
        """One line for tables: the change, its interval, the KL and the verdict."""
        low, high = self.perplexity_interval
        return (f"{self.perplexity_change:+.2%} [{low:+.2%}, {high:+.2%}] over {self.windows} windows, "
                f"KL {self.kl:.5f}: {'within' if self.within_guard else 'outside'}")


@dataclass(frozen=True, kw_only=True)
class TuningCandidate:
    """One K of the tuning ladder: how far its training went and what its coefficients do."""

    k: int = field(metadata=_POSITIVE)
    steps: int  # the training step whose coefficients were kept
    steps_run: int
    stopped: str = field(metadata=choices(("converged", "damage guard", "step budget")))
    heldout_loss: float
    heldout_accuracy: float
    loss_change_interval: tuple[float, float]  # 95% interval of the held-out loss change from the base
    perplexity_change: float  # relative, on the guard text's first windows, during training
    kl: float  # mean KL(base || patched), nats per token, on the same windows
    within_guard: bool
    guard_check: GuardCheckFigures | None = None  # the whole-text check; None (absent in the file): not checked

    @property
    def guard_check_summary(self) -> str:
        """The whole-text check's one-line summary, or "not checked"."""
        return self.guard_check.summary if self.guard_check is not None else "not checked"


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """How K and the training length were chosen: the settings, every candidate, and why the winner won."""

    ladder: tuple[int, ...]
    max_steps: int
    batch_size: int
    n: int
    lr: float
    eval_every: int
    patience: int
    min_improvement: float
    selection: str  # the held-out set the choice read
    guard_text: str
    max_perplexity_increase: float
    max_kl: float
    base_heldout_loss: float
    base_heldout_accuracy: float
    candidates: tuple[TuningCandidate, ...]
    chosen_k: int | None
    reason: str
    seconds: float
    skipped: tuple[int, ...] = ()  # K values of the ladder not trained: the guard stopped a smaller K short of the best


@dataclass(frozen=True, kw_only=True)
class Pear:
    """The suppression heads in rank order, how they were found, and (once trained) one coefficient per head."""

    heads: tuple[str, ...]
    location: Location
    coefficients: dict[str, float] | None = None
    training: Training | None = None
    tuning: Tuning | None = None

    def head_ids(self) -> list[Head]:
        """The heads as (layer, head) pairs, in rank order."""
        return [parse_head(head) for head in self.heads]

    def coefficient_map(self) -> dict[Head, float]:
        """The learned coefficients keyed by (layer, head); a record that was not trained has none to fold."""
        if self.coefficients is None:
            raise HeadpatchError("the record holds no coefficients; run `headpatch train` first")
        return {parse_head(head): value for head, value in self.coefficients.items()}


@dataclass(frozen=True, kw_only=True)
class Detection:
    """How the QR heads were detected."""

    method: str
    data: str
    examples: int
    k: int = field(metadata=_POSITIVE)
    calibration: str
    mask: str
    prompt_layout: dict[str, str]
    seconds: float
    headpatch_version: str


@dataclass(frozen=True, kw_only=True)
class QRHeads:
    """The query-focused retrieval heads in rank order, their scores, and how they were detected."""

    heads: tuple[str, ...]
    scores: dict[str, float]
    detection: Detection

    def head_ids(self) -> list[Head]:
        """The heads as (layer, head) pairs, in rank order."""
        return [parse_head(head) for head in self.heads]


@dataclass(frozen=True, kw_only=True)
class PatchRecord:
    """One model's patch: which model, its head geometry, the PEAR heads and coefficients, the QR heads."""

    format_version: int = FORMAT_VERSION
    headpatch_version: str
    source: str  # what the user named: Hub id, directory, .gguf file or demo alias
    base_model: str | None = None  # the Hub id of the base model where known (0.1 wrote local paths here too)
    architecture: Architecture
    pear: Pear | None = None
    qrhead: QRHeads | None = None

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_json(cls, data: Any, name: str = "the record") -> PatchRecord:
        """A checked record from parsed JSON; any problem is one HeadpatchError line naming `name` and the key."""
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise HeadpatchError(f"{name} is not a headpatch record (format_version {FORMAT_VERSION})")
        try:
            return build(cls, _canonical_ids(data), "")
        except HeadpatchError as exc:
            raise HeadpatchError(f"{name}: {exc}") from None

    @classmethod
    def from_text(cls, text: str, name: str = "the record") -> PatchRecord:
        """A checked record from JSON text (duplicate keys and NaN/Infinity refused)."""
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:
            raise HeadpatchError(f"cannot read {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return cls.from_json(data, name)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: fields in declaration order, unset fields left out."""
        return to_plain(self)

    def to_text(self) -> str:
        """The JSON text every record file holds."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    def published(self) -> PatchRecord:
        """The record as an export publishes it: `base_model` only when it is a Hub id, a local source named by its
        last path component, so that no local path (and the user name in it) reaches a public card or config."""
        base_model = self.base_model if self.base_model is not None and is_hub_id(self.base_model) else None
        source = self.source if is_hub_id(self.source) else re.split(r"[\\/]", self.source.rstrip("\\/"))[-1]
        return dataclasses.replace(self, base_model=base_model, source=source)

    def config_metadata(self) -> dict[str, Any]:
        """The record as stored under `headpatch` in config.json: per-head scores of unselected heads left out."""
        pear, qrhead = self.pear, self.qrhead
        if pear is not None and pear.location.scores is not None:
            kept = {head: pear.location.scores[head] for head in pear.heads}
            pear = dataclasses.replace(pear, location=dataclasses.replace(pear.location, scores=kept))
        if qrhead is not None:
            qrhead = dataclasses.replace(qrhead, scores={head: qrhead.scores[head] for head in qrhead.heads})
        return dataclasses.replace(self, pear=pear, qrhead=qrhead).to_json()

    def with_top_k(self, k: int) -> PatchRecord:
        """Re-pick the top K PEAR heads from the recorded location scores (no re-location, no coefficients)."""
        scores = self.pear.location.scores if self.pear is not None else None
        if not scores:
            raise HeadpatchError("the record holds no location scores to choose K heads from; run `headpatch locate`")
        check_k(k, len(scores))
        ranked = sorted(scores, key=lambda head: scores[head], reverse=True)
        location = dataclasses.replace(self.pear.location, k=k)
        return dataclasses.replace(self, pear=Pear(heads=tuple(ranked[:k]), location=location))

    def pear_heads(self) -> list[Head]:
        """The PEAR heads in rank order, or a clear error for a record without them."""
        if self.pear is None:
            raise HeadpatchError("the record holds no PEAR heads; run `headpatch locate` first")
        return self.pear.head_ids()

    @property
    def trained(self) -> bool:
        """Whether the record holds PEAR coefficients to fold."""
        return self.pear is not None and self.pear.coefficients is not None

    def coefficients(self) -> dict[Head, float]:
        """The coefficients to fold, keyed by head; a record that holds none is an error."""
        if self.pear is None:
            raise HeadpatchError("the record holds no coefficients; run `headpatch train` first")
        return self.pear.coefficient_map()

    def check_fits(self, layout: HeadLayout) -> None:
        """Raise if the record was made for a model with another head geometry."""
        self.check_architecture(Architecture.of(layout))

    def check_architecture(self, architecture: Architecture) -> None:
        """Raise if the record was made for another head geometry than `architecture`."""
        if self.architecture != architecture:
            raise HeadpatchError(f"the patch was made for another model: {to_plain(self.architecture)} does not "
                                 f"match {to_plain(architecture)}")


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repo id (owner/name), unlike /home/me/ckpt, ./ckpt or ~/ckpt."""
    return _HUB_ID.fullmatch(name) is not None and ".." not in name and "--" not in name


# Where a record holds head ids, as lists or as mapping keys.
_HEAD_ID_PLACES = (("pear", "heads"), ("pear", "coefficients"), ("pear", "location", "scores"), ("qrhead", "heads"),
                   ("qrhead", "scores"))


def _canonical_id(text: Any) -> Any:
    """A head id in its one written spelling ("10_3" from QRHead's files becomes "10-3"); anything malformed is left
    as it is for the field checks to name."""
    try:
        return format_head(parse_head(text))
    except HeadpatchError:
        return text


def _canonical_ids(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every head id in canonical spelling; two spellings of one head in a mapping are an error."""
    data = copy.deepcopy(data)
    for place in _HEAD_ID_PLACES:
        holder = data
        for key in place[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        value = holder.get(place[-1]) if isinstance(holder, dict) else None
        if isinstance(value, list):
            holder[place[-1]] = [_canonical_id(item) for item in value]
        elif isinstance(value, dict):
            canonical = {_canonical_id(key): item for key, item in value.items()}
            if len(canonical) != len(value):
                raise HeadpatchError(f"{'.'.join(place)}: a head is given twice in two spellings")
            holder[place[-1]] = canonical
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key {duplicate!r} appears twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_ids(heads: tuple[str, ...], architecture: Architecture, key: str) -> None:
    """Head ids in canonical ASCII form, unique, inside the model."""
    try:
        parsed = [parse_head(text) for text in heads]
        if len(set(parsed)) != len(parsed):
            raise HeadpatchError("duplicate head ids")
        check_heads(parsed, architecture)
    except HeadpatchError as exc:
        raise HeadpatchError(f"{key}: {exc}") from None


def _check_head_list(heads: tuple[str, ...], k: int, architecture: Architecture, key: str, k_key: str) -> None:
    """A ranked head list: at least one head, K of them, every id valid."""
    if not heads:
        raise HeadpatchError(f"{key} is empty: a patch needs at least one head")
    _check_ids(heads, architecture, key)
    if k != len(heads):
        raise HeadpatchError(f"{k_key} is {k} but {key} lists {len(heads)}")
    check_k(k, architecture.total_heads, k_key)


def _check(record: PatchRecord) -> None:
    """Every rule a record obeys beyond its field types."""
    if record.format_version != FORMAT_VERSION:
        raise HeadpatchError(f"format_version must be {FORMAT_VERSION}, got {record.format_version!r}")
    architecture = record.architecture
    if record.pear is None and record.qrhead is None:
        raise HeadpatchError("the record holds neither PEAR heads nor QR heads")
    if record.pear is not None:
        pear = record.pear
        _check_head_list(pear.heads, pear.location.k, architecture, "pear.heads", "pear.location.k")
        if pear.location.scores is not None:
            _check_ids(tuple(pear.location.scores), architecture, "pear.location.scores")
        if pear.coefficients is not None and set(pear.coefficients) != set(pear.heads):
            raise HeadpatchError("pear.coefficients must name exactly the heads of pear.heads")
        if pear.training is not None and pear.coefficients is None:
            raise HeadpatchError("pear.training is recorded without pear.coefficients")
        if pear.tuning is not None and pear.tuning.chosen_k is not None and pear.tuning.chosen_k != len(pear.heads):
            raise HeadpatchError(f"pear.tuning.chosen_k is {pear.tuning.chosen_k} but pear.heads lists "
                                 f"{len(pear.heads)}")
        if pear.tuning is not None and not set(pear.tuning.skipped) <= set(pear.tuning.ladder) - {
                c.k for c in pear.tuning.candidates}:
            raise HeadpatchError("pear.tuning.skipped must name K values of the ladder that no candidate trained")
        if pear.tuning is not None and any(c.k == pear.tuning.chosen_k and c.guard_check is not None
                                           and not c.guard_check.within_guard for c in pear.tuning.candidates):
            raise HeadpatchError("pear.tuning.chosen_k names a candidate that failed the whole-text guard check")
    if record.qrhead is not None:
        qrhead = record.qrhead
        _check_head_list(qrhead.heads, qrhead.detection.k, architecture, "qrhead.heads", "qrhead.detection.k")
        _check_ids(tuple(qrhead.scores), architecture, "qrhead.scores")
        if not set(qrhead.heads) <= set(qrhead.scores):
            raise HeadpatchError("qrhead.scores must score every head of qrhead.heads")
