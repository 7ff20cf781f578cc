"""Property-based fault and fuzz tests of everything a stranger's checkpoint or a user's file can put in front of
headpatch: safetensors headers, shard indexes, patch records, recipes, QRHead data and head sets.

The property, for every generated case: the command exits 0 with a correct export, or exits 2 with one
`headpatch: error:` line and nothing written; never a traceback, never a partial output or staging directory, and the
source's bytes unchanged. Safetensors headers are also compared with the safetensors library itself: headpatch
accepts a header exactly when the library does. Case counts are in COUNTS (the fast tier runs a tenth of each).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from headpatch.errors import HeadpatchError
from headpatch.io.checkpoint import read_shard
from headpatch.io.header import DTYPE_BITS
from tests.conftest import invoke
from tests.test_stream import make_source, record_json

ROOT = Path(__file__).resolve().parents[1]
# Generated cases per test in the whole suite (CI); the fast tier runs a tenth.
COUNTS = {"header_vs_library": 1500, "export_header": 150, "export_index": 150, "export_record": 250,
          "recipe": 150, "qrhead_data": 300, "qrhead_yaml": 150}


def _cases(name: str, fast_tier: bool = False) -> settings:
    count = COUNTS[name] // 10 if fast_tier else COUNTS[name]
    return settings(max_examples=count, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# Each test runs at a tenth of its count in the fast tier and at its full count in the slow one.
TIERS = [pytest.param(True, id="fast"), pytest.param(False, id="full", marks=pytest.mark.slow)]


# JSON values of every kind a hostile file can hold where headpatch expects something else.
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0-1", "1_0", "01-1", " 0-1", "\u0661-\u0662", "\x1b[2J", "../x", "*", "NaN", "1e999",
                     "model.safetensors", "README.md", "\ud800"]),
    st.text(max_size=12),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts and lists."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def _mutated(draw: st.DrawFn, original: Any, values: st.SearchStrategy = _VALUES) -> Any:
    """`original` with one to three random changes: a value replaced, a key dropped or added."""
    data = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        paths = [path for path in _paths(data) if path]
        if not paths:
            return draw(values)
        path = draw(st.sampled_from(paths))
        holder = data
        for key in path[:-1]:
            holder = holder[key]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "replace":
            holder[path[-1]] = draw(values)
        elif action == "drop":
            del holder[path[-1]]
        elif isinstance(holder, dict):
            holder[draw(st.text(max_size=8))] = draw(values)
        else:
            holder.append(draw(values))
    return data


def _dumps(data: Any) -> str:
    """JSON as Python writes it, NaN and Infinity included; a lone surrogate is written as its escape."""
    return json.dumps(data, allow_nan=True)


def _one_line_or_success(result: Any) -> None:
    """Exit 0, or exit 2 with exactly one `headpatch: error:` line; never a traceback (exit 1)."""
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("headpatch: error: "), result.stderr
        assert "\x1b" not in result.stderr


def _report(what: str, outcomes: Counter, expected: tuple[str, ...]) -> None:
    """Print the outcome counts (`pytest -s` shows them) and check that the generator reached every expected outcome,
    so a generator that only ever produced refusals (or only valid files) fails."""
    print(f"\nfuzz: {what}: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")
    assert all(outcomes[name] > 0 for name in expected), dict(outcomes)


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _nothing_left(work: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(f".{out.name}.")] == []


# --- safetensors headers, against the safetensors library ------------------------------------------------------

_DTYPES = st.one_of(st.sampled_from(sorted(DTYPE_BITS)), st.sampled_from(["u8", "F128", "", "BF16 ", "I4"]))
_DIMS = st.one_of(st.integers(0, 6), st.integers(-3, -1), st.sampled_from([2**64 - 1, 2**64, 2**32]),
                  st.floats(0, 4), st.booleans(), st.none(), st.text(max_size=2))


def _entry(name: str, dtype: str, shape: list[int], offsets: list[int]) -> dict[str, Any]:
    return {"name": name, "array": False, "fields": [["dtype", json.dumps(dtype)], ["shape", json.dumps(shape)],
                                                     ["data_offsets", json.dumps(offsets)]]}


def _real_header(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The entries of a real shard's header and the size of its data area."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    entries = [_entry(name, info["dtype"], info["shape"], info["data_offsets"])
               for name, info in header.items() if name != "__metadata__"]
    return entries, len(raw) - 8 - length


@st.composite
def _header_bytes(draw: st.DrawFn, real: tuple[list[dict[str, Any]], int] | None = None) -> tuple[bytes, int]:
    """A safetensors header (its JSON bytes) and the size of the data area, valid or broken in the ways files are:
    wrong types, negative or huge dimensions, overlapping or gapped offsets, repeated fields and names, serde's
    sequence form, metadata of the wrong type, NaN and out-of-range numbers, lone surrogates, deep nesting, trailing
    bytes and flipped bytes. Generated from scratch, or from a `real` header (entries, data size) left intact or
    damaged."""
    if real is not None:
        entries, offset = json.loads(json.dumps(real[0])), real[1]
    else:
        entries, offset = [], 0
        for index in range(draw(st.integers(0, 4))):
            dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
            size = math.prod(shape) * DTYPE_BITS[dtype] // 8
            name = draw(st.sampled_from([f"t{index}", "t0", "", "\u00e9", "__metadata__x"]))
            entries.append(_entry(name, dtype, shape, [offset, offset + size]))
            offset += size
    for _ in range(draw(st.integers(0, 2 if real else 3))):
        if not entries:
            break
        entry = draw(st.sampled_from(entries))
        fields = entry["fields"]
        kind = draw(st.sampled_from(["dtype", "dim", "offset", "drop", "repeat", "extra", "array", "offsets_len"]))
        named = {pair[0]: pair for pair in fields}
        if kind == "dtype" and "dtype" in named:
            named["dtype"][1] = json.dumps(draw(_DTYPES))
        elif kind == "dim" and "shape" in named:
            shape = json.loads(named["shape"][1]) or [1]
            shape[draw(st.integers(0, len(shape) - 1))] = draw(_DIMS)
            named["shape"][1] = json.dumps(shape)
        elif kind == "offset" and "data_offsets" in named:
            offsets = json.loads(named["data_offsets"][1]) or [0]
            offsets[draw(st.integers(0, len(offsets) - 1))] += draw(st.sampled_from([-1, 1, 2, -8, 2**64]))
            named["data_offsets"][1] = json.dumps(offsets)
        elif kind == "offsets_len" and "data_offsets" in named:
            offsets = json.loads(named["data_offsets"][1])
            named["data_offsets"][1] = json.dumps(offsets[:1] if draw(st.booleans()) else [*offsets, 0])
        elif kind == "drop" and fields:
            fields.pop(draw(st.integers(0, len(fields) - 1)))
        elif kind == "repeat" and fields:
            fields.append(list(draw(st.sampled_from(fields))))
        elif kind == "extra":
            fields.append([draw(st.sampled_from(["x", "dtype2", "__metadata__"])), draw(st.sampled_from(
                ["1", "NaN", "1e999", '"\\ud800"', '"ok"', "[" * 130 + "]" * 130, "[" * 120 + "]" * 120,
                 '{"a": 1, "a": 2}', "-0", "1.5"]))])
        elif kind == "array":
            entry["array"] = True
    parts = []
    metadata = draw(st.sampled_from([None, '{"format": "pt"}'] * (4 if real else 1) + [
        "null", '{"k": 1}', "[]", '{"k": "v", "k": "w"}']))
    if metadata is not None:
        parts.append(f'"__metadata__": {metadata}')
        if draw(st.integers(0, 9)) == 0:
            parts.append('"__metadata__": {"format": "pt"}')
    for entry in entries:
        if entry["array"]:
            value = "[" + ", ".join(text for _, text in entry["fields"]) + "]"
        else:
            value = "{" + ", ".join(f'"{key}": {text}' for key, text in entry["fields"]) + "}"
        parts.append(f"{json.dumps(entry['name'])}: {value}")
    text = "{" + ", ".join(parts) + "}" + draw(st.sampled_from([""] * (6 if real else 1) + ["   ", "\n", "\x00", " x",
                                                                                          "\x0c"]))
    raw = bytearray(text.encode("utf-8"))
    if raw and draw(st.integers(0, 11 if real else 7)) == 0:
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw), offset + draw(st.sampled_from([0] * (9 if real else 3) + [1, -1]))


def _library_accepts(path: Path) -> bool:
    try:
        with safe_open(path, "np"):
            return True
    except Exception:  # noqa: BLE001 - the library raises SafetensorError, and others for some inputs
        return False


def _write_shard(path: Path, raw: bytes, data_size: int, length: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + b"\0" * max(data_size, 0))


@pytest.mark.parametrize("fast_tier", TIERS)
def test_headers_are_accepted_exactly_when_the_safetensors_library_accepts_them(fast_tier, tmp_path):
    @_cases("header_vs_library", fast_tier)
    @given(case=_header_bytes(), length_change=st.sampled_from([0] * 12 + [-1, 1, 2**40]))
    def check(case, length_change):
        raw, data_size = case
        path = tmp_path / "x.safetensors"
        _write_shard(path, raw, data_size, len(raw) + length_change)
        try:
            read_shard(path)
            ours = True
        except HeadpatchError as exc:
            assert "\n" not in str(exc)
            ours = False
        outcomes["accepted" if ours else "refused"] += 1
        assert ours == _library_accepts(path), raw[:300]

    outcomes = Counter()
    check()
    _report("safetensors headers vs the library", outcomes, ("accepted", "refused"))


# --- exports from hostile checkpoints and records, through the CLI ---------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A tiny sharded Llama checkpoint, a single-file one, and a valid record for both."""
    root = tmp_path_factory.mktemp("pristine")
    sharded, model = make_source(root / "sharded", "llama", torch.float32, True)
    single, _ = make_source(root / "single", "llama", torch.float32, False)
    return sharded, single, record_json(model.config, {(0, 1): 0.5, (2, 3): 1.25})


