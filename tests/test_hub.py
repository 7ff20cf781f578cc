"""Hub sources, push, inspect and verify — offline: a local HF cache, and huggingface_hub over a mock transport."""

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import set_client_factory
from huggingface_hub.utils import _http as hub_http
from huggingface_hub.utils._http import default_client_factory
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from headpatch.cli import app
from headpatch.errors import HeadpatchError
from headpatch.io.hub import PushOptions, push_folder
from headpatch.io.files import write_record
from tests.conftest import invoke
from tests.test_stream import COEFFICIENTS, make_record, make_source

# the HTTP client huggingface_hub talks through: httpx2 from 2.0, httpx in 1.x (the supported range has both)
httpx = getattr(hub_http, "httpx2", None) or hub_http.httpx

SECRET = "hf_headpatch_test_secret_token"


class FakeHub:
    """Answers the Hub endpoints that create_repo + upload_folder use, recording what it received."""

    def __init__(self, fail_commit: bool = False, existing_public: bool = False) -> None:
        self.requests: list[httpx.Request] = []
        self.fail_commit = fail_commit
        self.existing_public = existing_public
        self.private = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            if self.existing_public:
                return httpx.Response(409, json={"error": "You already created this model repo",
                                                  "url": "https://huggingface.co/me/pear"})
            self.private = json.loads(request.content)["visibility"] == "private"
            return httpx.Response(200, json={"url": "https://huggingface.co/me/pear", "name": "me/pear"})
        if path == "/api/models/me/pear" and request.method == "GET":
            return httpx.Response(200, json={"id": "me/pear", "private": self.private, "sha": "abc123"})
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if "/branch/" in path:
            return httpx.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            if self.fail_commit:
                return httpx.Response(500, json={"error": "Internal Error - We're working hard to fix this"})
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/me/pear/commit/abc123",
                                              "commitOid": "abc123", "pullRequestUrl": None})
        return httpx.Response(404, json={"error": f"unexpected {request.method} {path}"})

    def commit(self) -> tuple[dict, dict[str, bytes]]:
        """The commit header and the uploaded files {path: content} of the last commit request."""
        request = [r for r in self.requests if "/commit/" in r.url.path][-1]
        lines = [json.loads(line) for line in request.content.decode().splitlines()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                 for line in lines if line["key"] == "file"}
        return header, files


@pytest.fixture
def fake_hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    hubs = []

    def install(**kwargs) -> FakeHub:
        hub = FakeHub(**kwargs)
        hubs.append(hub)
        set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))
        return hub

    yield install
    set_client_factory(default_client_factory)


