"""GGUF out: the fold on block scales and by re-encoding, the strict reader, the export and its verification."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from huggingface_hub import ModelCard

from headpatch.errors import HeadpatchError
from headpatch.io.gguf_export import (
    RECORD_KEY,
    attn_output_name,
    export_name,
    gguf_export,
)
from headpatch.io.gguf_file import header_bytes, open_gguf, tensor_bytes
from headpatch.io.gguf_fold import (
    REENCODE_AS,
    SCALE_OFFSETS,
    FoldMethod,
    column_factors,
    dequantized,
    fold_tensor,
)
from headpatch.io.gguf_verify import verify_gguf
from headpatch.record import PatchRecord
from tests.conftest import invoke
from tests.gguf_files import Q, gguf_record, random_blocks, write_tiny_gguf

F16_STEP = 2.0 ** -11  # float16's relative rounding bound
COEFFICIENTS = {(0, 1): 0.7, (2, 0): 1.3, (2, 3): 0.0}


def _scale_bytes(data: bytes, qtype, rows: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(rows, -1, size)
    mask = np.zeros(size, dtype=bool)
    for offset in SCALE_OFFSETS[qtype]:
        mask[offset:offset + 2] = True
    return blocks[:, :, mask], blocks[:, :, ~mask]


@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS), ids=lambda q: q.name)
def test_a_block_scale_fold_scales_every_value_and_keeps_the_integers(qtype):
    """gguf-py's own de-quantizer is the reference: the folded blocks de-quantize to base × coefficient within
    float16 rounding of the scale, and no byte outside the scale fields moves."""
    rng = np.random.default_rng(1)
    block = GGML_QUANT_SIZES[qtype][0]
    head_dim = max(block, 64)
    rows, width = 5, 4 * head_dim
    data = random_blocks(qtype, rows, width, rng).tobytes()
    factors = column_factors(width, head_dim, {1: 0.7, 2: 1.3, 3: 0.0})
    folded = fold_tensor(data, qtype, rows, factors, "t")
    assert folded.method is FoldMethod.SCALES and folded.type is qtype and len(folded.data) == len(data)
    base = dequantized(data, qtype, rows)
    new = dequantized(folded.data, qtype, rows)
    assert np.abs(new - base * factors).max() <= 2 * F16_STEP * np.abs(base * factors).max()
    assert np.array_equal(_scale_bytes(data, qtype, rows)[1], _scale_bytes(folded.data, qtype, rows)[1])
    assert not np.array_equal(new, base)  # it did something


def test_the_scale_offsets_are_the_only_ones_that_scale_a_block():
    """Scaling any other pair of bytes as a float16 does not scale the block: the table cannot be a lucky guess."""
    rng = np.random.default_rng(2)
    for qtype, offsets in SCALE_OFFSETS.items():
        block, size = GGML_QUANT_SIZES[qtype]
        data = random_blocks(qtype, 2, block, rng).copy()
        for offset in range(0, size - 1, 2):
            if offset in offsets:
                continue
            moved = data.copy()
            with np.errstate(over="ignore", invalid="ignore"):  # random bytes read as float16 may be huge or NaN
                moved[:, offset:offset + 2] = (moved[:, offset:offset + 2].copy().view(np.float16) * 2).view(np.uint8)
            assert not np.allclose(dequantize(moved, qtype), 2 * dequantize(data, qtype)), (qtype.name, offset)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_tensors_are_scaled_value_by_value(qtype):
    rng = np.random.default_rng(3)
    data = random_blocks(qtype, 4, 128, rng).tobytes()
    factors = column_factors(128, 32, {0: 1.5, 3: 0.25})
    folded = fold_tensor(data, qtype, 4, factors, "t")
    expected = np.ascontiguousarray(quantize(dequantized(data, qtype, 4) * factors, qtype)).tobytes()
    assert folded.method is FoldMethod.ELEMENTS and folded.data == expected


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q2_K], ids=lambda q: q.name)
def test_blocks_that_straddle_heads_are_re_encoded_in_the_nearest_quantizable_type(qtype):
    rng = np.random.default_rng(4)
    rows, width = 6, 512  # 256-wide blocks over 64-wide heads
    data = random_blocks(qtype, rows, width, rng).tobytes()
    factors = column_factors(width, 64, {1: 1.3, 2: 0.6})
    folded = fold_tensor(data, qtype, rows, factors, "t")
    target = REENCODE_AS[qtype]
    assert folded.method is FoldMethod.REENCODED and folded.type is target
    scaled = dequantized(data, qtype, rows) * factors
    assert folded.data == np.ascontiguousarray(quantize(scaled, target)).tobytes()
    # the re-encoding's error is the target type's own: within one quantization step of the block's range
    error = np.abs(dequantized(folded.data, target, rows) - scaled).max()
    assert error <= np.abs(scaled).max() / (7 if target in (Q.Q4_0, Q.Q4_1) else 100)


def test_a_block_shared_by_heads_with_one_factor_is_still_exact():
    rng = np.random.default_rng(5)
    data = random_blocks(Q.Q4_K, 2, 512, rng).tobytes()
    factors = column_factors(512, 64, {0: 1.2, 1: 1.2, 2: 1.2, 3: 1.2})  # the first 256 columns: one factor
    assert fold_tensor(data, Q.Q4_K, 2, factors, "t").method is FoldMethod.SCALES


def test_an_overflowing_coefficient_is_an_error_naming_the_tensor():
    rng = np.random.default_rng(6)
    data = random_blocks(Q.Q8_0, 2, 128, rng).tobytes()
    with pytest.raises(HeadpatchError, match="blk.3.attn_output.weight"):
        fold_tensor(data, Q.Q8_0, 2, column_factors(128, 32, {0: 1e9}), "blk.3.attn_output.weight")


# ---- the reader -------------------------------------------------------------------------------------------------

def test_the_header_is_rewritten_byte_for_byte(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf")
    with open_gguf(path) as (gguf, view):
        assert header_bytes(gguf.version, gguf.fields, gguf.tensors, gguf.alignment) == bytes(view[:gguf.data_start])
        assert gguf.value("general.name") == "Tiny Llama" and gguf.value("tokenizer.ggml.tokens") is None


@pytest.mark.parametrize(("cut", "named"), [
    (-100, "blk.2.attn_q.weight"),  # inside the last tensor's data
    (300, "metadata (entry|key)"),  # inside the metadata
])
def test_a_truncated_file_is_an_error_naming_the_place(tmp_path, cut, named):
    path = write_tiny_gguf(tmp_path / "t.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut])
    with pytest.raises(HeadpatchError, match=named), open_gguf(path):
        pass


def test_overlapping_tensors_and_bad_magic_are_refused(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf")
    with open_gguf(path) as (gguf, view):
        first, second = sorted(gguf.tensors, key=lambda t: t.offset)[:2]
        infos = [t if t.name != second.name else type(t)(t.name, t.type, t.shape, first.offset) for t in gguf.tensors]
        header = header_bytes(gguf.version, gguf.fields, tuple(infos), gguf.alignment)
        rest = bytes(view[gguf.data_start:])
    (tmp_path / "overlap.gguf").write_bytes(header + rest)
    with pytest.raises(HeadpatchError, match=f"tensor {second.name} overlaps"), open_gguf(tmp_path / "overlap.gguf"):
        pass
    (tmp_path / "magic.gguf").write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(HeadpatchError, match="not a GGUF file"), open_gguf(tmp_path / "magic.gguf"):
        pass
    (tmp_path / "big.gguf").write_bytes(b"GGUF" + struct.pack(">I", 3) + path.read_bytes()[8:])
    with pytest.raises(HeadpatchError, match="big-endian"), open_gguf(tmp_path / "big.gguf"):
        pass


# ---- the export -------------------------------------------------------------------------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("attn_type", "head_dim", "method"), [
    (Q.Q8_0, 64, FoldMethod.SCALES), (Q.Q4_1, 32, FoldMethod.SCALES), (Q.Q4_K, 256, FoldMethod.SCALES),
    (Q.F16, 64, FoldMethod.ELEMENTS), (Q.Q4_K, 64, FoldMethod.REENCODED),
])
def test_the_export_changes_only_the_patched_tensors_and_verifies(tmp_path, attn_type, head_dim, method):
    source = write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf", attn_type, head_dim=head_dim)
    before = _digest(source)
    record = gguf_record(COEFFICIENTS, head_dim=head_dim)
    warnings = []
    out = gguf_export(source, record, tmp_path / "out", show_progress=False, warn=warnings.append)
    assert out == tmp_path / "out" / "tiny-pear.Q8_0.gguf" and _digest(source) == before
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == \
        ["README.md", "headpatch.json", out.name]
    with open_gguf(source) as (base, base_view), open_gguf(out) as (new, new_view):
        keys = {f.key: f for f in new.fields}
        assert keys["general.name"].value == "Tiny Llama-pear"
        assert keys["general.base_model.0.name"].value == "Tiny Llama"
        assert keys["general.base_model.0.organization"].value == "tiny-org"
        assert keys["general.base_model.0.repo_url"].value == "https://huggingface.co/tiny/base"
        assert PatchRecord.from_text(keys[RECORD_KEY].value).coefficients() == record.coefficients()
        for field in base.fields:  # tokenizer, chat template, license: the source's bytes
            if field.key != "general.name":
                assert keys[field.key].raw == field.raw
        changed = {t.name for t in base.tensors
                   if bytes(tensor_bytes(base, base_view, t)) != bytes(tensor_bytes(new, new_view, new.tensor(t.name)))}
        assert changed == {attn_output_name(0), attn_output_name(2)}
        types = {new.tensor(attn_output_name(layer)).type for layer in (0, 2)}
        assert types == ({REENCODE_AS[attn_type]} if method is FoldMethod.REENCODED else {attn_type})
    reencoded = method is FoldMethod.REENCODED
    assert [("re-encoded Q4_K -> Q4_1" in w) for w in warnings] == ([True] if reencoded else [])  # license known
    assert ("re-encoded" in (out.parent / "README.md").read_text(encoding="utf-8")) == reencoded
    result = verify_gguf(out, source, show_progress=False)
    assert result.ok and result.tensors == 9 and len(result.patched) == 2, result.problems
    assert all(method.value in note for note in result.notes)


def test_a_tampered_export_fails_verification(tmp_path):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = gguf_export(source, gguf_record(COEFFICIENTS), tmp_path / "out", show_progress=False, warn=lambda _: None)
    with open_gguf(out) as (gguf, _):
        patched = gguf.data_start + gguf.tensor(attn_output_name(0)).offset  # the first block's float16 scale
        other = gguf.data_start + gguf.tensor("blk.1.attn_q.weight").offset + 5
        template = next(f for f in gguf.fields if f.key == "tokenizer.chat_template")
    original = out.read_bytes()
    key_at = original.index(template.raw) + len(template.raw) - 3
    for position, found in ((patched, "folded with the recorded"), (other, "the patch does not touch it"),
                            (key_at, "key tokenizer.chat_template: changed")):
        data = bytearray(original)
        data[position] ^= 0x01
        out.write_bytes(bytes(data))
        result = verify_gguf(out, source, show_progress=False)
        assert not result.ok and any(found in problem for problem in result.problems), result.problems


@pytest.mark.parametrize(("record", "message"), [
    (gguf_record(COEFFICIENTS, heads=8, head_dim=32), "made for another model"),
    (gguf_record({(0, 1): 1e9}), "overflows"),
    (gguf_record(COEFFICIENTS, model_type="qwen3"), "made for another model"),
])
def test_a_record_that_does_not_fit_writes_nothing(tmp_path, record, message):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(HeadpatchError, match=message):
        gguf_export(source, record, tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_the_export_name_keeps_the_quantization_suffix():
    assert export_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct-pear.Q4_1.gguf"
    assert export_name(Path("gemma-3-270m-q4_k_m.gguf")) == "gemma-3-270m-q4_k_m-pear.gguf"


def _exported_from_the_command_line(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny GGUF source, its patch record and the `export --gguf` of both, tmp_path/out/tiny-pear.gguf."""
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    patch = tmp_path / "patch.json"
    patch.write_text(gguf_record(COEFFICIENTS).to_text(), encoding="utf-8")
    result = invoke("export", str(source), "--patch", str(patch), "-o", str(tmp_path / "out"), "--gguf", "-q")
    assert result.exit_code == 0, result.output
    return source, patch, tmp_path / "out" / "tiny-pear.gguf"


