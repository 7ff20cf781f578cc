"""The Hugging Face Hub: fetch only what an export needs, read a config alone, publish a folder."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headpatch.errors import HeadpatchError
from headpatch.io.atomic import MANIFEST
from headpatch.io.card import LICENSE_PATTERNS
from headpatch.io.checkpoint import INDEX_FILE, SINGLE_FILE, read_index, resolves_inside
from headpatch.io.files import read_json
from headpatch.loading import Source
from headpatch.options import check_repo_id

# Config, generation config, tokenizer files, chat templates, the card and the license: everything an export carries
# or reads besides the weights.
SMALL_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py", "README.md", *LICENSE_PATTERNS]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _weight_files_to_fetch(repo_id: str, revision: str | None) -> list[str]:
    """The safetensors files a load would read: model.safetensors if present, else the shards its index names."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        hf_hub_download(repo_id, SINGLE_FILE, revision=revision)
        return [SINGLE_FILE]
    except EntryNotFoundError:
        pass
    try:
        index = Path(hf_hub_download(repo_id, INDEX_FILE, revision=revision))
    except EntryNotFoundError:
        return []  # weight_files() then explains that only other formats exist
    # The names become download patterns: read_index refuses any that is not a plain file name ("*" would fetch all).
    return [INDEX_FILE, *sorted(set(read_index(index).values()))]


def cached_checkpoint_dir(source: Source) -> Path | None:
    """The directory already on disk holding the source's files (a local checkpoint, or its snapshot in the Hub
    cache); None when it is not cached. Never downloads."""
    location = Path(source.location)
    if location.is_dir():
        return location
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.location, revision=source.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss means "not on disk"
        return None


def checkpoint_dir(source: Source) -> Path:
    """A local directory holding the source's files: itself, or a Hub snapshot of just the config, tokenizer and the
    safetensors weights a load would read (cache, HF_HUB_OFFLINE and the revision honoured)."""
    location = Path(source.location)
    if location.is_dir():
        return location
    from huggingface_hub import snapshot_download

    try:
        weights = _weight_files_to_fetch(source.location, source.revision)
        return Path(snapshot_download(source.location, revision=source.revision,
                                      allow_patterns=[*SMALL_FILES, *weights]))
    except HeadpatchError:
        raise
    except Exception as exc:  # huggingface_hub raises many types; all mean the files could not be had
        raise HeadpatchError(f"cannot fetch {source.location} from the Hub: {_first_line(exc)}") from exc


def read_config(name: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a local checkpoint or a Hub repo, without touching any weights."""
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise HeadpatchError(f"{name} has no config.json")
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(name, "config.json", revision=revision))
        except Exception as exc:
            raise HeadpatchError(f"cannot fetch config.json of {name} from the Hub: {_first_line(exc)}") from exc
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise HeadpatchError(f"{config_file} is not a JSON object")
    return config


@dataclass(frozen=True)
class PushOptions:
    """Where and how to publish an export."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)

    def retry_command(self, folder: Path) -> str:
        """The `headpatch push` command line that repeats this push."""
        parts = ["headpatch", "push", str(folder), self.repo_id]
        if self.private:
            parts.append("--private")
        if self.revision:
            parts += ["--revision", self.revision]
        if self.commit_message:
            parts += ["--commit-message", self.commit_message]
        return shlex.join(parts)


def push_folder(folder: Path, options: PushOptions) -> str:
    """Create the repo if needed and upload the folder as one commit; return the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    # headpatch.json is written by both kinds of export (a transformers folder, a GGUF file with its card)
    if not (folder / "headpatch.json").is_file():
        raise HeadpatchError(f"{folder} is not a headpatch export (no headpatch.json)")
    # the upload follows links, which an export never holds: one out of the folder would publish another file
    outside = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                     if path.is_symlink() and not resolves_inside(path, (folder.resolve(),)))
    if outside:
        raise HeadpatchError(f"{folder} holds links out of it ({', '.join(outside[:5])}); refusing to upload what "
                             "they point to")
    api = HfApi()  # the token comes from HF_TOKEN or the stored login; it is never passed through our code
    message = options.commit_message or f"Upload {folder.name} patched with headpatch"
    try:
        api.create_repo(options.repo_id, private=options.private, exist_ok=True, repo_type="model")
        # create_repo(exist_ok=True) leaves an existing repo's visibility as it is
        if options.private and not api.repo_info(options.repo_id, repo_type="model").private:
            raise HeadpatchError(f"{options.repo_id} already exists and is public; refusing to upload a --private push")
        if options.revision:
            api.create_branch(options.repo_id, branch=options.revision, exist_ok=True)
        # The manifests only guard local --overwrite; a clone of the repo must not pass for an earlier output.
        info = api.upload_folder(folder_path=folder, repo_id=options.repo_id, revision=options.revision,
                                 commit_message=message, repo_type="model", ignore_patterns=[f"*{MANIFEST}"])
    except Exception as exc:
        raise HeadpatchError(
            f"push to {options.repo_id} failed ({_first_line(exc)}); the export is kept at {folder}; retry with: "
            f"{options.retry_command(folder)}") from exc
    return str(getattr(info, "commit_url", info))
