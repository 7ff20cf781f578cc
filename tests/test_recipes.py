"""Recipes: every file in recipes/ loads and fits its model, each kind of mistake gets its one-line error, the plan."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from headpatch.cli.pear import export
from headpatch.errors import HeadpatchError
from headpatch.options import EXPORT_FLAGS, ExportJob, parse_ladder, parse_settings, settings_text, with_flags
from headpatch.plan import format_plan
from headpatch.recipe import Recipe, load_recipe, recipe_layout
from headpatch.typed import file_fields

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
REQUIRED = {
    "smollm2-135m-instruct", "llama-2-7b-chat", "llama-3.1-8b-instruct", "llama-3.2-1b-instruct",
    "llama-3.2-3b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.3", "qwen3-4b", "gemma-2-2b-it",
    "phi-3-mini-4k-instruct",
}
# The published lists as DESIGN.md gives them, to catch a transcription slip in the recipes.
PUBLISHED_QRHEADS = {
    "llama-3.1-8b-instruct": "14-22,13-16,14-28,14-31,16-19,14-1,16-26,17-24,"
                             "14-0,13-0,16-25,13-12,13-1,13-10,17-27,20-14",
    "qwen2.5-7b-instruct": "16-19,16-2,16-20,16-14,16-0,15-24,16-18,17-18,"
                           "16-1,19-18,19-19,18-16,16-17,19-25,19-17,20-21",
    "llama-3.2-3b-instruct": "13-16,12-12,13-23,13-21,15-18,12-3,21-20,12-1,"
                             "13-2,13-1,12-6,12-11,13-0,15-22,18-19,18-11",
    "llama-3.2-1b-instruct": "8-21,8-14,7-22,6-31,8-28,10-26,10-0,5-5,8-3,6-30,8-0,7-26,7-25,7-23,11-4,8-20",
}
PUBLISHED_PEAR = {"llama-2-7b-chat": "26-28,11-6,14-15,30-9,18-9"}

ARCHITECTURE = {
    "model_type": "llama", "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
    "hidden_size": 64, "intermediate_size": 128, "vocab_size": 300, "parameters_b": 0.001,
}


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _minimal(**extra: typing.Any) -> dict:
    return {"name": "tiny", "model": "some/model", "architecture": dict(ARCHITECTURE), **extra}


def _export_defaults() -> dict[str, typing.Any]:
    """Default of every job option of `headpatch export`, read from the command's signature."""
    defaults = {}
    for name, parameter in inspect.signature(export).parameters.items():
        # --k and --steps default to None, "not forced": the job keeps its tuning and its own K and steps
        if name in EXPORT_FLAGS and parameter.default not in (inspect.Parameter.empty, ..., None):
            defaults[name] = parameter.default
    defaults["settings"] = parse_settings(defaults["settings"])
    defaults["ladder"] = parse_ladder(defaults["ladder"])
    return defaults


