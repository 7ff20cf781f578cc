"""Safety of the export (issue 12): nothing outside the source is carried, nothing private is published, nothing
non-finite is written, outputs are refused, staged, published and cleaned up as promised."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import signal
import struct
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


def _one_line_refusal(result, out: Path, message: str) -> None:
    """Exit 2, one `headpatch: error:` line matching `message`, no traceback, and no output or staging left."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headpatch: error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and _staging(out) == []


def _source_bytes(source: Path) -> dict[str, bytes]:
    return {p.relative_to(source).as_posix(): p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}


# Defect 5: --overwrite replaces only what an earlier export wrote.

def test_overwrite_refuses_a_clone_of_the_pushed_repo_and_names_what_it_would_delete(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch, out = _patch(tmp_path, model.config), tmp_path / "out"
    assert _export(source, patch, out).exit_code == 0
    written = json.loads((out / ".headpatch-manifest.json").read_text(encoding="utf-8"))
    assert "headpatch.json" in written and "model.safetensors" in written
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (out / "LICENSE").write_text("mine", encoding="utf-8")
    before = _tree(out)
    result = _export(source, patch, out, "--overwrite")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert ".git/HEAD" in result.stderr and "LICENSE" in result.stderr
    assert _tree(out) == before and _staging(out) == []
    (out / "LICENSE").unlink()
    shutil.rmtree(out / ".git")
    assert _export(source, patch, out, "--overwrite").exit_code == 0


def test_overwrite_of_an_output_without_a_manifest_replaces_only_names_the_export_writes(tmp_path):
    # outputs of headpatch 0.1 have no manifest: the names the new export writes stand in for it
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch, out = _patch(tmp_path, model.config), tmp_path / "out"
    assert _export(source, patch, out).exit_code == 0
    (out / ".headpatch-manifest.json").unlink()
    assert _export(source, patch, out, "--overwrite").exit_code == 0
    (out / ".headpatch-manifest.json").unlink()
    (out / "notes.md").write_text("mine", encoding="utf-8")
    result = _export(source, patch, out, "--overwrite")
    assert result.exit_code == 2 and "notes.md" in result.stderr
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine" and _staging(out) == []


# Defect 7: a shard replaced between planning and copying is an error, never a corrupt export.

def test_a_shard_replaced_after_planning_is_an_error_not_a_corrupt_export(tmp_path, monkeypatch):
    import headpatch.io.export as export

    source, model = make_source(tmp_path, "llama", torch.float32, False)
    shard = source / "model.safetensors"
    tensors = load_file(shard)
    real = export.carried_files

    def swap_then_carry(directory):  # runs after the plan validated the header, before the shard is copied
        save_file(tensors, shard, metadata={"format": "pt", "note": "replaced"})  # same tensors, shifted offsets
        return real(directory)

    monkeypatch.setattr(export, "carried_files", swap_then_carry)
    out = tmp_path / "out"
    _one_line_refusal(_export(source, _patch(tmp_path, model.config), out),
                      out, "model.safetensors changed while it was being exported")


# Defect 10: malformed files and the system's refusals are one line, not a traceback.

def _rewrite_index(source: Path, change) -> None:
    index = source / "model.safetensors.index.json"
    data = json.loads(index.read_text(encoding="utf-8"))
    change(data)
    index.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(weight_map=list(d["weight_map"])), "'weight_map' must map tensor names to shard files"),
    (lambda d: d["weight_map"].update({next(iter(d["weight_map"])): 3}), "'weight_map' must map tensor names"),
    (lambda d: d.update(weight_map={k: "*" for k in d["weight_map"]}), r"names shard '\*', not a plain relative"),
    (lambda d: d.update(weight_map={k: "README.md" for k in d["weight_map"]}), "names shard 'README.md'"),
    (lambda d: d.update(weight_map={k: "headpatch.json" for k in d["weight_map"]}), "names shard 'headpatch.json'"),
    (lambda d: d.update(weight_map={k: "x\x1b[2J.safetensors" for k in d["weight_map"]}),
     r"names shard 'x\\x1b\[2J.safetensors'"),
])
def test_a_malformed_index_is_one_line(tmp_path, change, message):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    _rewrite_index(source, change)
    before = _source_bytes(source)
    result = _export(source, _patch(tmp_path, model.config), tmp_path / "out")
    _one_line_refusal(result, tmp_path / "out", message)
    assert "\x1b" not in result.stderr and _source_bytes(source) == before


