"""Bad input on the command line is one `headpatch: error:` line and exit 2, refused before any model work, with the
source untouched and nothing written: outputs on or in the source, existing outputs, mistyped flags, non-finite
rates, bad repo ids, configs transformers cannot build, sources the export cannot fold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import invoke
from tests.test_safety import _patch, _tree
from tests.test_stream import make_source
from tests.tiny import tiny_model

QUICK_TRAIN = ["--steps", "1", "--batch-size", "2", "--n", "6", "-q"]


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "model"
    tiny_model("llama").save_pretrained(path)
    return path


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headpatch: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", [
    ["locate", "--k", "2", "--settings", "4x6", "-q"],
    ["train", "--heads", "0-1", *QUICK_TRAIN],
    ["tune", "-q"],
    ["qrhead", "detect", "--k", "2", "-q"],
])
def test_a_record_is_never_written_over_a_source_file(tiny_dir, command):
    before = _tree(tiny_dir)
    name, *flags = command if command[0] != "qrhead" else [" ".join(command[:2]), *command[2:]]
    for target in ("config.json", "model.safetensors", "new.json"):
        result = invoke(*name.split(), str(tiny_dir), "-o", str(tiny_dir / target), "--overwrite", *flags)
        _refused(result, "lies inside the source checkpoint")
    assert _tree(tiny_dir) == before


def test_an_existing_record_is_replaced_only_with_overwrite(tiny_dir, tmp_path):
    out = tmp_path / "heads.json"
    out.write_text("keep", encoding="utf-8")
    args = ["locate", str(tiny_dir), "-o", str(out), "--k", "2", "--settings", "4x6", "-q"]
    _refused(invoke(*args), "exists; pass --overwrite")
    assert out.read_text(encoding="utf-8") == "keep"
    _refused(invoke("locate", str(tiny_dir), "-o", str(tmp_path), "-q"), "is a directory")
    assert invoke(*args, "--overwrite").exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["pear"]["heads"]


def test_qrhead_yaml_output_is_checked_before_detection(tiny_dir, tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    heads = tmp_path / "heads.json"
    for yaml_out, words in [(tmp_path / "file" / "x.yaml", "is not a directory"),
                            (tiny_dir / "heads.yaml", "inside the source"), (heads, "overlap")]:
        result = invoke("qrhead", "detect", str(tiny_dir), "-o", str(heads), "--yaml", str(yaml_out), "-q")
        _refused(result, words)
        assert not heads.exists()


def test_train_refuses_an_adapter_inside_the_source_before_training(tiny_dir, tmp_path):
    patch = tmp_path / "patch.json"
    result = invoke("train", str(tiny_dir), "--heads", "0-1", "-o", str(patch), "--ia3", str(tiny_dir / "adapter"),
                    *QUICK_TRAIN)
    _refused(result, "overlaps")
    assert not patch.exists() and not (tiny_dir / "adapter").exists()


@pytest.mark.parametrize("args, words", [
    (["export", "m", "-o", "out", "--k", "abc"], "Invalid value for '--k'"),
    (["export", "m", "-o", "out", "--bogus"], "No such option: --bogus"),
    (["locate"], "Missing argument"),
    (["qrhead", "detect", "m", "-o", "x", "--k", "1.5"], "headpatch qrhead detect --help"),
])
def test_a_mistyped_command_line_is_one_line(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(invoke(*args), words)
    assert not any(tmp_path.iterdir())


def test_headpatch_alone_still_prints_its_help():
    result = invoke()
    assert result.exit_code == 2 and "Usage" in result.output and "export" in result.output


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "0"])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(tiny_dir, tmp_path, rate):
    patch = tmp_path / "patch.json"
    _refused(invoke("train", str(tiny_dir), "--heads", "0-1", "-o", str(patch), *QUICK_TRAIN, "--lr", rate),
             "positive, finite learning rate")
    assert not patch.exists()


def test_a_bad_repo_id_is_refused_before_the_export(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    for bad in ("bad id", "a/b/c"):
        result = invoke("export", str(source), "--patch", str(_patch(tmp_path, model.config)), "-o", str(out), "-q",
                        "--push-to-hub", bad)
        _refused(result, "is not a Hub repo id")
        assert not out.exists()
    _refused(invoke("push", str(source), "bad id"), "is not a Hub repo id")


def test_a_report_never_goes_into_a_model_it_reads(tiny_dir, tmp_path):
    before = _tree(tiny_dir)
    for args in (["eval", str(tiny_dir)], ["eval", "smollm2-135m", "--against", str(tiny_dir)]):
        _refused(invoke(*args, "-o", str(tiny_dir / "report"), "--tasks", "ppl", "--quick", "-q"), "overlaps")
    assert _tree(tiny_dir) == before


@pytest.mark.parametrize("field, value", [("num_attention_heads", 0), ("hidden_size", float("nan"))])
def test_a_config_transformers_cannot_build_is_one_line(tmp_path, field, value):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch = _patch(tmp_path, model.config)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config[field] = value
    (source / "config.json").write_text(json.dumps(config), encoding="utf-8")
    before, out = _tree(source), tmp_path / "out"
    _refused(invoke("export", str(source), "--patch", str(patch), "-o", str(out), "-q"), "cannot read the config")
    assert _tree(source) == before and not out.exists()


def test_a_source_without_safetensors_weights_is_refused_before_training_and_leaves_no_adapter(tmp_path):
    from safetensors.torch import load_file

    source = tmp_path / "bin-only"
    tiny_model("llama").save_pretrained(source)
    torch.save(load_file(source / "model.safetensors"), source / "pytorch_model.bin")
    (source / "model.safetensors").unlink()
    before, out, adapter = _tree(source), tmp_path / "out", tmp_path / "adapter"
    result = invoke("export", str(source), "--heads", "0-1", "-o", str(out), "--ia3", str(adapter),
                    *QUICK_TRAIN)
    _refused(result, "no safetensors weights")
    assert _tree(source) == before and not out.exists() and not adapter.exists()


def test_an_export_that_fails_after_training_leaves_no_adapter(tmp_path, monkeypatch):
    import headpatch.pipeline as pipeline
    from headpatch.errors import HeadpatchError

    def failing(*args, **kwargs):
        raise HeadpatchError("the fold failed")

    monkeypatch.setattr(pipeline, "export_step", failing)
    source = tmp_path / "model"
    tiny_model("llama").save_pretrained(source)
    out, adapter = tmp_path / "out", tmp_path / "adapter"
    result = invoke("export", str(source), "--heads", "0-1", "-o", str(out), "--ia3", str(adapter), *QUICK_TRAIN)
    _refused(result, "the fold failed")
    assert not out.exists() and not adapter.exists()


def test_the_refusals_leave_a_source_path_argument_alone(tmp_path):
    """A path that only looks like a file output of the source (same name, another directory) is fine."""
    source = tmp_path / "model"
    tiny_model("llama").save_pretrained(source)
    out = tmp_path / "elsewhere" / "config.json"
    result = invoke("locate", str(source), "-o", str(out), "--k", "2", "--settings", "4x6", "-q")
    assert result.exit_code == 0, result.stderr
    assert Path(out).is_file()


def test_a_report_never_goes_into_the_model_an_export_names_as_its_source(tmp_path, monkeypatch):
    source, _ = make_source(tmp_path, "llama", torch.float32, False)
    monkeypatch.chdir(tmp_path)  # the record names a local source by its directory name, found from here
    out = tmp_path / "out"
    assert invoke("export", str(source), "--heads", "0-1", "-o", str(out), *QUICK_TRAIN).exit_code == 0
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["headpatch"]["source"] == source.name
    before = _tree(source)
    # no --against: the comparison is the source its config.json names
    _refused(invoke("eval", str(out), "-o", str(source / "report"), "--tasks", "ppl", "--quick", "-q"), "overlaps")
    assert _tree(source) == before


def test_two_outputs_of_one_command_may_not_overlap(tiny_dir, tmp_path):
    cases = [
        (["train", str(tiny_dir), "--heads", "0-1", "-o", str(tmp_path / "same"), "--ia3", str(tmp_path / "same"),
          *QUICK_TRAIN], "overlap"),
        (["train", str(tiny_dir), "--heads", "0-1", "-o", str(tmp_path / "ad" / "p.json"), "--ia3",
          str(tmp_path / "ad"), *QUICK_TRAIN], "overlap"),
        (["qrhead", "detect", str(tiny_dir), "-o", str(tmp_path / "qy" / "h.json"), "--yaml", str(tmp_path / "qy"),
          "-q"], "overlap"),
        (["qrhead", "detect", str(tiny_dir), "-o", str(tmp_path / "qz"), "--yaml", str(tmp_path / "qz" / "x.yaml"),
          "-q"], "overlap"),
    ]
    for args, words in cases:
        _refused(invoke(*args), words)
    assert not any(tmp_path.glob("same")) and not any(tmp_path.glob("ad")) and not any(tmp_path.glob("q*"))


def test_rerank_refuses_deeply_nested_passages_and_a_top_k_below_one(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    _refused(invoke("rerank", str(tmp_path), "--query", "q", "--docs", str(deep)), "line 1: not valid JSON")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('"a passage"\n', encoding="utf-8")
    _refused(invoke("rerank", str(tmp_path), "--query", "q", "--docs", str(docs), "--top-k", "-1"),
             "--top-k must be at least 1")


def test_negative_warmup_and_k_beside_given_heads_are_refused(tiny_dir, tmp_path):
    patch = tmp_path / "patch.json"
    _refused(invoke("train", str(tiny_dir), "--heads", "0-1", "-o", str(patch), *QUICK_TRAIN, "--warmup-steps", "-5"),
             "warm-up steps >= 0")
    _refused(invoke("export", str(tiny_dir), "--heads", "0-1", "--k", "999", "-o", str(tmp_path / "out"),
                    *QUICK_TRAIN), "with --heads or --patch the heads are given")
    assert not patch.exists() and not (tmp_path / "out").exists()
