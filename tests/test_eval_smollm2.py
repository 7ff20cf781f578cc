"""A quick evaluation of the real SmolLM2 against a patched copy of it: the tasks measure something real."""

from __future__ import annotations

import pytest

from headpatch.architectures import head_layout
from headpatch.evaluation import run_eval, summary_markdown
from headpatch.evaluation.tasks.niah import NiahSetting
from headpatch.heads import parse_head
from headpatch.loading import load_model
from headpatch.pear.fold import fold_model
from headpatch.pipeline import record_for
from headpatch.record import Location, Pear

# the default export's coefficients (README), so the test needs no location or training run
COEFFICIENTS = {"14-3": 0.899, "17-3": 1.142, "17-5": 0.920, "18-6": 1.135, "18-7": 1.143, "20-2": 0.878,
                "20-6": 1.140, "22-1": 1.143, "24-4": 0.856, "8-0": 1.120}


@pytest.fixture(scope="module")
def patched_dir(smollm2, tmp_path_factory):
    loaded = load_model("smollm2-135m")  # a copy of its own: folding changes the weights in place
    fold_model(loaded.model, head_layout(loaded.model.config), {parse_head(h): c for h, c in COEFFICIENTS.items()})
    pear = Pear(heads=tuple(COEFFICIENTS), location=Location(method="given by the user", k=len(COEFFICIENTS)),
                coefficients=COEFFICIENTS)
    loaded.model.config.headpatch = record_for(loaded, pear).to_json()
    out = tmp_path_factory.mktemp("smollm2-patched")
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_quick_eval_of_smollm2_base_against_patched(patched_dir):
    niah = NiahSetting(lengths=(256,), depths=(0.0, 0.5, 1.0), needles=4, max_new_tokens=32, batch_tokens=4096)
    results = run_eval(str(patched_dir), tasks="copy,niah,retrieval", quick=True, settings={"niah": niah},
                       show_progress=False)
    assert results["comparison"]["name"] == "smollm2-135m" and list(results["models"]) == ["base", "patched"]
    copy = {role: r["mean"] for role, r in results["tasks"]["copy"]["models"].items()}
    assert 0.3 < copy["base"] < 0.9
    assert copy["patched"] > copy["base"]  # the patch's own objective, on sequences it was never trained on
    for role, result in results["tasks"]["niah"]["models"].items():
        # a 256-token haystack is easy: the prompt, template and decoding must let SmolLM2 find the needles
        assert result["mean"] >= 0.5, (role, result["answers"])
        assert any(answer["score"] == 1.0 for answer in result["answers"])
    assert "skipped" in results["tasks"]["retrieval"]
    assert "| niah | keyword score, mean over the grid |" in summary_markdown(results)