def _rewrite_header(path: Path, change) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def _first_tensor(header: dict) -> dict:
    return header[next(name for name in header if name != "__metadata__")]


@pytest.mark.parametrize(("change", "message"), [
    (lambda h: _first_tensor(h).update(data_offsets=[str(x) for x in _first_tensor(h)["data_offsets"]]),
     "malformed data_offsets"),
    (lambda h: _first_tensor(h).update(data_offsets=[float(x) for x in _first_tensor(h)["data_offsets"]]),
     "malformed data_offsets"),
    (lambda h: _first_tensor(h).update(shape=[-x for x in _first_tensor(h)["shape"]]), "malformed shape"),
    (lambda h: h.update(deep=functools.reduce(lambda inner, _: [inner], range(200), [])), "nests too deeply"),
])
def test_a_malformed_shard_header_is_one_line(tmp_path, change, message):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    _rewrite_header(source / "model.safetensors", change)
    before = _source_bytes(source)
    _one_line_refusal(_export(source, _patch(tmp_path, model.config), tmp_path / "out"), tmp_path / "out", message)
    assert _source_bytes(source) == before


def test_a_full_disk_and_an_output_under_a_file_are_one_line(tmp_path, monkeypatch):
    import headpatch.io.stream as stream

    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch, before = _patch(tmp_path, model.config), _source_bytes(source)
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    result = _export(source, patch, tmp_path / "a-file" / "out")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert re.search(r"^headpatch: error: output directory \S+ cannot be created: \S+a-file is not a directory",
                     result.stderr)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))

    monkeypatch.setattr(stream.shutil, "copyfile", full)
    out = tmp_path / "out"
    _one_line_refusal(_export(source, patch, out), out, r"No space left on device: \S+/\.out\.partial-")
    assert _source_bytes(source) == before


