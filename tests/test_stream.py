"""Streaming fold over safetensors files: byte-identical to the in-memory export, loads in plain transformers."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError
from headpatch.io.checkpoint import read_shard
from headpatch.io.export import stream_export
from headpatch.io.stream import disk_tensor_name
from headpatch.pear.fold import fold_model
from headpatch.record import Architecture, PatchRecord
from headpatch.typed import to_plain
from tests.conftest import run_fresh
from tests.tiny import tiny_model

SHARD = "60KB"


def make_source(tmp_path: Path, model_type: str, dtype: torch.dtype, sharded: bool, **extra) -> tuple[Path, object]:
    """A tiny checkpoint written by save_pretrained, with a tokenizer-free config beside the weights."""
    model = tiny_model(model_type, **extra).to(dtype)
    source = tmp_path / f"{model_type}-source"
    model.save_pretrained(source, max_shard_size=SHARD if sharded else "50GB")
    return source, model


def record_json(config, coefficients: dict[tuple[int, int], float]) -> dict:
    """The JSON of a trained-patch record for a model with this config, with the given coefficients."""
    heads = [f"{layer}-{head}" for layer, head in coefficients]
    values = {f"{layer}-{head}": value for (layer, head), value in coefficients.items()}
    return {"format_version": 1, "headpatch_version": "test", "source": "tiny", "base_model": "tiny/base",
            "architecture": to_plain(Architecture.of(head_layout(config))),
            "pear": {"heads": heads, "location": {"method": "given by the user", "k": len(heads)},
                     "coefficients": values}}


def make_record(config, coefficients: dict[tuple[int, int], float]) -> PatchRecord:
    """A trained-patch record for a model with this config, with the given coefficients."""
    return PatchRecord.from_json(record_json(config, coefficients))


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every weight file and the index of a checkpoint, by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.suffix == ".safetensors" or p.name.endswith(".index.json")}


COEFFICIENTS = {(0, 1): 0.7, (2, 0): 1.3, (2, 3): 0.0}


@pytest.mark.parametrize(("model_type", "dtype", "sharded"), [
    ("llama", torch.float32, False),
    ("llama", torch.bfloat16, True),
    ("qwen3", torch.float16, True),
    ("gpt2", torch.float32, True),
    ("gpt2", torch.bfloat16, False),
])
def test_streaming_export_is_byte_identical_to_the_in_memory_export(tmp_path, model_type, dtype, sharded):
    source, model = make_source(tmp_path, model_type, dtype, sharded)
    assert (source / "model.safetensors.index.json").is_file() == sharded
    record = make_record(model.config, COEFFICIENTS)
    out = stream_export(source, record, tmp_path / "streamed", show_progress=False)
    fold_model(model, head_layout(model.config), {k: v for k, v in COEFFICIENTS.items()})
    model.save_pretrained(tmp_path / "in-memory", max_shard_size=SHARD if sharded else "50GB")
    streamed, reference = tree_bytes(out), tree_bytes(tmp_path / "in-memory")
    assert streamed.keys() == reference.keys() and len(streamed) > (2 if sharded else 0)
    for name in reference:
        assert streamed[name] == reference[name], name
    assert tree_bytes(source) != streamed  # the patch did change something


def test_untouched_tensors_keep_their_bytes_and_patched_ones_scale_in_float32(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.bfloat16, True)
    out = stream_export(source, make_record(model.config, {(1, 2): 0.9}), tmp_path / "out", show_progress=False)
    name, cols = "model.layers.1.self_attn.o_proj.weight", slice(48, 72)
    before, after = {}, {}
    for shard in sorted(source.glob("*.safetensors")):
        before.update(load_file(shard))
        after.update(load_file(out / shard.name))
    assert torch.equal(after[name][:, cols], (before[name][:, cols].float() * 0.9).to(torch.bfloat16))
    assert torch.equal(after[name][:, :48], before[name][:, :48])
    assert all(torch.equal(after[key], before[key]) for key in before if key != name)


FRESH_LOAD = r"""
import io, json, sys, contextlib
import torch, transformers
from transformers import AutoModelForCausalLM
log = io.StringIO()
with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.arange(5, 45).view(2, 20)
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"logits": logits.flatten().tolist(), "log": log.getvalue(), "tied": model.config.tie_word_embeddings,
                  "leaked": [m for m in ("headpatch", "peft") if m in sys.modules]}))