def _check_export(work: Path, source: Path, record: dict, outcomes: Counter,
                  setup: Callable[[Path], None] | None = None, record_text: str | None = None) -> Any:
    """Copy `source` into `work`, let `setup` damage the copy, export it with the record, and check the property:
    a correct export or one line and nothing written, the (damaged) source unchanged either way."""
    copy = work / "source"
    shutil.copytree(source, copy)
    if setup is not None:
        setup(copy)
    patch = work / "patch.json"
    patch.write_text(record_text if record_text is not None else _dumps(record), encoding="utf-8")
    before, out = _tree_bytes(copy), work / "out"
    result = invoke("export", str(copy), "--patch", str(patch), "-o", str(out), "-q")
    _one_line_or_success(result)
    outcomes[f"exit {result.exit_code}"] += 1
    assert _tree_bytes(copy) == before
    if result.exit_code == 2:
        _nothing_left(work, out)
    else:
        _check_folded(copy, out, json.loads(patch.read_text(encoding="utf-8")))
    return result


def _check_folded(source: Path, out: Path, record: dict) -> None:
    """The export holds the shards the source's index (or its single file) names, each with the source's tensors but
    the patched heads' o_proj columns, scaled as recorded."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    scales = {}
    for head, value in record["pear"]["coefficients"].items():
        layer, index = (int(part) for part in head.replace("_", "-").split("-"))
        scales.setdefault(layer, {})[index] = value
    index_file = source / "model.safetensors.index.json"
    named = ({"model.safetensors"} if (source / "model.safetensors").is_file() else
             set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
    assert {p.name for p in out.glob("*.safetensors")} == named
    for shard in named:
        original, exported = load_file(source / shard), load_file(out / shard)
        assert original.keys() == exported.keys()
        for name, tensor in original.items():
            expected = tensor.clone()
            layer = next((layer for layer in scales if name == f"model.layers.{layer}.self_attn.o_proj.weight"), None)
            for head, value in scales.get(layer, {}).items():
                columns = slice(head * head_dim, (head + 1) * head_dim)
                expected[:, columns] = (tensor[:, columns].float() * value).to(tensor.dtype)
            assert torch.equal(exported[name], expected), name


def _header_damage(raw: bytes, data_size: int) -> Callable[[Path], None]:
    """Replace the header of the first shard by `raw`, keeping the file's data area as it is."""
    def damage(source: Path) -> None:
        shard = sorted(source.glob("*.safetensors"))[0]
        old = shard.read_bytes()
        (length,) = struct.unpack("<Q", old[:8])
        data = old[8 + length:]
        shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data[:max(data_size, 0)])
    return damage


