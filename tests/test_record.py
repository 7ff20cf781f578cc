"""The typed patch record: files written by the 0.1 code (tests/data/records_v1, made by commit 4f57c25 on a tiny
Llama) read back byte for byte, every rule gives a one-line error, and the record module needs no torch."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from headpatch.errors import HeadpatchError
from headpatch.options import LocateOptions, TrainOptions
from headpatch.record import PatchRecord
from tests.conftest import run_fresh

V1 = Path(__file__).parent / "data" / "records_v1"
RECORD_FILES = ["heads.json", "heads-top2.json", "patch.json", "patch-qrhead.json", "headpatch.json"]
PACKAGE = Path(__file__).resolve().parents[1] / "headpatch"


@pytest.mark.parametrize("name", RECORD_FILES)
def test_records_written_by_0_1_read_back_byte_for_byte(name):
    text = (V1 / name).read_text(encoding="utf-8")
    record = PatchRecord.from_text(text, name)
    assert record.to_text() == text


def test_config_metadata_is_what_0_1_wrote_into_config_json():
    record = PatchRecord.from_text((V1 / "headpatch.json").read_text(encoding="utf-8"))
    expected = json.loads((V1 / "config-headpatch.json").read_text(encoding="utf-8"))
    assert record.config_metadata() == expected
    assert PatchRecord.from_json(expected).to_json() == expected  # the reduced form is a valid record too
    assert list(expected["pear"]["location"]["scores"]) == expected["pear"]["heads"]


def test_attributes_replace_string_keys():
    record = PatchRecord.from_text((V1 / "patch-qrhead.json").read_text(encoding="utf-8"))
    assert record.pear_heads() == [tuple(map(int, head.split("-"))) for head in record.pear.heads]
    assert set(record.coefficients()) == set(record.pear_heads())
    assert record.pear.training.heldout_after.loss > 0 and record.pear.location.k == 3
    assert record.qrhead.detection.k == len(record.qrhead.heads) == 4
    top2 = record.with_top_k(2)
    assert top2.pear.heads == record.pear.heads[:2] and top2.pear.coefficients is None
    assert top2.qrhead == record.qrhead  # re-picking PEAR heads keeps the QR heads, as 0.1 did
    located = PatchRecord.from_text((V1 / "heads.json").read_text(encoding="utf-8"))
    assert located.with_top_k(2).to_text() == (V1 / "heads-top2.json").read_text(encoding="utf-8")


def _patch() -> dict:
    return json.loads((V1 / "patch-qrhead.json").read_text(encoding="utf-8"))


def _set(path: str, value):
    def change(data: dict) -> dict:
        data = copy.deepcopy(data)
        *parents, last = path.split(".")
        target = data
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        return data
    return change


MISTAKES = [
    ("not a record", lambda d: [d], "is not a headpatch record"),
    ("other format", _set("format_version", 2), "is not a headpatch record"),
    ("architecture null", _set("architecture", None), "architecture must be a mapping"),
    ("pear is a list", _set("pear", []), "pear must be a mapping"),
    ("missing key", _set("pear.location.k", KeyError), "missing key 'k' in section 'pear.location'"),
    ("unknown key", _set("pear.coefficent", {}), "unknown key 'coefficent'.*did you mean 'coefficients'"),
    ("score as text", _set("pear.location.scores", {"2-0": "0.1"}), "pear.location.scores.2-0 must be a number"),
    ("NaN coefficient", _set("pear.coefficients", {"2-0": float("nan"), "0-0": 1.0, "0-3": 1.0}),
     "pear.coefficients.2-0 must be a finite number"),
    ("infinite coefficient", _set("pear.coefficients", {"2-0": 1.0, "0-0": float("inf"), "0-3": 1.0}),
     "pear.coefficients.0-0 must be a finite number"),
    ("bool coefficient", _set("pear.coefficients", {"2-0": True, "0-0": 1.0, "0-3": 1.0}),
     "pear.coefficients.2-0 must be a number"),
    ("no heads", _set("pear.heads", []), "pear.heads is empty"),
    ("leading zero", _set("pear.heads", ["02-0", "0-0", "0-3"]), "malformed head id '02-0'"),
    ("padded id", _set("pear.heads", [" 2-0", "0-0", "0-3"]), "malformed head id ' 2-0'"),
    ("arabic digits", _set("pear.heads", ["\u0662-\u0660", "0-0", "0-3"]), "malformed head id"),
    ("fullwidth digits", _set("pear.heads", ["\uff12-\uff10", "0-0", "0-3"]), "malformed head id"),
    ("duplicate head", _set("pear.heads", ["2-0", "2-0", "0-3"]), "duplicate head ids"),
    ("head outside", _set("pear.heads", ["9-0", "0-0", "0-3"]), "head 9-0 is outside the model"),
    ("k disagrees", _set("pear.location.k", 2), "pear.location.k is 2 but pear.heads lists 3"),
    ("coefficients disagree", _set("pear.coefficients", {"2-0": 1.0, "0-0": 1.0, "1-1": 1.0}),
     "pear.coefficients must name exactly the heads"),
    ("qr k disagrees", _set("qrhead.detection.k", 3), "qrhead.detection.k is 3"),
    ("neither part", lambda d: {k: v for k, v in d.items() if k not in ("pear", "qrhead")}, "neither PEAR heads"),
]


@pytest.mark.parametrize("mistake, change, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_rule_is_a_one_line_error(mistake, change, message):
    with pytest.raises(HeadpatchError) as info:
        PatchRecord.from_json(change(_patch()), "patch.json")
    text = str(info.value)
    assert "\n" not in text and text.startswith("patch.json"), text
    assert re.search(message, text), text


def test_qrhead_spelling_of_head_ids_is_read_and_written_canonically():
    data = _patch()
    data["pear"]["heads"] = ["2_0", "0-0", "0_3"]
    data["pear"]["coefficients"] = {"2_0": 0.5, "0-0": 1.0, "0_3": 1.5}
    record = PatchRecord.from_json(data)
    assert record.pear.heads == ("2-0", "0-0", "0-3")
    assert record.coefficients() == {(2, 0): 0.5, (0, 0): 1.0, (0, 3): 1.5}
    assert '"2_0"' not in record.to_text() and '"2-0": 0.5' in record.to_text()
    data["pear"]["coefficients"] = {"2_0": 0.5, "2-0": 1.0, "0_3": 1.5}
    with pytest.raises(HeadpatchError, match="pear.coefficients: a head is given twice in two spellings"):
        PatchRecord.from_json(data)


@pytest.mark.parametrize("text, message", [
    ('{"format_version": 1, "format_version": 1}', "appears twice"),
    ('{"format_version": 1, "pear": {"coefficients": {"1-1": NaN}}}', "NaN is not a number JSON allows"),
    ("[" * 100_000 + "]" * 100_000, "cannot read"),
    ("{", "cannot read"),
])
def test_malformed_json_is_a_one_line_error(text, message):
    with pytest.raises(HeadpatchError, match=message) as info:
        PatchRecord.from_text(text, "x.json")
    assert "\n" not in str(info.value)


def test_training_record_holds_every_training_option():
    # the record's training section is the TrainOptions fields then the outcome; a new option must reach the record
    record = PatchRecord.from_text((V1 / "patch.json").read_text(encoding="utf-8"))
    training = record.to_json()["pear"]["training"]
    assert list(training)[:len(TrainOptions.__dataclass_fields__)] == list(TrainOptions.__dataclass_fields__)
    assert record.pear.location.settings == ((3, 6), (4, 5)) != LocateOptions().settings


def test_record_module_loads_no_torch():
    done = run_fresh("import sys, headpatch.record, headpatch.options; print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_only_the_record_module_indexes_the_record_by_key():
    pattern = re.compile(r"""[\w)\]]\[["'](pear|qrhead)["']\]""")  # subscripts, not list literals
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.name != "record.py" and pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def _without_run_details(data):
    """A record's JSON without what differs between runs of the same inputs: timings, the source's path and the
    version of headpatch that wrote it."""
    if isinstance(data, dict):
        return {k: _without_run_details(v) for k, v in data.items()
                if k not in ("seconds", "source", "base_model", "headpatch_version")}
    if isinstance(data, list):
        return [_without_run_details(v) for v in data]
    return data


def _differences(got, expected, where=""):
    """Where `got` differs from `expected`, keys in the same order. A float may differ by two and a half units of its
    last written decimal (the sixth at least), which a change below 1e-6 can flip: 0.2 takes the held-out
    cross-entropy row-wise rather than over a transposed view, and location scores flip a digit between CPUs.
    Everything else must be equal."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if list(got) != list(expected):
            return [f"{where}: keys {list(got)} != {list(expected)}"]
        return [d for key in expected for d in _differences(got[key], expected[key], f"{where}.{key}")]
    if isinstance(expected, list) and isinstance(got, list):
        if len(got) != len(expected):
            return [f"{where}: length {len(got)} != {len(expected)}"]
        return [d for i, (g, e) in enumerate(zip(got, expected)) for d in _differences(g, e, f"{where}[{i}]")]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (got, expected))
    if numbers and type(expected) is float:
        decimals = max(6, len(repr(expected).partition(".")[2]))
        return [] if abs(got - expected) <= 2.5 * 10.0 ** -decimals else [f"{where}: {got} != {expected}"]
    same = got == expected and isinstance(got, bool) == isinstance(expected, bool)  # True == 1.0 in Python
    return [] if same else [f"{where}: {got!r} != {expected!r}"]


def test_the_difference_check_sees_what_it_should():
    assert _differences({"a": [10.852103, 2]}, {"a": [10.852101, 2]}) == []  # two units of the sixth decimal
    assert _differences({"a": [1.0, 2]}, {"a": [1.000004, 2]}) == [".a[0]: 1.0 != 1.000004"]
    assert _differences({"c": 1.00015881}, {"c": 1.00015879}) == []  # eight decimals written: two units of the eighth
    assert _differences({"c": 1.0001592}, {"c": 1.00015879}) == [".c: 1.0001592 != 1.00015879"]
    assert _differences({"a": [1.0, 3]}, {"a": [1.0, 2]}) == [".a[1]: 3 != 2"]
    assert _differences({"a": True}, {"a": 1.0}) == [".a: True != 1.0"]
    assert _differences({"a": "2-0"}, {"a": "0-2"}) == [".a: '2-0' != '0-2'"]
    assert _differences({"a": 1, "b": 2}, {"b": 2, "a": 1}) != []


def test_the_pipeline_writes_what_0_1_wrote_for_the_same_inputs(smollm2, tmp_path):
    # the steps of the script that made tests/data/records_v1 with commit 4f57c25, run through today's pipeline
    from headpatch.loading import load_model
    from headpatch.pipeline import locate_step, qrhead_step, train_step
    from headpatch.qrhead.builtin import builtin_examples
    from tests.tiny import tiny_model

    source = tmp_path / "tiny-llama"
    tiny_model("llama", vocab_size=len(smollm2.tokenizer)).save_pretrained(source)
    smollm2.tokenizer.save_pretrained(source)
    loaded = load_model(str(source))
    located = locate_step(loaded, LocateOptions(k=3, settings=((3, 6), (4, 5))), show_progress=False)
    trained = train_step(loaded, located, TrainOptions(steps=2, batch_size=2, n=6, eval_lengths=(6, 8),
                                                       eval_samples=2), show_progress=False)
    both = qrhead_step(loaded, trained, builtin_examples(2, 2), "builtin test set", 4, show_progress=False)
    # the one addition since 0.1: the prompt layout's name (0.1's records, without it, read as the chat template)
    assert both.qrhead.detection.prompt_layout.pop("layout") == "chat-template"
    for record, name in ((located, "heads.json"), (trained, "patch.json"), (both, "patch-qrhead.json")):
        expected = json.loads((V1 / name).read_text(encoding="utf-8"))
        assert _differences(_without_run_details(record.to_json()), _without_run_details(expected)) == [], name
