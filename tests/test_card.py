"""The exported card keeps the base model's terms: license files travel with the weights (Hub sources too, through
an offline cache laid out like the real one), and the card's front matter keeps license, language and pipeline tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from headpatch.io.card import BaseCard, read_base_card
from headpatch.io.hub import SMALL_FILES
from tests.conftest import invoke
from tests.test_hub import _fake_cache
from tests.test_stream import make_source, record_json

BASE_CARD = """---
license: other
license_name: llama3.1
license_link: https://llama.meta.com/llama3_1/license
language:
- en
- de
pipeline_tag: text-generation
tags:
- facebook
---

# The base model
"""


def _patch(tmp_path: Path, config) -> Path:
    path = tmp_path / "patch.json"
    path.write_text(json.dumps(record_json(config, {(0, 1): 0.5})), encoding="utf-8")
    return path


def _licensed_source(tmp_path: Path, sharded: bool = False):
    source, model = make_source(tmp_path, "llama", torch.float32, sharded)
    (source / "README.md").write_text(BASE_CARD, encoding="utf-8")
    (source / "LICENSE").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT", encoding="utf-8")
    (source / "USE_POLICY.md").write_text("Acceptable use policy", encoding="utf-8")
    return source, model


def _card(out: Path) -> dict:
    return ModelCard.load(out / "README.md").data.to_dict()


def test_a_local_export_carries_the_license_files_and_the_card_keeps_the_terms(tmp_path):
    source, model = _licensed_source(tmp_path)
    out = tmp_path / "out"
    result = invoke("export", str(source), "--patch", str(_patch(tmp_path, model.config)), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    assert (out / "LICENSE").read_text(encoding="utf-8").startswith("LLAMA 3.1")
    assert (out / "USE_POLICY.md").is_file() and "license" not in result.stderr
    card = _card(out)
    assert (card["license"], card["license_name"], card["license_link"]) == (
        "other", "llama3.1", "https://llama.meta.com/llama3_1/license")
    assert card["language"] == ["en", "de"] and card["pipeline_tag"] == "text-generation"
    assert "headpatch" in card["tags"] and "facebook" not in card["tags"]
    assert "# The base model" not in (out / "README.md").read_text(encoding="utf-8")  # headpatch's own card


def test_a_hub_source_fetches_and_carries_its_license_offline(tmp_path):
    source, model = _licensed_source(tmp_path, sharded=True)
    _fake_cache(tmp_path / "hub", "meta-llama/tiny", source)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "out"
    result = invoke("export", "meta-llama/tiny", "--patch", str(_patch(tmp_path, model.config)), "-o", str(out), "-q",
                    env=env)
    assert result.exit_code == 0, result.stderr
    assert (out / "LICENSE").is_file() and (out / "USE_POLICY.md").is_file()
    assert _card(out)["license"] == "other" and _card(out)["license_name"] == "llama3.1"
    # what a download fetches: the license and the card are on the allow-list
    assert {"LICENSE*", "USE_POLICY*", "NOTICE*", "README.md"} <= set(SMALL_FILES)


def test_a_base_without_a_license_is_warned_about_and_the_card_names_none(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    result = invoke("export", str(source), "--patch", str(_patch(tmp_path, model.config)), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    assert "the base model's license is not known" in result.stderr and "no README.md" in result.stderr
    assert "license" not in _card(out)


def test_a_malformed_or_hostile_base_card_is_read_as_no_card(tmp_path):
    for text, problem in [("no front matter", "no front matter"), ("---\n[unclosed\n---\n", "not readable YAML"),
                          ("---\n- a list\n---\n", "not readable YAML"), ("---\na: &x 1\nb: *x\n---\n", None)]:
        (tmp_path / "README.md").write_text(text, encoding="utf-8")
        card = read_base_card(tmp_path)
        assert card.license is None and (problem is None or problem in card.problem)
    (tmp_path / "README.md").write_text("---\nlicense: [1, 2]\nlanguage: 5\npipeline_tag: text-generation\n---\n",
                                        encoding="utf-8")
    assert read_base_card(tmp_path) == BaseCard(pipeline_tag="text-generation")


def test_exports_with_qr_heads_are_tagged_as_rerankers():
    from headpatch.io.card import render_card
    from headpatch.record import PatchRecord

    record = PatchRecord.from_text((Path(__file__).parent / "data" / "records_v1" / "patch-qrhead.json").read_text(
        encoding="utf-8"))
    tags = ModelCard(render_card(record)).data.to_dict()["tags"]
    assert {"qrhead", "retrieval-heads", "reranker"} <= set(tags)


def _results(patched: float) -> dict:
    """A minimal `headpatch eval` results.json: one compared task row with its paired statistics."""
    paired = {"items": 300, "change": patched - 0.6, "low": 0.01, "high": 0.09, "p_value": 0.01, "better": 20,
              "worse": 5, "detectable": 0.04, "higher_is_better": True, "verdict": "better"}
    return {"models": {"base": {"name": "tiny/base"}, "patched": {"name": "out"}},
            "run": {"quick": False, "seed": 0, "dtype": "float32", "device": "cpu", "settings_replaced": []},
            "tasks": {"mdqa": {"models": {}}},
            "summary": [{"task": "mdqa", "metric": "accuracy, mean over positions", "values": {"base": 0.6,
                         "patched": patched}, "higher_is_better": True, "relative": False, "change": patched - 0.6,
                         "paired": paired}]}


def _export_and_report_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A licensed tiny export in tmp_path/out and an empty report directory beside it."""
    source, model = _licensed_source(tmp_path)
    out, report = tmp_path / "out", tmp_path / "report"
    assert invoke("export", str(source), "--patch", str(_patch(tmp_path, model.config)), "-o", str(out),
                  "-q").exit_code == 0
    report.mkdir()
    return out, report