@pytest.mark.parametrize("fast_tier", TIERS)
def test_exports_from_shards_with_hostile_headers_succeed_or_refuse_in_one_line(fast_tier, pristine):
    sharded, single, record = pristine

    real = _real_header(single / "model.safetensors")

    @_cases("export_header", fast_tier)
    @given(case=st.one_of(_header_bytes().map(lambda case: (False, case)),
                          _header_bytes(real).map(lambda case: (True, case))), use_single=st.booleans())
    def check(case, use_single):
        from_real, (raw, data_size) = case  # a header made from the single file's replaces that file's
        source = single if from_real or use_single else sharded
        with tempfile.TemporaryDirectory() as work:
            _check_export(Path(work), source, record, outcomes, _header_damage(raw, data_size))

    outcomes = Counter()
    check()
    _report("exports from shards with hostile headers", outcomes, ("exit 0", "exit 2"))


_SHARD_NAMES = st.one_of(st.sampled_from([
    "model-00001-of-00002.safetensors", "*", "../model-00001-of-00002.safetensors", "/etc/passwd", "README.md",
    "headpatch.json", "config.json", "sub/x.safetensors", ".hidden.safetensors", "x\x1b[2J.safetensors", "",
    "model-00001-of-00002.safetensors ", "a/../b.safetensors", "[ab].safetensors",
]), st.text(max_size=10))