@pytest.fixture
def exported(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    runner = CliRunner()
    patch = write_record(make_record(model.config, COEFFICIENTS), tmp_path / "patch.json")
    result = runner.invoke(app, ["export", str(source), "--patch", str(patch), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return source, tmp_path / "out"


def test_push_uploads_every_file_with_the_message_and_privacy(fake_hub, exported):
    hub = fake_hub()
    _, out = exported
    url = push_folder(out, PushOptions("me/pear", private=True, revision="v1", commit_message="PEAR patch"))
    assert url.endswith("/commit/abc123")
    create = next(r for r in hub.requests if r.url.path == "/api/repos/create")
    assert json.loads(create.content) == {"name": "pear", "organization": "me", "visibility": "private",
                                          "type": "model"}
    assert any(r.url.path == "/api/models/me/pear/branch/v1" for r in hub.requests)
    header, files = hub.commit()
    assert header["summary"] == "PEAR patch"
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # everything but the manifest, which only guards a local --overwrite
    assert files == {name: data for name, data in local.items() if name != ".headpatch-manifest.json"}
    assert ".headpatch-manifest.json" in local
    assert [r for r in hub.requests if "/commit/" in r.url.path][-1].url.path == "/api/models/me/pear/commit/v1"
    api_calls = [r for r in hub.requests if r.url.path != "/api/agent-harnesses"]
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in api_calls)


def test_a_failed_push_keeps_the_export_and_prints_the_retry_without_the_token(fake_hub, exported, capsys,
                                                                             monkeypatch):
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # the client's retry back-off on the 500
    fake_hub(fail_commit=True)
    _, out = exported
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(HeadpatchError) as caught:
        push_folder(out, PushOptions("me/pear", private=True, commit_message="try it"))
    message = str(caught.value)
    assert f"the export is kept at {out}" in message
    assert f"retry with: headpatch push {out} me/pear --private --commit-message 'try it'" in message
    assert SECRET not in message and SECRET not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_private_push_to_an_existing_public_repo_is_refused(fake_hub, exported):
    hub = fake_hub(existing_public=True)
    _, out = exported
    with pytest.raises(HeadpatchError, match="already exists and is public; refusing"):
        push_folder(out, PushOptions("me/pear", private=True))
    assert not any("/commit/" in r.url.path or "/preupload/" in r.url.path for r in hub.requests)


def test_export_push_to_hub_from_the_cli(fake_hub, tmp_path):
    hub = fake_hub()
    source, model = make_source(tmp_path, "gpt2", torch.float32, False)
    patch = write_record(make_record(model.config, {(1, 1): 0.5}), tmp_path / "patch.json")
    result = CliRunner().invoke(app, ["export", str(source), "--patch", str(patch), "-o", str(tmp_path / "out"), "-q",
                                      "--push-to-hub", "me/pear", "--commit-message", "from cli"])
    assert result.exit_code == 0, result.output
    header, files = hub.commit()
    assert header["summary"] == "from cli" and "model.safetensors" in files and "headpatch.json" in files
    create = next(r for r in hub.requests if r.url.path == "/api/repos/create")
    assert json.loads(create.content)["visibility"] == "public"
    assert SECRET not in result.output


def test_patch_export_never_loads_the_model(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    source, model = make_source(tmp_path, "llama", torch.float32, False)
    patch = write_record(make_record(model.config, COEFFICIENTS), tmp_path / "patch.json")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    result = CliRunner().invoke(app, ["export", str(source), "--patch", str(patch), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _fake_cache(cache: Path, repo_id: str, source: Path) -> None:
    """A huggingface_hub cache holding one snapshot of `source` at refs/main, laid out as the real one: files in
    blobs/, the snapshot made of symlinks to them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        link = repo / "snapshots" / commit / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)


def test_hub_id_sources_and_inspect_work_offline_from_the_cache(tmp_path):
    source, model = make_source(tmp_path, "llama", torch.float32, True)
    _fake_cache(tmp_path / "hub", "tiny-org/tiny-llama", source)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    patch = write_record(make_record(model.config, COEFFICIENTS), tmp_path / "patch.json")
    result = invoke("export", "tiny-org/tiny-llama", "--patch", str(patch), "-o", str(tmp_path / "out"), "-q", env=env)
    assert result.exit_code == 0, result.stderr
    shards = sorted(p.name for p in source.glob("*.safetensors"))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))  # real files, not links into the cache
    _fake_cache(tmp_path / "hub", "tiny-org/tiny-llama-pear", tmp_path / "out")
    shown = invoke("inspect", "tiny-org/tiny-llama-pear", env=env)
    assert shown.exit_code == 0, shown.stderr
    assert "0-1  coefficient 0.700000" in shown.stdout and "2-3  coefficient 0.000000" in shown.stdout
    missing = invoke("export", "tiny-org/absent", "--patch", str(patch), "-o", str(tmp_path / "o2"), env=env)
    assert missing.exit_code == 2 and "cannot fetch tiny-org/absent from the Hub" in missing.stderr
    assert not (tmp_path / "o2").exists()


def test_inspect_a_local_export_and_refuse_a_plain_checkpoint(exported):
    source, out = exported
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", str(out), "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["pear"]["coefficients"] == {"0-1": 0.7, "2-0": 1.3, "2-3": 0.0}
    plain = runner.invoke(app, ["inspect", str(source)])
    assert plain.exit_code != 0 and "has no headpatch metadata" in str(plain.exception)


def test_verify_passes_an_honest_export_and_catches_tampering(exported, tmp_path):
    source, out = exported
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(out), "--base", str(source), "-q"])
    assert ok.exit_code == 0, ok.output
    assert "2 patched as recorded, 0 unexpected differences" in ok.output
    tampered_dir = tmp_path / "tampered"
    shutil.copytree(out, tampered_dir)
    mapping = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.o_proj.weight"):
        shard = tampered_dir / mapping[name]
        tensors = load_file(shard)
        tensors[name] = tensors[name].clone()
        tensors[name][0, -1] += 1e-3
        save_file(tensors, shard, metadata={"format": "pt"})
    missing = invoke("verify", str(tmp_path / "absent"), "--base", str(source), "-q")
    assert missing.exit_code == 2 and missing.stderr.startswith("headpatch: error: ") and "absent/config.json does not exist" in missing.stderr
    bad = runner.invoke(app, ["verify", str(tampered_dir), "--base", str(source), "-q"])
    assert bad.exit_code == 1
    assert "UNEXPECTED model.layers.1.mlp.down_proj.weight: changed, but the patch does not touch it" in bad.output
    assert "UNEXPECTED model.layers.2.self_attn.o_proj.weight: differs from base × recorded coefficients" in bad.output


def test_a_gguf_export_is_pushed_and_a_folder_that_is_no_export_or_links_out_is_not(fake_hub, tmp_path):
    from tests.gguf_files import gguf_record, write_tiny_gguf

    hub = fake_hub()
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    patch = tmp_path / "gguf-patch.json"
    patch.write_text(gguf_record({(0, 1): 0.7, (2, 3): 1.3}).to_text(), encoding="utf-8")
    result = CliRunner().invoke(app, ["export", str(source), "--patch", str(patch), "-o", str(tmp_path / "gout"),
                                      "--gguf", "-q", "--push-to-hub", "me/pear"])
    assert result.exit_code == 0, result.output
    assert {"tiny-pear.gguf", "README.md", "headpatch.json"} <= set(hub.commit()[1])
    plain, model = make_source(tmp_path, "llama", torch.float32, False)  # a checkpoint, not an export
    with pytest.raises(HeadpatchError, match="not a headpatch export"):
        push_folder(plain, PushOptions("me/pear"))
    out = tmp_path / "out"
    write_record(make_record(model.config, COEFFICIENTS), tmp_path / "patch.json")
    assert CliRunner().invoke(app, ["export", str(plain), "--patch", str(tmp_path / "patch.json"), "-o", str(out),
                                    "-q"]).exit_code == 0
    (tmp_path / "secret").write_text(SECRET, encoding="utf-8")
    (out / "notes.txt").symlink_to(tmp_path / "secret")
    commits = len([r for r in hub.requests if "/commit/" in r.url.path])
    with pytest.raises(HeadpatchError, match="links out of it"):
        push_folder(out, PushOptions("me/pear"))
    assert len([r for r in hub.requests if "/commit/" in r.url.path]) == commits
