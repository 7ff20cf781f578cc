"""Estimates of the memory each step needs, from a model's shape alone (no weights loaded).

The working-memory figures follow what the code keeps alive, summed over all devices a placement spreads it over:
location holds the clean key/value cache plus one widened copy per chunk size of heads recomputed together, training
holds the activations autograd saves to reach the coefficients, detection holds one prompt's cache and the per-layer
attention of its query span, and the streaming export holds one output projection at a time.

They count live tensors. A process's peak matches them only when freed activations go back to the system: under
glibc's default malloc, tensors of a few MB freed during a forward pass stay in its heap, fragmented, and a first
training step of the Llama-3.2-1B shape peaked 31% above its live tensors (bench/real_scale.py). PyTorch's
huge-page allocation (ALLOCATOR_ENV) gives 2 MB-aligned buffers that are returned whole; the CLI sets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from headpatch.errors import HeadpatchError
from headpatch.options import GUARD_WINDOW, LocateOptions, TrainOptions, TuneOptions

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # "auto" keeps the checkpoint's, 16-bit for most
DETECT_TOKENS = 4096  # a long QRHead prompt (the built-in set's are about 1,300)
QUERY_TOKENS = 64  # the query span: instruction, question and assistant header after the documents
PREFIX_TOKENS = 1  # special tokens in front of a proxy sequence (Llama's BOS)
# Sequences per forward when scoring without gradients (the check, tuning's selection set, eval's copy task): at most
# SCORING_CHUNK, and no more than keep their float32 logits and log-softmax within SCORING_BYTES (a 16-bit model's
# own logits add a quarter; one sequence goes alone even past the budget). Over a large vocabulary these dominate:
# Gemma-3-270M's 262k tokens take 420 MB per sequence of n=200, so twenty at once held 8.4 GB and the check, not
# training, set the export's peak.
SCORING_CHUNK = 20
SCORING_BYTES = 1 << 30
# Read by PyTorch once, at its first CPU allocation, so it must be in the environment before torch allocates anything.
ALLOCATOR_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}

# Where a model_type's decoder layer keeps more for backward than a Llama-style one (checked by the tests).
LAYER_TRAITS: dict[str, dict[str, object]] = {
    "qwen3": {"qk_norm": True},
    "olmo2": {"qk_norm": True},
    "gemma2": {"norms_per_layer": 4, "eager_attention": True},  # softcapped logits: transformers runs eager attention
    # Exact while the sequence fits the sliding window (PEAR's default proxy of 101 tokens does, in Gemma 3's 512);
    # past it, sliding layers get a materialised mask and K/V repeated per query head, which are not counted.
    "gemma3_text": {"norms_per_layer": 4, "qk_norm": True},
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide memory: parameter count and the transformer's geometry."""

    parameters: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    norms_per_layer: int = 2
    qk_norm: bool = False  # RMS norms on queries and keys
    eager_attention: bool = False  # attention probabilities materialised (and kept for backward)

    @property
    def attention_width(self) -> int:
        """Width of the query heads together (the o_proj input), not always the hidden size."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the key (or value) heads together."""
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class StepMemory:
    """One step's estimate: the weights, and what it needs on top of them."""

    step: str
    weights: int  # bytes
    working: int  # bytes
    holds: str  # what the working memory is


