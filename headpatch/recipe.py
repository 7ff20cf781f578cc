"""Recipes: every setting of `headpatch export` for one model in a YAML file, parsed into typed, checked settings.

A recipe also states the model's architecture facts (from its config.json), so head lists can be checked and memory
estimated without downloading anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from headpatch.architectures import HeadLayout, head_layout, supported_model_types
from headpatch.errors import HeadpatchError
from headpatch.heads import check_heads, parse_heads
from headpatch.loading import DTYPES
from headpatch.pear.locate import MEAN_VECTORS, PROPAGATIONS, LocateOptions
from headpatch.pear.memory import LAYER_TRAITS, ModelShape
from headpatch.pear.train import TrainOptions

BUILTIN_DATA = "builtin"
_LOCATE = LocateOptions()
_TRAIN = TrainOptions()


def _choices(values: typing.Iterable[str]) -> dict[str, tuple[str, ...]]:
    return {"choices": tuple(values)}


@dataclass(frozen=True)
class Architecture:
    """Facts from the model's config.json: enough to build its config offline and to size each step."""

    model_type: str = field(metadata=_choices(supported_model_types()))
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
class PearSettings:
    """PEAR location: which (samples, n) settings, which ablation, how many heads; or the published heads."""

    k: int = field(default=10, metadata={"minimum": 1})
    settings: tuple[tuple[int, int], ...] = _LOCATE.settings
    mean_vector: str = field(default=_LOCATE.mean_vector, metadata=_choices(MEAN_VECTORS))
    propagation: str = field(default=_LOCATE.propagation, metadata=_choices(PROPAGATIONS))
    use_published_heads: bool = False  # train published.pear_heads instead of locating


@dataclass(frozen=True)
class TrainSettings:
    """Coefficient training."""

    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    n: int = _TRAIN.n
    lr: float = _TRAIN.lr
    warmup_steps: int = field(default=_TRAIN.warmup_steps, metadata={"minimum": 0})


@dataclass(frozen=True)
class QRHeadSettings:
    """QRHead detection: `data` is "builtin", a QRHead JSON/JSONL file, or None to skip it."""

    data: str | None = None
    k: int | None = field(default=None, metadata={"minimum": 1})  # None: 16, or 32 for models of 10B+


