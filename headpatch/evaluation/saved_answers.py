"""Greedy answers written down as each batch finishes, so that an interrupted `headpatch eval` resumes where it stopped.

The long tasks (niah and mdqa at the full setting: about an hour per 135M model on a 2-core CPU) spend nearly all
their time generating answers. Each answer is filed under a digest of everything it depends on: the model (weight
files, config, generation config), dtype, device, machine and thread count, the library versions, the answer length,
the batch budget, and the whole list of prompts with the answer's place in it, since the batch a prompt is padded into
is formed from that list. A rerun with any of these changed finds nothing to reuse. A batch is skipped only when every
one of its answers is on file, so a resumed run's answers equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from headpatch._version import library_versions
from headpatch.loading import LoadedModel


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, str]:
    """The answers on file; a line cut short by a kill, or anything else unreadable, is ignored."""
    answers: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return answers
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("answer"), str):
            answers[entry["key"]] = entry["answer"]
    return answers


class AnswerLog:
    """Answers on file at `path` (JSON lines), read once when opened and appended to as batches finish.

    The file is created with the first answer, so a run refused before any work leaves nothing behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._answers = _read(path)
        self.resumed = len(self._answers)  # answers an earlier run left on file

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> str | None:
        """The answer filed under `key`, if any."""
        return self._answers.get(key)

    def add(self, answers: Mapping[str, str]) -> None:
        """File new answers, durably: a kill after this returns loses none of them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n"
                              for key, answer in answers.items())
            handle.flush()
            os.fsync(handle.fileno())
        self._answers.update(answers)

    def remove(self) -> None:
        """Delete the file, once the report it served is written."""
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelAnswers:
    """The log as one model's generation sees it: `model` digests everything about the model and where it runs."""

    log: AnswerLog
    model: str

    def keys(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_tokens: int) -> list[str]:
        """Where the answer to each of `prompts`, generated together under these settings, is filed."""
        listing = _digest([list(prompt) for prompt in prompts])
        return [_digest(self.model, max_new_tokens, batch_tokens, listing, i) for i in range(len(prompts))]


def _where(device: str) -> list[object]:
    """The machine a run's numbers come from: kernels and their reduction order depend on it."""
    accelerator = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else None
    return [device, platform.machine(), platform.processor(), torch.get_num_threads(), accelerator]


def model_answers(log: AnswerLog | None, loaded: LoadedModel, weights_sha256: str | None,
                  dtype: str) -> ModelAnswers | None:
    """`log` bound to one model, or None (nothing saved) without a log or when the model's weights have no known
    hash (a model built in memory): answers of a model that cannot be recognised again must not be reused."""
    if log is None or weights_sha256 is None:
        return None
    model = loaded.model
    return ModelAnswers(log, _digest(weights_sha256, model.config.to_json_string(),
                                     model.generation_config.to_json_string(), dtype, _where(str(model.device)),
                                     library_versions()))


def log_path(output: Path) -> Path:
    """Where `headpatch eval -o OUTPUT` keeps its answers until the report is written: beside OUTPUT, hidden, so
    that the report directory itself is only ever written whole."""
    output = output.resolve()
    return output.parent / f".{output.name}.answers.jsonl"

