import dataclasses
import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError
from headpatch.record import Architecture, PatchRecord
from headpatch.typed import to_plain
from headpatch.io.export import export_checkpoint
from headpatch.io.files import read_record
from headpatch.loading import load_model
from headpatch.pipeline import export_step, given_heads_record
from tests.conftest import run_fresh
from tests.tiny import tiny_model

COEFFICIENTS = {"3-4": 0.61, "17-3": 0.8, "17-5": 1.25, "29-8": 0.0}

# Runs in a fresh interpreter that imports only torch and transformers: the exported checkpoint must equal the base
# model with each patched head's o_proj input scaled at run time.
FRESH_CHECK = r"""
import io, json, sys, contextlib, logging
import torch, transformers
from transformers import AutoModelForCausalLM
base_dir, out_dir = sys.argv[1], sys.argv[2]
log = io.StringIO()
transformers.logging.set_verbosity_warning()
handler = logging.StreamHandler(log)
transformers.logging.add_handler(handler)
with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    patched = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
meta = patched.config.headpatch
d = base.config.head_dim
def scale(coefs):
    def hook(module, args):
        x = args[0].clone()
        for head, c in coefs.items():
            x[..., head * d:(head + 1) * d] *= c
        return (x,)
    return hook
by_layer = {}
for key, value in meta["pear"]["coefficients"].items():
    layer, head = map(int, key.split("-"))
    by_layer.setdefault(layer, {})[head] = value
for layer, coefs in by_layer.items():
    base.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(scale(coefs))
ids = torch.randint(10, 40000, (2, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    diff = (patched(ids).logits - base(ids).logits).abs().max().item()
print(json.dumps({"diff": diff, "log": log.getvalue(), "meta_keys": sorted(meta),
                  "leaked": [m for m in ("headpatch", "peft") if m in sys.modules]}))
"""


def _trained(record, coefficients: dict[str, float]):
    """The record with these coefficients, as a training step would leave it."""
    return dataclasses.replace(record, pear=dataclasses.replace(record.pear, coefficients=coefficients))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smollm2_dir):
    loaded = load_model("smollm2-135m")
    record = _trained(given_heads_record(loaded, [tuple(map(int, h.split("-"))) for h in COEFFICIENTS]),
                      dict(COEFFICIENTS))
    out = tmp_path_factory.mktemp("export") / "smollm2-pear"
    export_step(loaded, record, out)
    return out


@pytest.mark.slow
def test_export_loads_in_plain_transformers_and_equals_runtime_scaling(exported, smollm2_dir):
    result = run_fresh(FRESH_CHECK, str(smollm2_dir), str(exported))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    assert report["diff"] <= 1e-4
    assert {"format_version", "headpatch_version", "base_model", "pear"} <= set(report["meta_keys"])
    for word in ("unexpected", "not used", "missing", "newly initialized", "UNEXPECTED", "MISSING"):
        assert word not in report["log"], report["log"]


