"""The Hugging Face Hub: fetch only what an export needs, read a config alone, publish a folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headpatch.checkpoint import OTHER_WEIGHT_PATTERNS
from headpatch.errors import HeadpatchError
from headpatch.loading import Source

# Llama's original/ folder holds a second, consolidated copy of the weights that an export does not use.
SKIPPED_ON_DOWNLOAD = [*OTHER_WEIGHT_PATTERNS, "original/*"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def checkpoint_dir(source: Source) -> Path:
    """A local directory holding the source's files: itself, or a Hub snapshot (cache, HF_HUB_OFFLINE honoured)."""
    location = Path(source.location)
    if location.is_dir():
        return location
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.location, revision=source.revision, ignore_patterns=SKIPPED_ON_DOWNLOAD))
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
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadpatchError(f"cannot read {config_file}: {exc}") from exc


@dataclass(frozen=True)
class PushOptions:
    """Where and how to publish an export."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None

    def retry_command(self, folder: Path) -> str:
        """The `headpatch push` command line that repeats this push."""
        parts = ["headpatch", "push", str(folder), self.repo_id]
        if self.private:
            parts.append("--private")
        if self.revision:
            parts += ["--revision", self.revision]
        if self.commit_message:
            parts += ["--commit-message", json.dumps(self.commit_message)]
        return " ".join(parts)


def push_folder(folder: Path, options: PushOptions) -> str:
    """Create the repo if needed and upload the folder as one commit; return the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HeadpatchError(f"{folder} is not an exported checkpoint (no config.json)")
    api = HfApi()  # the token comes from HF_TOKEN or the stored login; it is never passed through our code
    message = options.commit_message or f"Upload {folder.name} patched with headpatch"
    try:
        api.create_repo(options.repo_id, private=options.private, exist_ok=True, repo_type="model")
        if options.revision:
            api.create_branch(options.repo_id, branch=options.revision, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=options.repo_id, revision=options.revision,
                                 commit_message=message, repo_type="model")
    except Exception as exc:
        raise HeadpatchError(
            f"push to {options.repo_id} failed ({_first_line(exc)}); the export is kept at {folder}; retry with: "
            f"{options.retry_command(folder)}") from exc
    return str(getattr(info, "commit_url", info))
