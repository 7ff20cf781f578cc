"""Where a model's inputs belong when accelerate has spread its layers over GPUs, CPU memory and disk."""

from __future__ import annotations

from typing import Any

import torch


def input_device(model: Any) -> torch.device:
    """The device token ids must be sent to: the input embedding's execution device."""
    embeddings = model.get_input_embeddings()
    # An offloaded embedding keeps its weight on the meta device; accelerate's hook names where it really runs.
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    return embeddings.weight.device
