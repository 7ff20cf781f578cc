"""`headpatch eval` and `headpatch export --eval` through the CLI app, on tiny models with the SmolLM2 tokenizer."""

import json

import pytest
from typer.testing import CliRunner

import headpatch.evaluation.run as evaluation_run
from headpatch.cli import app
from headpatch.io.files import write_record
from tests.test_eval_run import TINY_SETTINGS, _save
from tests.test_stream import make_record


@pytest.fixture
def tiny_settings(monkeypatch):
    """The quick setting of every task shrunk to seconds, so the CLI path runs end to end in a test."""
    monkeypatch.setattr(evaluation_run, "setting_for", lambda name, quick: TINY_SETTINGS[name])


def test_export_eval_writes_the_report_and_adds_the_table_to_the_card(smollm2, tmp_path, tiny_settings):
    from transformers import AutoConfig

    base = _save(tmp_path / "base", smollm2.tokenizer, 0)
    config = AutoConfig.from_pretrained(base)
    patch = write_record(make_record(config, {(0, 1): 1.5, (2, 3): 0.5}), tmp_path / "patch.json")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(base), "--patch", str(patch), "-o", str(out), "-q",
                                      "--eval", "quick"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "eval" / "results.json").read_text())
    assert list(results["models"]) == ["base", "patched"]
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "| task | metric | base | patched | change [95% CI] |" in card
    assert "eval/report.md" in card and (out / "eval" / "report.md").is_file()


def test_eval_command_is_registered_and_refuses_a_bad_setting(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["eval", "--help"]).exit_code == 0
    bad = runner.invoke(app, ["export", "m", "-o", str(tmp_path / "o"), "--eval", "medium"])
    assert bad.exit_code != 0 and "--eval takes quick or full" in str(bad.exception)
    assert not (tmp_path / "o").exists()
