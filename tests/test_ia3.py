import json

import pytest
import torch

from headpatch.architectures import head_layout
from headpatch.pear.fold import fold_model
from headpatch.pear.ia3 import save_ia3_adapter
from tests.conftest import run_fresh
from tests.tiny import tiny_model

# Stock peft, no headpatch: load the adapter onto the base model, merge, and dump the projection weights.
MERGE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
torch.save({k: v for k, v in merged.state_dict().items()}, out)
assert "headpatch" not in sys.modules
"""


def _check_merge_equals_fold(model, base_dir, coefficients, tmp_path):
    layout = head_layout(model.config)
    adapter = save_ia3_adapter(layout, coefficients, tmp_path / "adapter", str(base_dir))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3"
    assert sorted(config["target_modules"]) == sorted(config["feedforward_modules"])
    assert sorted(config["target_modules"]) == sorted({layout.o_proj_name(l) for l, _ in coefficients})
    result = run_fresh(MERGE, str(base_dir), str(adapter), str(tmp_path / "merged.pt"))
    assert result.returncode == 0, result.stderr
    merged = torch.load(tmp_path / "merged.pt")
    fold_model(model, layout, coefficients)
    folded = model.state_dict()
    for name, tensor in folded.items():
        assert torch.equal(merged[name], tensor), name


@pytest.mark.slow  # a fresh process with stock peft
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_ia3_merge_equals_fold_on_tiny_models(tmp_path, model_type):
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / "base")
    _check_merge_equals_fold(model, tmp_path / "base", {(0, 1): 0.4, (2, 3): 1.5, (2, 1): 0.9}, tmp_path)


@pytest.mark.slow
def test_ia3_merge_equals_fold_on_smollm2(tmp_path, smollm2_dir):
    from headpatch.loading import load_model

    model = load_model(str(smollm2_dir)).model
    _check_merge_equals_fold(model, smollm2_dir, {(17, 3): 0.8, (24, 4): 0.7, (17, 5): 1.1}, tmp_path)
