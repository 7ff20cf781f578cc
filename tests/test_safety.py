"""Safety of the export (issue 12): nothing outside the source is carried, nothing private is published, nothing
non-finite is written, outputs are refused, staged, published and cleaned up as promised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from headpatch.architectures import head_layout
from headpatch.pear.fold import fold_weight
from tests.conftest import invoke
from tests.test_hub import _fake_cache
from tests.test_stream import make_source, record_json

SECRET = "hf_not_for_the_export"


def _patch(tmp_path: Path, config, coefficients=None, **fields) -> Path:
    """A patch.json for this config (default: one head scaled by 0.5), with record fields replaced."""
    data = {**record_json(config, coefficients or {(0, 1): 0.5}), **fields}
    path = tmp_path / "patch.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _export(source, patch, out, *extra, env=None):
    return invoke("export", str(source), "--patch", str(patch), "-o", str(out), "-q", *extra, env=env)


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "token"
    secret.write_text(SECRET, encoding="utf-8")
    secret.chmod(0o600)
    return secret


def _leaks(directory: Path, text: str) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


# Defect 1: symlinks out of the source are not carried.

def test_links_out_of_a_local_source_are_skipped_and_named(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    (source / "notes.txt").symlink_to(_secret(tmp_path))
    (source / "kept.txt").write_text("kept", encoding="utf-8")
    (source / "alias.txt").symlink_to(source / "kept.txt")  # a link that stays inside is carried, as a file
    out = tmp_path / "out"
    result = _export(source, _patch(tmp_path, model.config), out)
    assert result.exit_code == 0, result.stderr
    assert not (out / "notes.txt").exists() and _leaks(out, SECRET) == []
    assert (out / "alias.txt").read_text(encoding="utf-8") == "kept" and not (out / "alias.txt").is_symlink()
    assert "notes.txt" in result.stderr and "alias.txt" not in result.stderr


def test_links_out_of_a_hub_snapshot_are_skipped_and_its_blobs_are_carried(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    (source / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    _fake_cache(tmp_path / "hub", "tiny-org/tiny-llama", source)
    snapshot = next((tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots").iterdir())
    (snapshot / "notes.txt").symlink_to(_secret(tmp_path))
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "out"
    result = _export("tiny-org/tiny-llama", _patch(tmp_path, model.config), out, env=env)
    assert result.exit_code == 0, result.stderr
    assert (out / "tokenizer_config.json").is_file() and not (out / "notes.txt").exists()
    assert _leaks(out, SECRET) == [] and "notes.txt" in result.stderr


# Defect 9: a local path is never published as base_model (nor as source).

def _published_text(out: Path) -> str:
    return "".join((out / name).read_text(encoding="utf-8") for name in ("README.md", "config.json", "headpatch.json"))


def test_a_patch_from_0_1_naming_a_local_path_exports_without_it(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch = _patch(tmp_path, model.config, source=str(source), base_model=str(source))  # as 0.1 wrote them
    out = tmp_path / "out"
    assert _export(source, patch, out).exit_code == 0
    assert str(tmp_path) not in _published_text(out)
    record = json.loads((out / "headpatch.json").read_text(encoding="utf-8"))
    assert record["source"] == source.name and "base_model" not in record
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["headpatch"]["source"] == source.name


def test_a_model_trained_from_a_local_directory_names_it_by_its_directory_name(tmp_path):
    source, _ = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    result = invoke("export", str(source), "--heads", "0-1", "--steps", "1", "--batch-size", "2", "--n", "4",
                    "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    assert str(tmp_path) not in _published_text(out)
    record = json.loads((out / "headpatch.json").read_text(encoding="utf-8"))
    assert record["source"] == source.name and "base_model" not in record


def test_a_hub_id_stays_the_base_model(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    assert _export(source, _patch(tmp_path, model.config, base_model="tiny-org/tiny-llama"), out).exit_code == 0
    front = (out / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert "base_model: tiny-org/tiny-llama" in front


# Defect 4: a coefficient that overflows the stored dtype is refused before anything is written.

O_PROJ_0 = "model.layers.0.self_attn.o_proj.weight"


@pytest.mark.parametrize(("dtype", "coefficient"), [(torch.float16, 1e30), (torch.float32, 1e39),
                                                   (torch.bfloat16, 1e40)])
def test_a_coefficient_that_overflows_the_stored_dtype_is_one_line_and_writes_nothing(tmp_path, dtype, coefficient):
    source, model = make_source(tmp_path, "llama", dtype, False)
    out = tmp_path / "out"
    result = _export(source, _patch(tmp_path, model.config, {(0, 1): coefficient}), out)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("headpatch: error: ") and O_PROJ_0 in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, "patch.json"])


def test_verify_does_not_call_a_non_finite_tensor_patched_as_recorded(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float16, False)
    out = tmp_path / "out"
    assert _export(source, _patch(tmp_path, model.config, {(0, 1): 0.5}), out).exit_code == 0
    # An export made by a tool that did not check: the recorded coefficient and the tensor both overflow.
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["headpatch"]["pear"]["coefficients"]["0-1"] = 1e30
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tensors = load_file(out / "model.safetensors")
    tensors[O_PROJ_0] = fold_weight(load_file(source / "model.safetensors")[O_PROJ_0], head_layout(model.config),
                                    {1: 1e30})
    assert not torch.isfinite(tensors[O_PROJ_0]).all()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    result = invoke("verify", str(out), "--base", str(source), "-q")
    assert result.exit_code == 1 and f"UNEXPECTED {O_PROJ_0}" in result.stdout and "0 patched as recorded" in \
        result.stdout


# Defect 2: --ia3 DIR follows the rules of the export's output.

def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", [".", "adapter"])
def test_an_ia3_adapter_inside_the_source_is_refused_and_nothing_is_written(tmp_path, where):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    (source / "adapter_config.json").write_text("{}", encoding="utf-8")  # even where an adapter seems to lie
    before, out = _tree(source), tmp_path / "out"
    result = _export(source, _patch(tmp_path, model.config), out, "--ia3", str(source / where), "--overwrite")
    assert result.exit_code == 2 and "overlaps" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert _tree(source) == before and not out.exists()


def test_an_ia3_adapter_inside_the_export_is_refused(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    result = _export(source, _patch(tmp_path, model.config), out, "--ia3", str(out / "adapter"))
    assert result.exit_code == 2 and "overlaps" in result.stderr and not out.exists()


def test_an_ia3_adapter_is_replaced_only_with_overwrite_and_only_over_an_earlier_adapter(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch, adapter = _patch(tmp_path, model.config), tmp_path / "adapter"
    assert _export(source, patch, tmp_path / "out1", "--ia3", str(adapter)).exit_code == 0
    first = _tree(adapter)
    assert "adapter_config.json" in first
    again = _export(source, patch, tmp_path / "out2", "--ia3", str(adapter))
    assert again.exit_code == 2 and "not empty" in again.stderr and not (tmp_path / "out2").exists()
    assert _tree(adapter) == first
    assert _export(source, patch, tmp_path / "out2", "--ia3", str(adapter), "--overwrite").exit_code == 0
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine", encoding="utf-8")
    refused = _export(source, patch, tmp_path / "out3", "--ia3", str(precious), "--overwrite")
    assert refused.exit_code == 2 and "adapter_config.json" in refused.stderr
    assert _tree(precious) == {"keep.txt": b"mine"} and not (tmp_path / "out3").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# Defects 6 and 3: signals leave no staging directory, a killed run's is removed, racing exports have one winner.

# A child running `headpatch export ARGS...` whose fold prints "folding" and then waits for the file GO (or for ever)
# before writing the patched tensor, so the parent can act while the staging directory exists.
SLOW_EXPORT = r"""
import os, sys, time
import headpatch.io.stream as stream
go, args = sys.argv[1], sys.argv[2:]
real = stream.folded_bytes
def waiting(*a, **k):
    print("folding", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    return real(*a, **k)
stream.folded_bytes = waiting
sys.argv = ["headpatch", "export", *args, "-q"]
from headpatch.cli import main
main()
"""


def _slow_export(source: Path, patch: Path, out: Path, go: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(go), str(source), "--patch", str(patch),
                              "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.readline() == "folding\n", child.communicate(timeout=60)
    return child


def _staging(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.slow  # a separate process, signalled
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_mid_fold_leave_no_staging_directory(tmp_path, signum):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out = tmp_path / "out"
    child = _slow_export(source, _patch(tmp_path, model.config), out, tmp_path / "go")
    assert _staging(out) != []
    child.send_signal(signum)
    child.communicate(timeout=60)
    assert child.returncode in (128 + signum, -signum) and _staging(out) == [] and not out.exists()


@pytest.mark.slow  # a separate process, killed
def test_a_staging_directory_left_by_sigkill_is_removed_by_the_next_export(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out, patch = tmp_path / "out", _patch(tmp_path, model.config)
    child = _slow_export(source, patch, out, tmp_path / "go")
    child.kill()
    child.communicate(timeout=60)
    assert len(_staging(out)) == 1
    assert _export(source, patch, out).exit_code == 0
    assert _staging(out) == [] and (out / "headpatch.json").is_file()


@pytest.mark.slow  # two separate processes
def test_of_two_racing_exports_to_one_output_exactly_one_wins(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out, patch, go = tmp_path / "out", _patch(tmp_path, model.config), tmp_path / "go"
    children = [_slow_export(source, patch, out, go) for _ in range(2)]  # both past the output check
    go.touch()
    results = [(child.wait(timeout=120), child.stderr.read()) for child in children]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.startswith("headpatch: error: ") and loser.count("\n") == 1 and str(out) in loser
    assert (out / "headpatch.json").is_file() and _staging(out) == []


def test_without_renameat2_a_lock_file_still_refuses_to_replace(tmp_path, monkeypatch):
    from headpatch.io import atomic

    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        atomic.rename_noreplace(tmp_path / "a", tmp_path / "b")
    atomic.rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


# Defect 15: every file of the export gets the normal mode, and the publishing rename is made durable.

def test_every_exported_file_has_the_normal_mode_and_the_parent_directory_is_fsynced(tmp_path, monkeypatch):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    out, synced, real_fsync = tmp_path / "out", [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    umask = os.umask(0o022)
    try:
        assert _export(source, _patch(tmp_path, model.config), out).exit_code == 0
    finally:
        os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert set(modes.values()) == {oct(0o644)} and {"headpatch.json", "README.md", "config.json"} <= set(modes)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755) and tmp_path.stat().st_ino in synced


# Defect 8: text is read and written as UTF-8 whatever the locale.

@pytest.mark.slow  # separate processes under LC_ALL=C
def test_the_export_works_under_an_ascii_locale(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    (source / "chat_template.jinja").write_text("{{ 'Δπ – ünïcode' }}", encoding="utf-8")
    index = source / "model.safetensors.index.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    index.write_text(json.dumps({**data, "metadata": {**data["metadata"], "note": "Δπ"}}, ensure_ascii=False),
                     encoding="utf-8")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    # LC_ALL=C alone turns on Python's UTF-8 mode (PEP 538/540); these two keep the locale's ASCII, as Windows'
    # code pages and non-UTF-8 locales do.
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    code = "import sys; from headpatch.cli import main; sys.argv[0] = 'headpatch'; main()"
    result = subprocess.run([sys.executable, "-c", code, "export", str(source), "--patch",
                             str(_patch(tmp_path, model.config)), "-o", str(out), "-q"], capture_output=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert "Δπ" in (out / "README.md").read_text(encoding="utf-8")
    shown = subprocess.run([sys.executable, "-c", code, "inspect", str(out)], capture_output=True, env=env,
                           cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert shown.returncode == 0, shown.stderr.decode("utf-8", "replace")