@pytest.mark.slow
def test_only_patched_columns_change_and_by_the_coefficient(exported, smollm2_dir):
    base = load_file(smollm2_dir / "model.safetensors")
    patched = load_file(exported / "model.safetensors")
    assert base.keys() == patched.keys()
    changed = {f"model.layers.{int(h.split('-')[0])}.self_attn.o_proj.weight" for h in COEFFICIENTS}
    for name, tensor in base.items():
        assert patched[name].dtype == tensor.dtype and patched[name].shape == tensor.shape
        if name not in changed:
            assert torch.equal(patched[name].view(torch.uint8), tensor.view(torch.uint8)), name
    for key, value in COEFFICIENTS.items():
        layer, head = map(int, key.split("-"))
        name = f"model.layers.{layer}.self_attn.o_proj.weight"
        cols = slice(head * 64, (head + 1) * 64)
        expected = (base[name][:, cols].float() * value).to(base[name].dtype)
        assert torch.equal(patched[name][:, cols], expected)
        patched_heads = {int(k.split("-")[1]) for k in COEFFICIENTS if int(k.split("-")[0]) == layer}
        others = [c for c in range(576) if c // 64 not in patched_heads]
        assert torch.equal(patched[name][:, others], base[name][:, others])


@pytest.mark.slow
def test_export_carries_card_config_tokenizer_and_record(exported):
    files = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
            "headpatch.json"} <= files
    config = json.loads((exported / "config.json").read_text())
    assert config["headpatch"]["pear"]["coefficients"] == COEFFICIENTS
    assert config["headpatch"]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "quantization_config" not in config
    card = ModelCard.load(exported / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model_relation == "finetune"
    assert card.data.library_name == "transformers"
    assert {"headpatch", "pear"} <= set(card.data.tags)
    assert "| 17-3 |" in card.text and "AutoModelForCausalLM.from_pretrained" in card.text
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def _tiny_export(tmp_path, model_type, dtype, coefficients):
    model = tiny_model(model_type).to(dtype)
    source = tmp_path / "base"
    model.save_pretrained(source)
    loaded = load_model(str(source), dtype="auto")
    record = _trained(given_heads_record(loaded, list(coefficients)),
                      {f"{l}-{h}": c for (l, h), c in coefficients.items()})
    return source, export_step(loaded, record, tmp_path / "out")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_export_keeps_dtype_and_folds_conv1d_rows(tmp_path, dtype):
    source, out = _tiny_export(tmp_path, "gpt2", dtype, {(1, 2): 0.7, (2, 0): 1.3})
    base, patched = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    name = "transformer.h.1.attn.c_proj.weight"
    assert patched[name].dtype == dtype
    head_dim = 16
    rows = slice(2 * head_dim, 3 * head_dim)
    assert torch.equal(patched[name][rows], (base[name][rows].float() * 0.7).to(dtype))
    assert torch.equal(patched[name][:rows.start], base[name][:rows.start])
    assert torch.equal(patched["transformer.h.0.attn.c_proj.weight"], base["transformer.h.0.attn.c_proj.weight"])


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    model = tiny_model("llama")
    layout = head_layout(model.config)
    record = PatchRecord.from_json({
        "format_version": 1, "headpatch_version": "x", "source": "s", "base_model": "b",
        "architecture": to_plain(Architecture.of(layout)),
        "pear": {"heads": ["0-1"], "location": {"method": "given by the user", "k": 1}, "coefficients": {"0-1": 0.5}},
    })
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(HeadpatchError, match="not empty"):
        export_checkpoint(model, None, record, out)
    with pytest.raises(HeadpatchError, match="holds no headpatch.json from an earlier run"):
        export_checkpoint(model, None, record, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    export_checkpoint(model, None, record, out)
    (out / "stale.txt").write_text("added since")  # --overwrite replaces only what the earlier export wrote
    with pytest.raises(HeadpatchError, match=r"holds files no headpatch run wrote there \(stale.txt\)"):
        export_checkpoint(model, None, record, out, overwrite=True)
    assert (out / "stale.txt").read_text() == "added since"
    (out / "stale.txt").unlink()
    (out / "config.json").write_text("{}")  # a file the earlier export wrote is replaced
    export_checkpoint(model, None, record, out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)


def test_output_inside_the_source_is_refused(tmp_path):
    source, _ = _tiny_export(tmp_path, "llama", torch.float32, {(0, 0): 0.5})
    loaded = load_model(str(source))
    record = json.loads((tmp_path / "out" / "headpatch.json").read_text())
    before = sorted(p.name for p in source.iterdir())
    with pytest.raises(HeadpatchError, match="overlaps"):
        export_step(loaded, record, source / "nested")
    with pytest.raises(HeadpatchError, match="overlaps"):
        export_step(loaded, record, source, overwrite=True)
    assert sorted(p.name for p in source.iterdir()) == before


def test_a_patch_for_another_model_is_refused(tmp_path):
    _, out = _tiny_export(tmp_path, "llama", torch.float32, {(0, 0): 0.5})
    record = read_record(out / "headpatch.json")
    other = tiny_model("llama", num_attention_heads=8, head_dim=8)
    with pytest.raises(HeadpatchError, match="another model"):
        export_checkpoint(other, None, record, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_writes_the_stored_dtype_even_after_float32_training(tmp_path):
    tiny_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "base")
    loaded = load_model(str(tmp_path / "base"), dtype="float32")
    assert loaded.model.dtype == torch.float32
    record = _trained(given_heads_record(loaded, [(1, 1)]), {"1-1": 0.75})
    out = export_step(loaded, record, tmp_path / "out")
    tensors = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    base = load_file(tmp_path / "base" / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(tensors[name][:, 24:48], (base[name][:, 24:48].float() * 0.75).to(torch.bfloat16))