def allocate_on_huge_pages() -> None:
    """Ask PyTorch for huge-page CPU buffers unless the environment already says; no effect once torch allocated."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """Keys and values of one token over all layers."""
    return 2 * shape.num_layers * shape.kv_width * dtype_bytes


def layer_forward_bytes(shape: ModelShape, dtype_bytes: int, tokens: int) -> int:
    """One decoder layer's forward temporaries for `tokens` tokens: the MLP's three intermediate tensors and a few
    hidden-size ones (residual, norm, attention output)."""
    return tokens * (3 * shape.intermediate_size + 4 * shape.hidden_size) * dtype_bytes


def _chunk_sizes(num_heads: int, per_chunk: int) -> set[int]:
    # head_effects keeps one widened cache per distinct chunk size: the full chunks and the remainder
    if num_heads <= per_chunk:
        return {num_heads}
    return {per_chunk} | ({num_heads % per_chunk} if num_heads % per_chunk else set())


def locate_bytes(shape: ModelShape, dtype_bytes: int, options: LocateOptions, prefix: int = PREFIX_TOKENS) -> int:
    """Peak over the settings of: the clean cache, the widened caches, one layer of a recomputed batch, and the clean
    run's logits at the scored position (float32).

    A recomputed batch is one position for `rows` rows (samples × heads in the chunk). Its largest moment is one layer:
    appending the position copies that layer's widened cache, and the MLP holds its three intermediate tensors. Only
    the copied token's logit is computed for it, a row of the output embedding per row, not the vocabulary.
    """
    per_token = kv_bytes_per_token(shape, dtype_bytes)
    worst = 0
    for samples, n in options.settings:
        length = prefix + 2 * n
        per_chunk = max(1, options.max_rows // samples)
        widened = sum(samples * copies * (length - 1) for copies in _chunk_sizes(shape.num_heads, per_chunk))
        rows = samples * min(per_chunk, shape.num_heads)
        layer = rows * length * per_token // shape.num_layers + layer_forward_bytes(shape, dtype_bytes, rows)
        logits = samples * shape.vocab_size * (dtype_bytes + 4)
        worst = max(worst, (samples * length + widened) * per_token + layer + logits)
    return worst


def activation_bytes_per_token_layer(shape: ModelShape, dtype_bytes: int, sequence: int) -> int:
    """What autograd saves per token and layer when only head coefficients need gradients.

    Frozen linear layers keep no copy of their inputs (only a reference to their weights), so what remains is
    attention (queries, keys, values, output), the gated MLP's three intermediate tensors, and the float32 input
    each RMS norm keeps; eager attention also keeps its logits and float32 probabilities over the `sequence` keys.
    """
    saved = 2 * shape.attention_width + 2 * shape.kv_width + 3 * shape.intermediate_size
    normed = shape.norms_per_layer * shape.hidden_size + (shape.attention_width + shape.kv_width) * shape.qk_norm
    eager = shape.num_heads * sequence * (2 * dtype_bytes + 4) if shape.eager_attention else 0
    return saved * dtype_bytes + 4 * normed + eager


def train_step_bytes(shape: ModelShape, dtype_bytes: int, options: TrainOptions, prefix: int = PREFIX_TOKENS) -> int:
    """Saved activations of one batch plus its copy-half logits (float32 with gradients)."""
    sequence = prefix + 2 * options.n
    per_token_layer = activation_bytes_per_token_layer(shape, dtype_bytes, sequence)
    activations = shape.num_layers * options.batch_size * sequence * per_token_layer
    return activations + options.batch_size * options.n * shape.vocab_size * (dtype_bytes + 12)


def scoring_chunk(positions: int, vocab_size: int) -> int:
    """Sequences per scoring forward when each has `positions` scored positions over `vocab_size` tokens."""
    return max(1, min(SCORING_CHUNK, SCORING_BYTES // (max(1, positions) * vocab_size * 8)))


def heldout_bytes(shape: ModelShape, dtype_bytes: int, options: TrainOptions, prefix: int = PREFIX_TOKENS) -> int:
    """The held-out copy check: the copy-half logits of one scoring chunk of sequences (as the model returns them, in
    float32, and their log-softmax) at whichever length holds the most, and every check sequence's residual stream
    entering the lowest patched layer, stored once for the base and the patched pass."""
    float_bytes = 4 if dtype_bytes == 4 else dtype_bytes + 4
    lengths = {options.n, *options.eval_lengths}
    logits = max(min(scoring_chunk(n - 1, shape.vocab_size), options.eval_samples) * (n - 1) * shape.vocab_size
                 * (float_bytes + 4) for n in lengths)
    stored = options.eval_samples * sum(prefix + 2 * n for n in lengths) * shape.hidden_size * dtype_bytes
    return logits + stored


def train_bytes(shape: ModelShape, dtype_bytes: int, options: TrainOptions, prefix: int = PREFIX_TOKENS) -> int:
    """The larger of a training step and the held-out check."""
    return max(train_step_bytes(shape, dtype_bytes, options, prefix),
               heldout_bytes(shape, dtype_bytes, options, prefix))


def tune_bytes(shape: ModelShape, dtype_bytes: int, options: TuneOptions, prefix: int = PREFIX_TOKENS) -> int:
    """Tuning's peak, the larger of its two phases.

    Training a candidate keeps, throughout, the base's log-probabilities over the training guard windows and the
    selection set's and those windows' residual streams entering the lowest trained layer; on top of them comes the
    largest of a training step at tuning's batch, the selection set's scoring, and one guard window's measurement (its
    logits and patched log-probabilities, then the KL's three temporaries beside them). The whole-text check keeps
    every checked window's residual stream and computes the base's log-probabilities window by window beside the
    patched ones. Over a large vocabulary the per-window distributions dominate: Gemma-3-270M's 262k tokens take 536 MB
    per window, float32. The held-out check of the chosen candidate is the training step's (`heldout_bytes`).
    """
    float_bytes = 4 if dtype_bytes == 4 else dtype_bytes + 4
    distribution = (GUARD_WINDOW - 1) * shape.vocab_size * 4  # one window's float32 log-probabilities
    forward = GUARD_WINDOW * shape.vocab_size * float_bytes + layer_forward_bytes(shape, dtype_bytes, GUARD_WINDOW)
    training = TrainOptions(batch_size=options.batch_size, n=options.n)
    select_scoring = (min(scoring_chunk(options.n - 1, shape.vocab_size), options.select_samples)
                      * (options.n - 1) * shape.vocab_size * (float_bytes + 4))
    kept = (options.select_samples * (prefix + 2 * options.n) + options.guard_windows * GUARD_WINDOW) \
        * shape.hidden_size * dtype_bytes + options.guard_windows * distribution
    train_phase = kept + max(train_step_bytes(shape, dtype_bytes, training, prefix), select_scoring,
                             forward + distribution, 4 * distribution)
    check_phase = options.check_windows * GUARD_WINDOW * shape.hidden_size * dtype_bytes \
        + max(distribution + forward + distribution, 5 * distribution)
    return max(train_phase, check_phase, heldout_bytes(shape, dtype_bytes, training, prefix))


def detect_bytes(shape: ModelShape, dtype_bytes: int, tokens: int = DETECT_TOKENS, query: int = QUERY_TOKENS) -> int:
    """One prompt's key/value cache, one layer's float32 query-span attention and activations, all heads' results."""
    cache = tokens * kv_bytes_per_token(shape, dtype_bytes)
    attention = 3 * shape.num_heads * query * tokens * 4  # scores, mask added, softmax
    layer = layer_forward_bytes(shape, dtype_bytes, tokens)
    results = 4 * shape.num_layers * shape.num_heads * tokens * 4  # real and "N/A" query, per layer and stacked
    return cache + attention + layer + results