@pytest.mark.parametrize("fast_tier", TIERS)
def test_exports_from_hostile_shard_indexes_succeed_or_refuse_in_one_line(fast_tier, pristine):
    sharded, _, record = pristine
    index = json.loads((sharded / "model.safetensors.index.json").read_text(encoding="utf-8"))
    values = st.one_of(_SHARD_NAMES, _VALUES)

    @_cases("export_index", fast_tier)
    @given(mutated=_mutated(index, values), raw_text=st.sampled_from([None] * 9 + ["", "[", "{" * 3000, "\xff"]))
    def check(mutated, raw_text):
        def damage(source: Path) -> None:
            (source / "model.safetensors.index.json").write_text(
                raw_text if raw_text is not None else _dumps(mutated), encoding="utf-8", errors="surrogatepass")
        with tempfile.TemporaryDirectory() as work:
            _check_export(Path(work), sharded, record, outcomes, damage)

    outcomes = Counter()
    check()
    _report("exports from hostile shard indexes", outcomes, ("exit 0", "exit 2"))


_HEAD_IDS = st.sampled_from(["0-1", "2-3", "0_1", "2_3", "1-1", "01-1", " 0-1", "0-1 ", "\u0660-\u0661", "9-0",
                             "0-9", "-1-0", "0--1", "1e0-1", ""])
_COEFFICIENTS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e30, 1e39]),
                          st.integers(-3, 3), st.booleans(), st.text(max_size=3))


@st.composite
def _respelled(draw: st.DrawFn, record: dict) -> dict:
    """A valid variant of `record`: other coefficients, heads in QRHead's "10_3" spelling or not."""
    record = json.loads(json.dumps(record))
    pear = record["pear"]
    spelling = {head: draw(st.sampled_from([head, head.replace("-", "_")])) for head in pear["heads"]}
    pear["heads"] = [spelling[head] for head in pear["heads"]]
    values = st.floats(-4, 4) | st.integers(-2, 2)
    pear["coefficients"] = {spelling[head]: draw(values) for head in pear["coefficients"]}
    return record


@pytest.mark.parametrize("fast_tier", TIERS)
def test_exports_with_hostile_patch_records_succeed_or_refuse_in_one_line(fast_tier, pristine):
    _, single, record = pristine
    values = st.one_of(_HEAD_IDS, _COEFFICIENTS, st.lists(_HEAD_IDS, max_size=3),
                       st.dictionaries(_HEAD_IDS, _COEFFICIENTS, max_size=3), _VALUES)

    @_cases("export_record", fast_tier)
    @given(mutated=st.one_of(_respelled(record), _mutated(record, values), _respelled(record).flatmap(
               lambda variant: _mutated(variant, values))),
           raw_text=st.sampled_from([None] * 12 + ["", "[" * 5000, '{"format_version": 1, "format_version": 1}',
                                                   "1" * 5000, "\ufeff{}"]))
    def check(mutated, raw_text):
        with tempfile.TemporaryDirectory() as work:
            _check_export(Path(work), single, mutated, outcomes, record_text=raw_text)

    outcomes = Counter()
    check()
    _report("exports with hostile patch records", outcomes, ("exit 0", "exit 2"))