def test_inspect_of_a_malformed_or_hostile_config_is_one_line_and_escapes_the_terminal(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("[1, 2]", encoding="utf-8")
    result = invoke("inspect", str(checkpoint))
    assert result.exit_code == 2 and "is not a JSON object" in result.stderr and result.stderr.count("\n") == 1
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["headpatch"] = {**record_json(model.config, {(0, 1): 0.5}), "headpatch_version": "1\x1b[2J\n2"}
    (checkpoint / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = invoke("inspect", str(checkpoint))
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "made by headpatch 1\\x1b[2J\\n2" in result.stdout
    config["headpatch"]["pear"] = ["\x1b[2J"]
    (checkpoint / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = invoke("inspect", str(checkpoint))
    assert result.exit_code == 2 and "\x1b" not in result.stderr and result.stderr.count("\n") == 1


# Defect 12: the header rules are the safetensors library's.

@pytest.mark.parametrize("dtype", ["F8_E8M0", "C64", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3"])
def test_every_dtype_the_safetensors_library_accepts_is_accepted(tmp_path, dtype):
    from safetensors import safe_open

    from headpatch.io.checkpoint import read_shard
    from headpatch.io.header import DTYPE_BITS

    count = 32
    header = json.dumps({"x": {"dtype": dtype, "shape": [count], "data_offsets": [0, count * DTYPE_BITS[dtype] // 8]}})
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * (count * DTYPE_BITS[dtype] // 8))
    with safe_open(path, "np"):
        pass
    assert read_shard(path).tensors["x"].dtype == dtype


def test_negative_dimensions_on_an_unpatched_tensor_are_refused(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    # [-2, -2] has four elements, the byte count of a real [2, 2] tensor: only a signedness check catches it
    tensors = {**load_file(source / "model.safetensors"), "extra": torch.zeros(2, 2)}
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    _rewrite_header(source / "model.safetensors", lambda h: h["extra"].update(shape=[-2, -2]))
    _one_line_refusal(_export(source, _patch(tmp_path, model.config), tmp_path / "out"), tmp_path / "out",
                      "tensor 'extra' has a malformed shape")


# Defect 13: shard names.

def test_a_shard_behind_a_symlinked_subdirectory_is_refused(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = sorted(source.glob("*.safetensors"))[0]
    shutil.move(first, elsewhere / first.name)
    (source / "sub").symlink_to(elsewhere)
    _rewrite_index(source, lambda d: d["weight_map"].update(
        {k: f"sub/{first.name}" for k, v in d["weight_map"].items() if v == first.name}))
    _one_line_refusal(_export(source, _patch(tmp_path, model.config), tmp_path / "out"), tmp_path / "out",
                      f"sub/{first.name} links to a file outside the checkpoint directory")


def test_a_hub_index_naming_a_glob_pattern_never_reaches_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from headpatch.errors import HeadpatchError
    from headpatch.io.hub import checkpoint_dir
    from headpatch.loading import Source

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "*"}}), encoding="utf-8")

    def download(repo_id, filename, revision=None):
        if filename == "model.safetensors":
            raise EntryNotFoundError("no single file")
        return str(index)

    def snapshot(*args, **kwargs):
        raise AssertionError(f"snapshot_download reached with {kwargs.get('allow_patterns')}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    with pytest.raises(HeadpatchError, match=r"names shard '\*', not a plain relative file name"):
        checkpoint_dir(Source(name="org/hostile", location="org/hostile", base_model="org/hostile"))


def test_an_error_quoting_a_huge_input_is_cut_to_a_readable_line(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch = _patch(tmp_path, model.config, **{"x" * 100_000: 1})
    result = _export(source, patch, tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "unknown key 'xxxx" in result.stderr and len(result.stderr) < 2100
    assert re.search(r"\.\.\. \(\d+ more characters\)$", result.stderr.strip())


# The files the export writes itself but builds from the source's (config.json re-emitted, README.md's front matter
# kept) are read, not carried: a link out of the source would publish the linked file's content.

@pytest.mark.parametrize("name", ["config.json", "README.md"])
def test_a_config_or_card_linking_outside_the_source_is_one_line_and_writes_nothing(tmp_path, name):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    if name == "config.json":  # a config that loads, with a field only the outside file has
        outside.write_text(json.dumps({**json.loads((source / name).read_text()), "leak": SECRET}), encoding="utf-8")
        (source / name).unlink()
    else:
        outside.write_text(f"---\nlicense: {SECRET}\n---\nprivate notes\n", encoding="utf-8")
    (source / name).symlink_to(outside)
    before, out = _source_bytes(source), tmp_path / "out"
    _one_line_refusal(_export(source, _patch(tmp_path, model.config), out), out,
                      f"{re.escape(name)} links to a file outside the checkpoint directory")
    assert _source_bytes(source) == before and (source / name).is_symlink()


def test_a_config_and_card_linking_inside_the_source_are_read(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, False)
    (source / "meta").mkdir()
    for name, text in (("config.json", (source / "config.json").read_text(encoding="utf-8")),
                       ("README.md", "---\nlicense: apache-2.0\n---\nthe base card\n")):
        (source / "meta" / name).write_text(text, encoding="utf-8")
        (source / name).unlink(missing_ok=True)
        (source / name).symlink_to(Path("meta") / name)
    out = tmp_path / "out"
    result = _export(source, _patch(tmp_path, model.config), out)
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and "headpatch" in config
    assert "license: apache-2.0" in (out / "README.md").read_text(encoding="utf-8")
    assert not (out / "config.json").is_symlink() and not (out / "README.md").is_symlink()