def export_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """The streaming export's peak: one output projection read, folded in float32 and cast back."""
    return shape.hidden_size * shape.attention_width * (2 * dtype_bytes + 4)


def step_memory(
    shape: ModelShape, dtype: str, locate: LocateOptions = LocateOptions(), train: TrainOptions = TrainOptions(),
    detect_tokens: int = DETECT_TOKENS, tune: TuneOptions | None = None,
) -> list[StepMemory]:
    """Estimates for locate, train (or tune, when `tune` is given), detect and the streaming export at one dtype."""
    if dtype not in DTYPE_BYTES:
        raise HeadpatchError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    size = DTYPE_BYTES[dtype]
    weights = shape.parameters * size
    training = (StepMemory("train", weights, train_bytes(shape, size, train), "activations and copy-half logits")
                if tune is None else
                StepMemory("tune", weights, tune_bytes(shape, size, tune),
                           "activations, and the guard text's next-token distributions"))
    return [
        StepMemory("locate", weights, locate_bytes(shape, size, locate), "key/value caches and one recomputed layer"),
        training,
        StepMemory("detect", weights, detect_bytes(shape, size, detect_tokens),
                   f"cache and attention of one {detect_tokens:,}-token prompt"),
        StepMemory("export", 0, export_bytes(shape, size), "one output projection (weights stay on disk)"),
    ]


def gigabytes(size: int) -> str:
    """Bytes as decimal gigabytes with one decimal, e.g. '16.1 GB'."""
    return f"{size / 1e9:.1f} GB"