# --- recipes (dry run: checked and planned, nothing loaded or written) -----------------------------------------

@pytest.mark.parametrize("fast_tier", TIERS)
def test_hostile_recipes_plan_or_refuse_in_one_line(fast_tier, tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "smollm2-135m-instruct.yaml").read_text(encoding="utf-8"))
    texts = st.sampled_from([None] * 10 + ["a: &x [1]\nb: *x\n", "name: a\nname: b\n", "\t- x", "[" * 2000,
                                           "pear: {k: 10, k: 11}\n", "!!python/object:os.system {}\n"])

    @_cases("recipe", fast_tier)
    @given(mutated=_mutated(recipe), raw_text=texts)
    def check(mutated, raw_text):
        path, out = tmp_path / "recipe.yaml", tmp_path / "out"
        text = raw_text if raw_text is not None else yaml.safe_dump(mutated, allow_unicode=False)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = invoke("export", "--recipe", str(path), "-o", str(out), "--dry-run")
        _one_line_or_success(result)
        outcomes[f"exit {result.exit_code}"] += 1
        _nothing_left(tmp_path, out)

    outcomes = Counter()
    check()
    _report("hostile recipes (dry run)", outcomes, ("exit 0", "exit 2"))


# --- QRHead data and head sets (read before any model work) ----------------------------------------------------

def _read_or_refuse(read: Callable[[Path], Any], path: Path, outcomes: Counter) -> Any:
    """What `read` makes of the file, or None when it refuses it with a one-line HeadpatchError (anything else
    raised fails the test)."""
    try:
        value = read(path)
    except HeadpatchError as exc:
        assert "\n" not in str(exc)
        outcomes["refused"] += 1
        return None
    outcomes["read"] += 1
    return value


_EXAMPLE = {"idx": "q1", "question": "Who wrote it?", "gt_docs": ["d2"],
            "paragraphs": [{"idx": "d1", "title": "A", "paragraph_text": "One."},
                           {"idx": "d2", "title": "B", "paragraph_text": "Two."}]}


@pytest.mark.parametrize("fast_tier", TIERS)
def test_hostile_qrhead_data_is_read_or_refused_in_one_line(fast_tier, tmp_path):
    from headpatch.qrhead.data import read_examples

    @_cases("qrhead_data", fast_tier)
    @given(mutated=_mutated([_EXAMPLE, _EXAMPLE]), jsonl=st.booleans(),
           raw_text=st.sampled_from([None] * 10 + ["", "[" * 5000, "1" * 5000, "[NaN]", "{}", "\n\n"]))
    def check(mutated, jsonl, raw_text):
        path = tmp_path / ("data.jsonl" if jsonl else "data.json")
        if raw_text is not None:
            text = raw_text
        elif jsonl and isinstance(mutated, list):
            text = "\n".join(_dumps(record) for record in mutated)
        else:
            text = _dumps(mutated)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        examples = _read_or_refuse(read_examples, path, outcomes)
        assert examples is None or (examples and all(example.gold_positions() for example in examples))

    outcomes = Counter()
    check()
    _report("hostile QRHead data", outcomes, ("read", "refused"))


@pytest.mark.parametrize("fast_tier", TIERS)
def test_hostile_qrhead_head_sets_are_read_or_refused_in_one_line(fast_tier, tmp_path):
    from headpatch.qrhead.yamlio import read_yaml

    @_cases("qrhead_yaml", fast_tier)
    @given(heads=st.lists(_HEAD_IDS, max_size=4), separator=st.sampled_from([",", ", ", ";", ",,"]),
           model=_SCALARS, raw_text=st.sampled_from([None] * 8 + ["a: &x 1\nb: *x\n", "[", "attn_head_set: 5\n"]))
    def check(heads, separator, model, raw_text):
        path = tmp_path / "heads.yaml"
        text = raw_text if raw_text is not None else yaml.safe_dump(
            {"attn_head_set": separator.join(heads), "model_name_or_path": model})
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        head_set = _read_or_refuse(read_yaml, path, outcomes)
        assert head_set is None or head_set.heads is None or all(len(h) == 2 for h in head_set.heads)

    outcomes = Counter()
    check()
    _report("hostile QRHead head sets", outcomes, ("read", "refused"))