def test_the_required_recipes_exist():
    assert REQUIRED <= {path.stem for path in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_recipe_loads_and_fits_its_model(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    layout = recipe_layout(recipe)
    assert 1 <= recipe.pear.k <= layout.total_heads
    if recipe.architecture.parameters_b >= 1:
        assert (recipe.dtype, recipe.device) == ("bfloat16", "auto")
    # the architecture facts describe the real model: built on the meta device it has the published size
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(recipe.architecture.config())
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters / 1e9 == pytest.approx(recipe.architecture.parameters_b, rel=0.01)
    verified = {"smollm2-135m-instruct", "gemma-3-270m"}  # the demo recipes, run end to end here
    verified_note = "only smollm2-135m-instruct.yaml and gemma-3-270m.yaml were verified"
    assert path.stem in verified or verified_note in path.read_text()


@pytest.mark.parametrize("name", sorted(PUBLISHED_QRHEADS))
def test_published_qrhead_lists_are_the_design_ones(name):
    published = load_recipe(RECIPES_DIR / f"{name}.yaml").published
    assert ",".join(published.qrhead_heads.heads) == PUBLISHED_QRHEADS[name]
    assert "2506.09944" in published.qrhead_heads.source


def test_published_pear_heads_of_llama_2():
    published = load_recipe(RECIPES_DIR / "llama-2-7b-chat.yaml").published
    assert ",".join(published.pear_heads.heads) == PUBLISHED_PEAR["llama-2-7b-chat"]
    assert "2409.19745" in published.pear_heads.source


def test_cli_defaults_are_the_option_defaults():
    assert with_flags(ExportJob(), _export_defaults()) == ExportJob()


def _readme_ladder() -> tuple[int, ...]:
    """The ladder of the README's first command, the CPU demo."""
    command = re.findall(r"```bash\n(.*?)\n```", (RECIPES_DIR.parent / "README.md").read_text(), flags=re.S)[0]
    return parse_ladder(re.search(r"--ladder (\S+)", command).group(1))


@pytest.mark.parametrize("recipe,alias,flags", [("smollm2-135m-instruct", "smollm2-135m", {"ladder": _readme_ladder()}),
                                                ("gemma-3-270m", "gemma3-270m", {})])
def test_the_demo_recipes_are_the_readme_demos(recipe, alias, flags):
    job = load_recipe(RECIPES_DIR / f"{recipe}.yaml").job()
    assert job == with_flags(ExportJob(), {**_export_defaults(), "model": alias, **flags})


def test_defaults_of_an_empty_recipe_are_the_cli_defaults(tmp_path):
    job = load_recipe(_write(tmp_path, _minimal())).job()
    assert job == with_flags(ExportJob(), {**_export_defaults(), "model": "some/model"})


def test_settings_round_trip():
    settings = ((20, 50), (40, 25))
    assert parse_settings(settings_text(settings)) == settings
    with pytest.raises(HeadpatchError, match="malformed settings"):
        parse_settings("20x50,40")


def test_published_heads_become_the_heads_option(tmp_path):
    published = {"pear_heads": {"heads": ["3-1", "0-7"], "source": "a paper"}}
    recipe = load_recipe(_write(tmp_path, _minimal(published=published, pear={"use_published_heads": True})))
    assert recipe.job().heads == "3-1,0-7"
    recipe = load_recipe(_write(tmp_path, _minimal(published=published)))
    assert recipe.job().heads is None


def test_qrhead_data_path_is_read_from_the_recipe_folder(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    recipe = load_recipe(_write(tmp_path, _minimal(qrhead={"data": "data.json", "k": 4})))
    assert recipe.qrhead.data == str((tmp_path / "data.json").resolve())
    assert recipe.job().qrhead.k == 4


def test_numbers_yaml_reads_as_strings_are_accepted(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-3, with no dot, as a string
    text = yaml.safe_dump(_minimal(), sort_keys=False) + "train:\n  lr: 5e-3\n"
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.train.lr == 0.005


def _mutated(section: str | None, key: str, value: typing.Any) -> dict:
    data = _minimal()
    target = data if section is None else data.setdefault(section, {})
    target[key] = value
    return data


def _without(section: str, key: str) -> dict:
    data = _minimal()
    del data[section][key]
    return data


ERRORS = [  # (what is wrong, the recipe, the message it must get)
    ("unknown top-level key", _mutated(None, "modle", "x"),
     r"unknown key 'modle' at the top level; did you mean 'model'\?"),
    ("unknown section key", _mutated("train", "stpes", 3),
     r"unknown key 'stpes' in section 'train'; did you mean 'steps'\?"),
    ("unknown nested key", _mutated("published", "qrhead_heads", {"heads": ["1-1"], "sauce": "x"}),
     r"unknown key 'sauce' in section 'published.qrhead_heads'; did you mean 'source'\?"),
    ("unknown key, nothing close", _mutated("export", "zzz", 1),
     r"unknown key 'zzz' in section 'export'; valid keys: push_to_hub, private"),
    ("missing key", {"name": "t", "architecture": ARCHITECTURE}, r"missing key 'model' at the top level"),
    ("missing architecture fact", _without("architecture", "hidden_size"),
     r"missing key 'hidden_size' in section 'architecture'"),
    ("required fact given null", _mutated("architecture", "hidden_size", None),
     r"architecture\.hidden_size must be an integer, got None"),
    ("int given a string", _mutated("train", "steps", "sixty"), r"train\.steps must be an integer, got 'sixty'"),
    ("int given a bool", _mutated("pear", "k", True), r"pear\.k must be an integer, got True"),
    ("int given a float", _mutated("train", "n", 50.5), r"train\.n must be an integer, got 50\.5"),
    ("float given text", _mutated("train", "lr", "fast"), r"train\.lr must be a number, got 'fast'"),
    ("bool given a string", _mutated("export", "private", "yes please"),
     r"export\.private must be true or false, got 'yes please'"),
    ("optional given a list", _mutated("qrhead", "k", [16]), r"qrhead\.k must be an integer or null, got \[16\]"),
    ("section given a scalar", _mutated(None, "pear", 10), r"pear must be a mapping of keys, got 10"),
    ("settings not pairs", _mutated("pear", "settings", [[20, 50], [40]]),
     r"pear\.settings must be a list of \[integer, integer\] pairs, got \[\[20, 50\], \[40\]\]"),
    ("heads not a list", _mutated("published", "pear_heads", {"heads": "1-1,2-2", "source": "x"}),
     r"published\.pear_heads\.heads must be a list of strings, got '1-1,2-2'"),
    ("bad dtype", _mutated(None, "dtype", "fp16"),
     r"dtype must be one of auto, float32, bfloat16, float16; got 'fp16'"),
    ("bad mean vector", _mutated("pear", "mean_vector", "avg"),
     r"pear\.mean_vector must be one of batch, sequence; got 'avg'"),
    ("bad propagation", _mutated("pear", "propagation", "path"),
     r"pear\.propagation must be one of direct, total; got 'path'"),
    ("unsupported model type", _mutated("architecture", "model_type", "bloom"),
     r"architecture\.model_type must be one of .*llama.*; got 'bloom'"),
    ("bad device", _mutated(None, "device", "gpu"), r"device must be 'auto' or a torch device"),
    ("zero layers", _mutated("architecture", "num_hidden_layers", 0),
     r"architecture\.num_hidden_layers must be at least 1, got 0"),
    ("kv heads do not divide", _mutated("architecture", "num_key_value_heads", 3),
     r"num_attention_heads \(8\) is not a multiple of num_key_value_heads \(3\)"),
    ("k too large", _mutated("pear", "k", 33), r"pear\.k=33 is out of range: the architecture has 32 heads"),
    ("qrhead k too large", _mutated("qrhead", "k", 40), r"qrhead\.k=40 is out of range"),
    ("bad setting value", _mutated("pear", "settings", [[20, 1]]),
     r"pear: setting \(20, 1\) needs .* n >= 2"),
    ("bad training value", _mutated("train", "lr", -1), r"train: training needs .* positive, finite learning rate"),
    ("published head outside", _mutated("published", "qrhead_heads", {"heads": ["3-7", "4-0"], "source": "x"}),
     r"published\.qrhead_heads\.heads: head 4-0 is outside the model \(4 layers x 8 heads, 0-indexed\)"),
    ("published head malformed", _mutated("published", "pear_heads", {"heads": ["3:7"], "source": "x"}),
     r"published\.pear_heads\.heads: malformed head id '3:7'"),
    ("published head repeated", _mutated("published", "pear_heads", {"heads": ["1-1", "1-1"], "source": "x"}),
     r"published\.pear_heads\.heads: duplicate head ids"),
    ("published heads empty", _mutated("published", "pear_heads", {"heads": [], "source": "x"}),
     r"published\.pear_heads\.heads: the list is empty"),
    ("published heads wanted but absent", _mutated("pear", "use_published_heads", True),
     r"pear\.use_published_heads is true but the recipe has no published\.pear_heads"),
    ("missing qrhead data", _mutated("qrhead", "data", "nowhere.json"),
     r"qrhead\.data 'nowhere\.json' is neither 'builtin' nor a file"),
    ("yaml syntax", "name: t\nmodel: [m\n", r"YAML syntax error at line \d+, column \d+"),
    ("duplicate key", "name: t\nmodel: m\nname: u\n",
     r"YAML syntax error at line 3, column 1: key 'name' appears twice"),
    ("empty file", "", r"the recipe is empty"),
    ("not a mapping", "- a\n- b\n", r"a recipe is a mapping of keys"),
]


@pytest.mark.parametrize("data,message", [error[1:] for error in ERRORS], ids=[error[0] for error in ERRORS])
def test_each_mistake_has_its_one_line_error(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(HeadpatchError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert re.search(message, text), text


def test_missing_file(tmp_path):
    with pytest.raises(HeadpatchError, match=r"recipe .*absent\.yaml does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def test_every_key_is_documented():
    readme = (RECIPES_DIR / "README.md").read_text()

    def keys(cls: type, prefix: str) -> list[str]:
        found = []
        hints = typing.get_type_hints(cls)
        for spec in file_fields(cls).values():
            inner = [arg for arg in typing.get_args(hints[spec.name]) if dataclasses.is_dataclass(arg)]
            nested = hints[spec.name] if dataclasses.is_dataclass(hints[spec.name]) else (inner[0] if inner else None)
            name = prefix + spec.name
            found += keys(nested, name + ".") if nested else [name]
        return found

    missing = [key for key in keys(Recipe, "") if f"| `{key}` |" not in readme]
    assert not missing


def _plan(path: Path, output: str = "out", **overrides: typing.Any) -> str:
    recipe = load_recipe(path)
    tune = overrides.pop("tune", recipe.job().tune)
    job = with_flags(recipe.job(), {"output": Path(output), **overrides})
    return format_plan(recipe, dataclasses.replace(job, tune=tune))


def test_plan_of_the_demo_recipe():
    plan = _plan(RECIPES_DIR / "smollm2-135m-instruct.yaml", "./smollm2-135m-pear")
    assert "smollm2-135m" in plan and "float32" in plan
    assert "score all 270 heads on settings 20x50, 40x25, 80x15, 100x10" in plan and "rank them for tuning" in plan
    assert "K from 10, 20, 40: each trained up to 40 steps of 10 sequences (n=25, Adam lr 0.01)" in plan
    assert "-> smollm2-135m-pear" in plan
    fixed = _plan(RECIPES_DIR / "smollm2-135m-instruct.yaml", "./out", tune=None)
    assert "keep the top 10" in fixed and "60 steps of 20 sequences, n=50, AdamW lr 0.005, 2 warm-up steps" in fixed
    assert "qrhead" not in plan and "push" not in plan
    memory = plan.split("memory per step")[1]
    assert [line.split()[0] for line in memory.splitlines()[1:]] == ["locate", "tune", "export"]
    fixed_memory = fixed.split("memory per step")[1]
    assert [line.split()[0] for line in fixed_memory.splitlines()[1:]] == ["locate", "train", "export"]
    # SmolLM2's 49k vocabulary: the guard's per-window distributions (100 MB each) set tuning's figure
    tuned = dict(line.split(None, 1) for line in memory.splitlines()[1:])["tune"]
    assert "guard text's next-token distributions" in tuned


def test_plan_follows_the_flags():
    path = RECIPES_DIR / "llama-2-7b-chat.yaml"
    plan = _plan(path)
    assert "auto: accelerate places the layers" in plan and "bfloat16" in plan
    assert "detect the top 16 QR heads on the built-in set" in plan
    assert "26-28, 11-6, 14-15, 30-9, 18-9" in plan  # the published heads, for comparison
    overridden = _plan(path, k=20, qrhead_data=None, heads="26-28,11-6", push_to_hub="me/llama-pear", private=True,
                       model="my/fork")
    assert "score all" not in overridden and "the given heads 26-28, 11-6 (no location)" in overridden
    assert "QR heads" not in overridden.split("memory per step")[0]
    assert "to the Hub repo me/llama-pear (private)" in overridden
    assert "recipe's figures for meta-llama/Llama-2-7b-chat-hf" in overridden
    with pytest.raises(HeadpatchError, match=r"k=2000 is out of range: the architecture has 1024 heads"):
        _plan(path, k=2000)
    with pytest.raises(HeadpatchError, match="unknown dtype 'fp8'"):
        _plan(path, dtype="fp8")
    folded = _plan(path, patch="patch.json", qrhead_data=None)
    assert "the trained coefficients of patch.json" in folded and "train " not in folded.split("memory per step")[1]
