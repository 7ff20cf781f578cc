"""The PEAR proxy task: random token sequences repeated once, x_1..x_n x_1..x_n."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from headpatch.pear.memory import scoring_chunk
from headpatch.pear.upper import LowerStates, fed_from
from headpatch.runtime import input_device

# Each purpose draws from its own seed stream, so evaluation never reuses location or training sequences.
PURPOSES = ("locate", "train", "eval", "select")


@dataclass(frozen=True)
class CopyBatch:
    """`samples` proxy sequences, each `prefix` special tokens then 2n sampled tokens."""

    input_ids: torch.Tensor  # [samples, prefix + 2n]
    n: int
    prefix: int

    @property
    def scored_position(self) -> int:
        """Position whose prediction (x_n) PEAR location scores: 0-based 2n-2 after the prefix."""
        return self.prefix + 2 * self.n - 2

    @property
    def copy_positions(self) -> slice:
        """Positions whose next token is copyable from the first half (predicting x_2..x_n of the repeat)."""
        return slice(self.prefix + self.n, self.prefix + 2 * self.n - 1)


def sampleable_ids(vocab_size: int, tokenizer: Any = None, config: Any = None) -> torch.Tensor:
    """Token ids the task may sample: the vocabulary without special or added tokens."""
    excluded: set[int] = set()
    if tokenizer is not None:
        excluded.update(tokenizer.all_special_ids)
        excluded.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
        vocab_size = min(vocab_size, len(tokenizer))
    if config is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            value = getattr(config, key, None)
            excluded.update(value if isinstance(value, list) else [value] if value is not None else [])
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in excluded if 0 <= i < vocab_size]] = False
    return keep.nonzero().flatten()


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before any text (e.g. Llama's BOS), so proxy inputs look like real ones."""
    if tokenizer is None:
        return []
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def seed_for(purpose: str, seed: int, samples: int, n: int) -> int:
    """A stable seed per (purpose, seed, setting); different purposes never share a stream."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    return zlib.crc32(f"headpatch:{purpose}:{seed}:{samples}:{n}".encode())


def copy_batch(
    vocab: torch.Tensor, samples: int, n: int, seed: int, purpose: str, prefix: list[int] | None = None
) -> CopyBatch:
    """Sample a reproducible batch of repeated random-token sequences."""
    generator = torch.Generator().manual_seed(seed_for(purpose, seed, samples, n))
    picks = torch.randint(len(vocab), (samples, n), generator=generator)
    tokens = vocab[picks]
    prefix = prefix or []
    head = torch.tensor(prefix, dtype=torch.long).expand(samples, len(prefix))
    return CopyBatch(torch.cat([head, tokens, tokens], dim=1), n, len(prefix))


def copy_logits(model: Any, ids: torch.Tensor, batch: CopyBatch) -> torch.Tensor:
    """Logits at the copyable positions only; the vocabulary projection of the other positions is skipped."""
    # Positions as a tensor, not a count: indexing gathers them into one contiguous block, which the LM head projects
    # with a single matrix product; a trailing slice of a batch is a strided view, projected (and back-propagated)
    # row by row, reading the vocabulary matrix once per sequence (a training step 15% slower on SmolLM2). On the
    # CPU, because the final hidden states may sit on another device than the input ids (layers split over GPUs) and
    # a CPU index goes to whichever device it indexes.
    positions = torch.arange(batch.copy_positions.start, batch.copy_positions.stop)
    return model(input_ids=ids, use_cache=False, logits_to_keep=positions).logits


def copy_targets(ids: torch.Tensor, batch: CopyBatch) -> torch.Tensor:
    """The tokens the copyable positions should predict."""
    return ids[:, batch.copy_positions.start + 1 : batch.copy_positions.stop + 1]


def copy_loss(model: Any, ids: torch.Tensor, batch: CopyBatch) -> torch.Tensor:
    """Mean next-token loss over the copyable second half only."""
    logits = copy_logits(model, ids, batch).float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), copy_targets(ids, batch).flatten())


def _scoring_chunk(model: Any, batch: CopyBatch) -> int:
    """The default chunk for `batch`: from the LM head's rows, the logits' real width (a vocabulary padded past the
    config's), or the config's vocabulary for a model that exposes no head."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size
    return scoring_chunk(batch.n - 1, vocab)


@torch.no_grad()
def copy_scores(model: Any, batch: CopyBatch, chunk: int | None = None,
                lower: LowerStates | None = None) -> tuple[list[float], list[float]]:
    """Per sequence: the mean loss over its copyable positions, and the share of them whose top token is the copied
    one. Their means are the batch's copy loss and accuracy. `chunk` sequences per forward (default: as many as
    the scoring memory budget holds); `lower`, the batch's residual stream entering a layer below which the model is
    unchanged, saves running the layers below it."""
    device = input_device(model)
    chunk = _scoring_chunk(model, batch) if chunk is None else chunk
    losses: list[float] = []
    accuracy: list[float] = []
    for start in range(0, len(batch.input_ids), chunk):
        ids = batch.input_ids[start : start + chunk].to(device)
        with fed_from(lower, model, slice(start, start + chunk)):
            logits = copy_logits(model, ids, batch).float()
        targets = copy_targets(ids, batch)
        # over rows of the vocabulary, as copy_loss: over a [rows, vocabulary, positions] view the per-position
        # losses of SmolLM2 were up to 2e-4 off their float64 values, ten times the row-wise error
        position_losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        losses += position_losses.view_as(targets).mean(-1).tolist()
        accuracy += (logits.argmax(-1) == targets).float().mean(-1).tolist()
    return losses, accuracy