def test_a_later_evaluation_goes_into_the_card_and_its_model_index(tmp_path):
    out, report = _export_and_report_dirs(tmp_path)
    for patched in (0.65, 0.7):  # a second evaluation replaces the first, in the text and in the model-index
        (report / "results.json").write_text(json.dumps(_results(patched)), encoding="utf-8")
        result = invoke("card", str(out), "--eval", str(report))
        assert result.exit_code == 0, result.stderr
    card = ModelCard.load(out / "README.md")
    found = {(r.dataset_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert found == {("headpatch-mdqa", "accuracy, mean over positions"): 0.7,
                     ("headpatch-mdqa", "accuracy, mean over positions (base)"): 0.6}
    assert card.data.license == "other" and card.data.model_name == "out"
    assert card.text.count("## Evaluation") == 1 and "[../report/report.md](../report/report.md)" in card.text
    assert "+0.100 [+0.010, +0.090]" in card.text and "## How to load it" in card.text


def test_a_report_that_is_not_a_headpatch_eval_report_is_one_line(tmp_path):
    out, report = _export_and_report_dirs(tmp_path)
    before = (out / "README.md").read_bytes()
    for text in ('{"summary": 5}', "[]", "{"):
        (report / "results.json").write_text(text, encoding="utf-8")
        result = invoke("card", str(out), "--eval", str(report))
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert (out / "README.md").read_bytes() == before


def test_a_report_goes_only_into_the_export_it_evaluated(tmp_path):
    from headpatch.evaluation.models import folder_weights_hash

    out, report = _export_and_report_dirs(tmp_path)
    results = _results(0.7)
    for folder, weights, words in [
        (tmp_path / "llama-source", None, "is not a headpatch export"),  # the base checkpoint itself
        (out, "0" * 64, "evaluated other weights"),
    ]:
        results["models"]["patched"]["weights"] = {"sha256": weights}
        (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
        before = (folder / "README.md").read_bytes()
        result = invoke("card", str(folder), "--eval", str(report))
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert (folder / "README.md").read_bytes() == before
    results["models"]["patched"]["weights"] = folder_weights_hash(out)
    (report / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert invoke("card", str(out), "--eval", str(report)).exit_code == 0


def test_the_card_names_the_command_without_local_paths_and_the_push_repo_in_its_snippet(tmp_path, monkeypatch):
    from headpatch.io.card import public_command

    source, model = _licensed_source(tmp_path)
    patch, out = _patch(tmp_path, model.config), tmp_path / "alice-home" / "out"
    result = invoke("export", str(source), "--patch", str(patch), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "Made by `headpatch export llama-source --patch patch.json -o out -q` with headpatch " in text
    assert str(tmp_path) not in text and "transformers " in text
    assert 'from_pretrained("out")' in text
    assert public_command(["export", "me/model", "--ia3=/home/alice/adapter", "--k", "20"]) == \
        "headpatch export me/model --ia3=adapter --k 20"

    import headpatch.io.hub as hub  # a push: the snippet names the repo, not the folder

    monkeypatch.setattr(hub, "push_folder", lambda folder, options: "https://huggingface.co/me/pear/commit/1")
    result = invoke("export", str(source), "--patch", str(patch), "-o", str(tmp_path / "pushed"), "-q",
                    "--push-to-hub", "me/pear")
    assert result.exit_code == 0, result.stderr
    assert 'from_pretrained("me/pear")' in (tmp_path / "pushed" / "README.md").read_text(encoding="utf-8")


def test_the_demo_gguf_records_its_license_for_the_converted_checkpoint():
    from headpatch.loading import demo_gguf_path, gguf_card

    assert gguf_card(demo_gguf_path("smollm2-135m")) == "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n"


@pytest.mark.slow  # converts the demo GGUF (once; cached afterwards)
def test_the_demo_export_keeps_the_gguf_license():
    from headpatch.loading import resolve_source

    assert read_base_card(Path(resolve_source("smollm2-135m").location)).license == "apache-2.0"