def test_export_and_verify_from_the_command_line(tmp_path):
    source, patch, out = _exported_from_the_command_line(tmp_path)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "ollama create tiny-pear" in card.text and "FROM ./tiny-pear.gguf\nPARAMETER num_ctx 4096" in card.text
    assert (card.data.license, card.data.library_name, card.data.base_model) == ("apache-2.0", "gguf", "tiny/base")
    result = invoke("verify", str(out), "--base", str(source), "-q")
    assert result.exit_code == 0 and "2 patched as recorded, 0 unexpected" in result.output, result.output
    result = invoke("export", str(tmp_path), "--patch", str(patch), "-o", str(tmp_path / "o2"), "--gguf")
    assert result.exit_code == 2 and "convert_hf_to_gguf.py" in result.output
    assert not (tmp_path / "o2").exists()


def test_a_report_goes_into_a_gguf_export_only_if_it_evaluated_that_file(tmp_path):
    import json

    from headpatch.evaluation.models import gguf_hash, identity
    from headpatch.loading import LoadedModel, Source
    from tests.test_card import _results
    from tests.tiny import tiny_model

    source, _, exported = _exported_from_the_command_line(tmp_path)
    assert gguf_hash(str(exported)) == {"file": "tiny-pear.gguf", "sha256": _digest(exported)}
    assert gguf_hash(str(tmp_path)) is None and gguf_hash("tiny/base") is None  # a folder, a Hub id
    converted = LoadedModel(tiny_model("llama"), None, Source(str(exported), str(tmp_path / "cache"), None))
    assert identity(converted)["gguf"] == gguf_hash(str(exported))  # what `headpatch eval` records
    report, results = tmp_path / "report", _results(0.7)
    report.mkdir()
    for evaluated in (gguf_hash(str(source)), None):  # the base GGUF's report; a report of a safetensors checkpoint
        results["models"]["patched"]["gguf"] = evaluated
        (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
        before = (tmp_path / "out" / "README.md").read_bytes()
        result = invoke("card", str(tmp_path / "out"), "--eval", str(report))
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "did not evaluate the GGUF file" in result.stderr and "tiny-pear.gguf" in result.stderr
        assert (tmp_path / "out" / "README.md").read_bytes() == before
    results["models"]["patched"]["gguf"] = gguf_hash(str(exported))
    (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
    result = invoke("card", str(tmp_path / "out"), "--eval", str(report))
    assert result.exit_code == 0, result.stderr
    assert "## Evaluation" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def test_an_output_holding_the_source_is_refused(tmp_path):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    before = _digest(source)
    with pytest.raises(HeadpatchError, match="overlaps the source"):
        gguf_export(source, gguf_record(COEFFICIENTS), tmp_path, overwrite=True, show_progress=False)
    assert _digest(source) == before


# ---- hostile metadata and interrupted conversions ---------------------------------------------------------------

def _nested_arrays_gguf(path: Path, depth: int) -> Path:
    """A GGUF whose one metadata entry is `depth` arrays nested in one another around an empty uint32 array."""
    key = b"evil.nested"
    entry = struct.pack("<Q", len(key)) + key + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * (depth - 1)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + entry + struct.pack("<IQ", 4, 0))
    return path


def test_deeply_nested_metadata_arrays_are_an_error_naming_the_key_not_a_recursion_error(tmp_path):
    from headpatch.io.gguf_file import MAX_ARRAY_DEPTH

    with open_gguf(_nested_arrays_gguf(tmp_path / "ok.gguf", MAX_ARRAY_DEPTH)) as (gguf, _):
        assert [field.key for field in gguf.fields] == ["evil.nested"]
    deep = _nested_arrays_gguf(tmp_path / "deep.gguf", 200_000)  # far past Python's recursion limit
    with pytest.raises(HeadpatchError, match=f"key evil.nested nests arrays more than {MAX_ARRAY_DEPTH} deep"), \
            open_gguf(deep):
        pass
    base = write_tiny_gguf(tmp_path / "tiny.gguf")
    patch = tmp_path / "patch.json"
    patch.write_text(gguf_record(COEFFICIENTS).to_text(), encoding="utf-8")
    for args in (("export", str(deep), "--patch", str(patch), "-o", str(tmp_path / "out"), "--gguf", "-q"),
                 ("verify", str(deep), "--base", str(base), "-q"), ("verify", str(base), "--base", str(deep), "-q")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("headpatch: error:") and "evil.nested" in lines[0], lines
    assert not (tmp_path / "out").exists()


class _Tokenizer:
    def save_pretrained(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text("{}", encoding="utf-8")


@pytest.fixture
def fake_gguf_loading(monkeypatch, tmp_path):
    """convert_gguf on a tiny GGUF, with transformers' GGUF reading replaced by a tiny random Llama (the files
    gguf_files writes carry no tokenizer transformers can rebuild); saving it is real. Yields (gguf, cache)."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(config)
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF-loaded model carries
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: _Tokenizer())
    monkeypatch.setenv("HEADPATCH_CACHE", str(tmp_path / "cache"))
    return write_tiny_gguf(tmp_path / "tiny.gguf"), tmp_path / "cache"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_conversion_leaves_nothing_in_the_cache(fake_gguf_loading, monkeypatch, interrupt):
    import transformers.modeling_utils

    from headpatch.loading import convert_gguf

    gguf, cache = fake_gguf_loading

    def save_half(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # a partial shard, as Ctrl-C midway through the write leaves
        raise interrupt()

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_half)
    with pytest.raises(interrupt):
        convert_gguf(gguf)
    assert list(cache.iterdir()) == []


def test_a_conversion_removes_what_a_killed_one_left_and_keeps_a_live_one(fake_gguf_loading):
    import os
    import subprocess
    import sys

    from headpatch.loading import _gguf_cache_key, convert_gguf

    gguf, cache = fake_gguf_loading
    name = f"{gguf.stem}-{_gguf_cache_key(gguf)}"
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                              capture_output=True, text=True).stdout)
    killed = cache / f".{name}.partial-{gone}-abc"  # its process has exited, as after a SIGKILL
    live = cache / f".{name}.partial-{os.getpid()}-def"  # this process is alive: still being written
    for directory in (killed, live):
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"\0" * 4096)
    target = convert_gguf(gguf)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([name, live.name])