@dataclass(frozen=True)
class ExportSettings:
    """Where the export goes besides the output directory."""

    push_to_hub: str | None = None  # Hub repo id
    private: bool = False


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
    dtype: str = field(default="float32", metadata=_choices(DTYPES))
    device: str = "cpu"  # a torch device, or "auto" for accelerate's placement
    seed: int = 0  # proxy sequences of location and training, and the built-in QRHead set
    pear: PearSettings = PearSettings()
    train: TrainSettings = TrainSettings()
    qrhead: QRHeadSettings = QRHeadSettings()
    export: ExportSettings = ExportSettings()
    published: Published = Published()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise HeadpatchError(f"recipe {path} does not exist") from exc
    except OSError as exc:
        raise HeadpatchError(f"cannot read recipe {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise HeadpatchError(f"{path}: YAML syntax error{where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise HeadpatchError(f"{path}: YAML syntax error: {str(exc).splitlines()[0]}") from exc
    if data is None:
        raise HeadpatchError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise HeadpatchError(f"{path}: a recipe is a mapping of keys (name, model, architecture, ...), got {data!r}")
    return data


def _describe(hint: Any) -> str:
    """How an expected type reads in an error message."""
    if dataclasses.is_dataclass(hint):
        return "a mapping of keys"
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(arg) for arg in args if arg is not type(None)) + " or null"
    if typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"[{', '.join(_describe(arg).removeprefix('a ').removeprefix('an ') for arg in args)}] pair"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def _wrong_type(key: str, hint: Any, value: Any) -> HeadpatchError:
    return HeadpatchError(f"{key} must be {_describe(hint)}, got {value!r}")


def _convert(hint: Any, value: Any, key: str) -> Any:
    """`value` checked against the type hint (converted where YAML gives another form of the same thing)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if dataclasses.is_dataclass(inner):  # its own errors name the exact key
            return _build(inner, value, key)
        try:
            return _convert(inner, value, key)
        except HeadpatchError:
            raise _wrong_type(key, hint, value) from None
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, list) or (fixed and len(value) != len(args)):
            raise _wrong_type(key, hint, value)
        try:
            return tuple(_convert(args[i] if fixed else args[0], item, key) for i, item in enumerate(value))
        except HeadpatchError:
            raise _wrong_type(key, hint, value) from None
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1, which PyYAML reads, takes 5e-3 (no dot) for a string
            return float(value)
        except ValueError:
            raise _wrong_type(key, hint, value) from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _wrong_type(key, hint, value)
    return value


def _check_value(spec: dataclasses.Field, value: Any, key: str) -> None:
    choices = spec.metadata.get("choices")
    if choices is not None and value not in choices:
        raise HeadpatchError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    minimum = spec.metadata.get("minimum")
    if minimum is not None and value is not None and value < minimum:
        raise HeadpatchError(f"{key} must be at least {minimum}, got {value!r}")


def _build(cls: type, data: Any, section: str) -> Any:
    """An instance of dataclass `cls` from a YAML mapping, refusing unknown and missing keys."""
    if not isinstance(data, dict):
        raise HeadpatchError(f"{section or 'the recipe'} must be a mapping of keys, got {data!r}")
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    where = f"in section '{section}'" if section else "at the top level"
    for key in data:
        if key not in specs:
            close = difflib.get_close_matches(str(key), specs, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(specs)}"
            raise HeadpatchError(f"unknown key '{key}' {where}{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in specs.items():
        key = f"{section}.{name}" if section else name
        if name not in data:
            if spec.default is dataclasses.MISSING:
                raise HeadpatchError(f"missing key '{name}' {where}")
            continue
        values[name] = _convert(hints[name], data[name], key)
        _check_value(spec, values[name], key)
    return cls(**values)


def recipe_layout(recipe: Recipe) -> HeadLayout:
    """The head geometry the recipe's architecture facts describe."""
    return head_layout(recipe.architecture.config())


def _check_architecture(facts: Architecture) -> HeadLayout:
    if facts.num_attention_heads % facts.num_key_value_heads:
        raise HeadpatchError(f"architecture.num_attention_heads ({facts.num_attention_heads}) is not a multiple of "
                             f"num_key_value_heads ({facts.num_key_value_heads})")
    return head_layout(facts.config())


def check_k(key: str, k: int | None, layout: HeadLayout) -> None:
    """Raise unless K (None: the default) is between 1 and the number of heads."""
    if k is not None and not 1 <= k <= layout.total_heads:
        raise HeadpatchError(f"{key}={k} is out of range: the architecture has {layout.total_heads} heads")


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
    check_k("pear.k", recipe.pear.k, layout)
    check_k("qrhead.k", recipe.qrhead.k, layout)
    # the options classes hold the value rules (n >= 2, positive learning rate, ...); reuse them
    try:
        LocateOptions(recipe.pear.settings, recipe.pear.mean_vector, recipe.pear.propagation, recipe.seed)
    except HeadpatchError as exc:
        raise HeadpatchError(f"pear.settings: {exc}") from None
    try:
        TrainOptions(steps=recipe.train.steps, batch_size=recipe.train.batch_size, n=recipe.train.n,
                     lr=recipe.train.lr, warmup_steps=recipe.train.warmup_steps, seed=recipe.seed)
    except HeadpatchError as exc:
        raise HeadpatchError(f"train: {exc}") from None
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
        return _checked(_build(Recipe, data, ""), path.resolve().parent)
    except HeadpatchError as exc:
        raise HeadpatchError(f"{path}: {exc}") from None


def settings_text(settings: typing.Iterable[tuple[int, int]]) -> str:
    """Location settings in the CLI's form, e.g. "20x50,40x25"."""
    return ",".join(f"{samples}x{n}" for samples, n in settings)


def parse_settings(text: str) -> tuple[tuple[int, int], ...]:
    """Location settings from the CLI's form "20x50,40x25"."""
    try:
        pairs = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip())
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise HeadpatchError(f"malformed settings {text!r}; expected e.g. 20x50,40x25")
    return pairs  # type: ignore[return-value]


def export_values(recipe: Recipe) -> dict[str, Any]:
    """The recipe as keyword values of `headpatch export`, keyed by its parameter names."""
    published = recipe.published.pear_heads
    return {
        "model": recipe.model,
        "revision": recipe.revision,
        "dtype": recipe.dtype,
        "device": recipe.device,
        "seed": recipe.seed,
        "k": recipe.pear.k,
        "settings": settings_text(recipe.pear.settings),
        "mean_vector": recipe.pear.mean_vector,
        "propagation": recipe.pear.propagation,
        "heads": ",".join(published.heads) if recipe.pear.use_published_heads and published else None,
        "steps": recipe.train.steps,
        "batch_size": recipe.train.batch_size,
        "n": recipe.train.n,
        "lr": recipe.train.lr,
        "warmup": recipe.train.warmup_steps,
        "qrhead_data": recipe.qrhead.data,
        "qrhead_k": recipe.qrhead.k,
        "push_to_hub": recipe.export.push_to_hub,
        "private": recipe.export.private,
    }
