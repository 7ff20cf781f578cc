"""`headpatch export --recipe`: the recipe's values reach the run, flags override them, --dry-run loads nothing."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import invoke
from tests.tiny import tiny_model

TINY_RECIPE = """
name: tiny-llama
model: {model}
dtype: float32
device: cpu
seed: 3
architecture:
  model_type: llama
  num_hidden_layers: 3
  num_attention_heads: 4
  num_key_value_heads: 2
  hidden_size: 64
  head_dim: 24
  intermediate_size: 128
  vocab_size: 300
  parameters_b: 0.0001
pear:
  k: 3
  settings: [[4, 8]]
train:
  steps: 2
  batch_size: 2
  n: 8
  lr: 0.01
  warmup_steps: 0
"""


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    source = tmp_path / "tiny-llama"
    tiny_model("llama").to(torch.float32).save_pretrained(source)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(model=source))
    return path


def test_a_recipe_runs_with_its_settings_and_flags_override_them(tiny_recipe, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", "--recipe", str(tiny_recipe), "-o", str(out), "-q", "--steps", "3")
    assert result.exit_code == 0, result.output
    pear = json.loads((out / "config.json").read_text())["headpatch"]["pear"]
    assert len(pear["heads"]) == 3 and pear["location"]["settings"] == [[4, 8]] and pear["location"]["seed"] == 3
    assert pear["training"]["steps"] == 3 and pear["training"]["batch_size"] == 2 and pear["training"]["lr"] == 0.01


def test_dry_run_prints_the_plan_and_loads_and_writes_nothing(tiny_recipe, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    result = invoke("export", "--recipe", str(tiny_recipe), "-o", str(tmp_path / "out"), "--dry-run", "--k", "5",
                    "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert "keep the top 5" in result.output and "dtype    bfloat16" in result.output
    assert "2. train" in result.output and "tune" not in result.output  # a forced K turns tuning off
    assert not (tmp_path / "out").exists()
    tuned = invoke("export", "--recipe", str(tiny_recipe), "-o", str(tmp_path / "out"), "--dry-run")
    assert "rank them for" in tuned.output and "2. tune    K from 5, 10, 12" in tuned.output


def test_tuning_a_model_without_a_tokenizer_is_one_line(tiny_recipe, tmp_path):
    result = invoke("export", "--recipe", str(tiny_recipe), "-o", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2
    assert "needs the model's tokenizer" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")))
def test_every_shipped_recipe_dry_runs(recipe, tmp_path):
    result = invoke("export", "--recipe", str(recipe), "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"recipe {recipe.stem} (dry run")


def test_recipe_errors_and_a_missing_model_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RECIPE.format(model="x").replace("  k: 3", "  kk: 3"))
    for args, words in [
        (["--recipe", str(bad)], "kk"),
        ([], "give the MODEL"),
        (["m", "--dry-run"], "--dry-run needs --recipe"),
    ]:
        result = invoke("export", *args, "-o", str(tmp_path / "out"))
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("headpatch: error: ") and words in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_flags_that_tuning_would_ignore_are_refused_before_any_work(tmp_path, tiny_recipe):
    missing = str(tmp_path / "no-such-model")  # a model that cannot load: the refusal comes before it is looked for
    for args, words in [
        ([missing, "--lr", "0.02"], "--lr sets fixed training"),
        ([missing, "--batch-size", "4"], "tune.batch_size"),
        ([missing, "--warmup-steps", "0"], "--warmup-steps"),
        (["--recipe", str(tiny_recipe), "--n", "8"], "tune.n from a recipe"),
        ([missing, "--k", "3", "--ladder", "5,10"], "--ladder chooses K by tuning"),
    ]:
        result = invoke("export", *args, "-o", str(tmp_path / "out"))
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("headpatch: error: ") and words in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # with K fixed the same flags train, and a model that cannot load is the error that stops the run
    result = invoke("export", missing, "--k", "3", "--lr", "0.02", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "fixed training" not in result.stderr and "no-such-model" in result.stderr
