"""Recipes: every setting of `headpatch export` for one model in a YAML file, parsed into typed, checked settings.

A recipe also states the model's architecture facts (from its config.json), so head lists can be checked and memory
estimated without downloading anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headpatch.architectures import HeadLayout, head_layout, supported_model_types
from headpatch.errors import HeadpatchError
from headpatch.heads import check_heads, parse_heads
from headpatch.io.files import read_yaml
from headpatch.options import (
    BUILTIN_DATA,
    DTYPE_NAMES,
    ExportJob,
    ExportOptions,
    LocateOptions,
    QRHeadOptions,
    TrainOptions,
    TuneOptions,
)
from headpatch.pear.memory import LAYER_TRAITS, ModelShape
from headpatch.record import check_k
from headpatch.typed import build, choices


@dataclass(frozen=True)
class Architecture:
    """Facts from the model's config.json: enough to build its config offline and to size each step."""

    model_type: str = field(metadata=choices(supported_model_types()))
    num_hidden_layers: int = field(metadata={"minimum": 1})
    num_attention_heads: int = field(metadata={"minimum": 1})
    num_key_value_heads: int = field(metadata={"minimum": 1})
    hidden_size: int = field(metadata={"minimum": 1})
    intermediate_size: int = field(metadata={"minimum": 1})
    vocab_size: int = field(metadata={"minimum": 1})
    parameters_b: float = field(metadata={"minimum": 0})  # billions, as on the model card
    head_dim: int | None = field(default=None, metadata={"minimum": 1})  # when the config sets its own
    tie_word_embeddings: bool | None = None

    def config(self) -> Any:
        """A transformers config with these facts (no download, no weights)."""
        from transformers import AutoConfig

        facts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        facts = {k: v for k, v in facts.items() if v is not None and k not in ("model_type", "parameters_b")}
        return AutoConfig.for_model(self.model_type, **facts)

    def shape(self) -> ModelShape:
        """The sizes memory estimates need."""
        return ModelShape(
            parameters=round(self.parameters_b * 1e9), num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads, num_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim or self.hidden_size // self.num_attention_heads, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, vocab_size=self.vocab_size,
            **LAYER_TRAITS.get(self.model_type, {}),
        )


@dataclass(frozen=True)
class PearSettings(LocateOptions):
    """PEAR location as a recipe states it: the location options, or the published heads instead."""

    use_published_heads: bool = False  # train published.pear_heads instead of locating


@dataclass(frozen=True)
class PublishedHeads:
    """A head list published for this model, and where it was published."""

    heads: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Published:
    """Published head lists: PEAR's suppression heads, QRHead's retrieval heads."""

    pear_heads: PublishedHeads | None = None
    qrhead_heads: PublishedHeads | None = None


@dataclass(frozen=True)
class Recipe:
    """Everything `headpatch export` needs for one model."""

    name: str
    model: str  # Hub id, local directory, .gguf file or demo alias
    architecture: Architecture
    revision: str | None = None
    dtype: str = field(default="float32", metadata=choices(DTYPE_NAMES))
    device: str = "cpu"  # a torch device, or "auto" for accelerate's placement
    seed: int = 0  # proxy sequences of location and training, and the built-in QRHead set
    pear: PearSettings = PearSettings()
    train: TrainOptions = TrainOptions()
    tune: TuneOptions | None = TuneOptions()  # `tune: null` trains pear.k heads for train.steps steps
    qrhead: QRHeadOptions = QRHeadOptions()
    export: ExportOptions = ExportOptions()
    published: Published = Published()

    def job(self) -> ExportJob:
        """The export this recipe describes (the recipe's seed drives location, training and the built-in data)."""
        published = self.published.pear_heads
        heads = ",".join(published.heads) if self.pear.use_published_heads and published else None
        locate = LocateOptions(**{spec.name: getattr(self.pear, spec.name) for spec in dataclasses.fields(LocateOptions)})
        return ExportJob(
            model=self.model, revision=self.revision, dtype=self.dtype, device=self.device, seed=self.seed,
            heads=heads, locate=dataclasses.replace(locate, seed=self.seed),
            train=dataclasses.replace(self.train, seed=self.seed),
            tune=dataclasses.replace(self.tune, seed=self.seed) if self.tune is not None else None,
            qrhead=self.qrhead, export=self.export,
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "recipe")
    if data is None:
        raise HeadpatchError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise HeadpatchError(f"{path}: a recipe is a mapping of keys (name, model, architecture, ...), got {data!r}")
    return data


def recipe_layout(recipe: Recipe) -> HeadLayout:
    """The head geometry the recipe's architecture facts describe."""
    return head_layout(recipe.architecture.config())


def _check_architecture(facts: Architecture) -> HeadLayout:
    if facts.num_attention_heads % facts.num_key_value_heads:
        raise HeadpatchError(f"architecture.num_attention_heads ({facts.num_attention_heads}) is not a multiple of "
                             f"num_key_value_heads ({facts.num_key_value_heads})")
    return head_layout(facts.config())


def _check_published(published: Published, layout: HeadLayout) -> None:
    for name in ("pear_heads", "qrhead_heads"):
        entry = getattr(published, name)
        if entry is None:
            continue
        try:
            heads = parse_heads(list(entry.heads))
            if not heads:
                raise HeadpatchError("the list is empty")
            check_heads(heads, layout)
        except HeadpatchError as exc:
            raise HeadpatchError(f"published.{name}.heads: {exc}") from None


def _check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        torch.device(device)
    except RuntimeError:
        raise HeadpatchError(f"device must be 'auto' or a torch device such as cpu, cuda, cuda:1; got {device!r}")


def _resolved_data(data: str | None, folder: Path) -> str | None:
    """The QRHead data as the CLI takes it: "builtin", or a path made absolute against the recipe's folder."""
    if data is None or data == BUILTIN_DATA:
        return data
    path = (folder / Path(data).expanduser()).resolve()
    if not path.is_file():
        raise HeadpatchError(f"qrhead.data {data!r} is neither '{BUILTIN_DATA}' nor a file ({path} does not exist)")
    return str(path)


def _checked(recipe: Recipe, folder: Path) -> Recipe:
    """Cross-field checks; returns the recipe with its data path resolved."""
    layout = _check_architecture(recipe.architecture)
    _check_device(recipe.device)
    check_k(recipe.pear.k, layout.total_heads, "pear.k", "the architecture")
    if recipe.qrhead.k is not None:
        check_k(recipe.qrhead.k, layout.total_heads, "qrhead.k", "the architecture")
    _check_published(recipe.published, layout)
    if recipe.pear.use_published_heads and recipe.published.pear_heads is None:
        raise HeadpatchError("pear.use_published_heads is true but the recipe has no published.pear_heads")
    data = _resolved_data(recipe.qrhead.data, folder)
    return dataclasses.replace(recipe, qrhead=dataclasses.replace(recipe.qrhead, data=data))


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe; any problem is one HeadpatchError line that starts with the file's path."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        return _checked(build(Recipe, data, "", yaml_numbers=True), path.resolve().parent)
    except HeadpatchError as exc:
        raise HeadpatchError(f"{path}: {exc}") from None