"""


@pytest.mark.slow  # a fresh process with plain transformers
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_sharded_tied_export_loads_in_plain_transformers_and_equals_runtime_scaling(tmp_path, model_type):
    from headpatch.pear.scaling import scaled_heads

    source, model = make_source(tmp_path, model_type, torch.float32, True, tie_word_embeddings=True)
    out = stream_export(source, make_record(model.config, COEFFICIENTS), tmp_path / "out", show_progress=False)
    assert not any(name.startswith("lm_head") for name in json.loads(
        (out / "model.safetensors.index.json").read_text())["weight_map"])
    result = run_fresh(FRESH_LOAD, str(out))
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["tied"] and loaded["leaked"] == [] and "warn" not in loaded["log"].lower()
    with torch.no_grad(), scaled_heads(model, head_layout(model.config), dict(COEFFICIENTS)):
        expected = model(torch.arange(5, 45).view(2, 20)).logits
    assert torch.allclose(torch.tensor(loaded["logits"]).view_as(expected), expected, atol=1e-5)


def test_export_carries_every_other_file_and_writes_metadata(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    (source / "tokenizer.json").write_text('{"fake": true}')
    (source / "extra").mkdir()
    (source / "extra" / "notes.txt").write_text("kept")
    (source / "README.md").write_text("the base card")
    (source / "pytorch_model.bin").write_bytes(b"stale unpatched weights")
    (source / "consolidated.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    (source / "onnx").mkdir()
    (source / "onnx" / "model.onnx").write_bytes(b"onnx")
    (source / "original").mkdir()
    (source / "original" / "params.json").write_text("{}")
    (source / ".cache").mkdir()
    (source / ".cache" / "lock").write_text("")
    record = make_record(model.config, {(0, 0): 0.5})
    out = stream_export(source, record, tmp_path / "out", show_progress=False)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    written = ["README.md", "config.json", "extra/notes.txt", "generation_config.json", "headpatch.json",
               "model.safetensors", "tokenizer.json"]
    assert files == [".headpatch-manifest.json", *written]
    assert json.loads((out / ".headpatch-manifest.json").read_text()) == written
    assert (out / "tokenizer.json").read_text() == '{"fake": true}'
    config = json.loads((out / "config.json").read_text())
    assert config["headpatch"]["pear"]["coefficients"] == {"0-0": 0.5}
    source_config = json.loads((source / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "headpatch"} == source_config
    assert "headpatch" in (out / "README.md").read_text() and (source / "README.md").read_text() == "the base card"


def test_disk_names_tolerate_prefixes_around_the_layer_stack():
    layout = head_layout(tiny_model("gpt2").config)
    old_gpt2 = ["h.1.attn.c_proj.weight", "h.11.attn.c_proj.weight"]
    assert disk_tensor_name(layout, 1, old_gpt2) == "h.1.attn.c_proj.weight"
    llama = head_layout(tiny_model("llama").config)
    multimodal = ["model.language_model.layers.2.self_attn.o_proj.weight"]
    assert disk_tensor_name(llama, 2, multimodal) == multimodal[0]
    with pytest.raises(HeadpatchError, match="no tensor for layer 2"):
        disk_tensor_name(llama, 2, ["model.layers.12.self_attn.o_proj.weight"])


def test_gpt2_checkpoint_without_the_transformer_prefix(tmp_path):
    source, model = make_source(tmp_path, "gpt2", torch.float32, False)
    tensors = load_file(source / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, source / "model.safetensors",
              metadata={"format": "pt"})
    out = stream_export(source, make_record(model.config, {(1, 1): 0.25}), tmp_path / "out", show_progress=False)
    patched = load_file(out / "model.safetensors")
    rows = slice(16, 32)
    expected = tensors["transformer.h.1.attn.c_proj.weight"][rows] * 0.25
    assert torch.equal(patched["h.1.attn.c_proj.weight"][rows], expected)


def _untouched(tmp_path: Path, source: Path) -> dict[str, bytes]:
    return {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("damage", "message"), [
    ("truncate", r"model-00002-of-\d+\.safetensors is truncated: tensor 'model\.\S+' needs bytes"),
    ("garbage_header", r"model-00001-of-\d+\.safetensors is corrupt: the header is not (valid JSON|UTF-8)"),
    ("tiny_file", r"model-00001-of-\d+\.safetensors is truncated or not a safetensors file"),
    ("missing_shard", r"names shard model-00002-of-\d+\.safetensors, which is missing"),
    ("bad_index", r"cannot read safetensors index .*: not valid JSON"),
])
def test_damaged_checkpoints_give_a_clear_error_and_leave_nothing(tmp_path, damage, message):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    shards = sorted(source.glob("*.safetensors"))
    if damage == "truncate":
        os.truncate(shards[1], shards[1].stat().st_size - 100)
    elif damage == "garbage_header":
        data = bytearray(shards[0].read_bytes())
        data[10:30] = b"\xff" * 20
        shards[0].write_bytes(bytes(data))
    elif damage == "tiny_file":
        shards[0].write_bytes(b"abc")
    elif damage == "missing_shard":
        shards[1].unlink()
    else:
        (source / "model.safetensors.index.json").write_text("{not json")
    before = _untouched(tmp_path, source)
    with pytest.raises(HeadpatchError, match=message):
        stream_export(source, make_record(model.config, COEFFICIENTS), tmp_path / "out", show_progress=False)
    assert _untouched(tmp_path, source) == before


def test_bad_patches_and_outputs_are_refused_before_writing(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    before = _untouched(tmp_path, source)
    other = make_record(tiny_model("llama", num_attention_heads=8, head_dim=8).config, {(0, 7): 0.5})
    with pytest.raises(HeadpatchError, match="another model"):
        stream_export(source, other, tmp_path / "out", show_progress=False)
    out_of_range = record_json(model.config, {(0, 0): 0.5})
    out_of_range["pear"]["coefficients"] = {"5-0": 0.5}
    with pytest.raises(HeadpatchError, match="pear.coefficients must name exactly the heads"):
        PatchRecord.from_json(out_of_range)
    out_of_range["pear"]["heads"] = ["5-0"]
    with pytest.raises(HeadpatchError, match="5-0"):
        PatchRecord.from_json(out_of_range)
    with pytest.raises(HeadpatchError, match="overlaps the source"):
        stream_export(source, make_record(model.config, {(0, 0): 0.5}), source / "inside", show_progress=False)
    assert _untouched(tmp_path, source) == before


def test_a_shape_that_does_not_fit_the_recorded_heads_is_refused(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    tensors = load_file(source / "model.safetensors")
    name = "model.layers.0.self_attn.o_proj.weight"
    tensors[name] = tensors[name][:, :48].contiguous()
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HeadpatchError, match=r"o_proj.weight has shape \[64, 48\], the recorded heads need \[64, 96\]"):
        stream_export(source, make_record(model.config, {(0, 0): 0.5}), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_bin_only_checkpoints_point_to_a_conversion(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    torch.save(load_file(source / "model.safetensors"), source / "pytorch_model.bin")
    (source / "model.safetensors").unlink()
    with pytest.raises(HeadpatchError, match="no safetensors weights.*save_pretrained"):
        stream_export(source, make_record(model.config, {(0, 0): 0.5}), tmp_path / "out", show_progress=False)


def test_shard_headers_are_validated_against_the_file_size(tmp_path):
    source, _ = make_source(tmp_path, "llama", torch.float32, False)
    shard = read_shard(source / "model.safetensors")
    assert shard.tensors and max(t.end for t in shard.tensors.values()) == (source / "model.safetensors").stat().st_size
    with open(source / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(HeadpatchError, match="tensors end at byte"):
        read_shard(source / "model.safetensors")


def test_overlapping_tensors_in_a_header_are_refused(tmp_path):
    import struct

    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    raw = json.dumps(header).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 12)
    with pytest.raises(HeadpatchError, match="tensor 'b' starts at data byte 4, expected 8 .overlapping or gapped"):
        read_shard(tmp_path / "x.safetensors")


def test_a_single_file_wins_over_an_index_as_in_transformers(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    single, _ = make_source(tmp_path / "single", "llama", torch.float32, False)
    (source / "model.safetensors").write_bytes((single / "model.safetensors").read_bytes())
    out = stream_export(source, make_record(model.config, {(0, 0): 0.5}), tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors*")) == ["model.safetensors"]
