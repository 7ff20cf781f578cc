import pytest
import torch

from headpatch.pear.proxy import PURPOSES, copy_batch, sampleable_ids, seed_for, special_prefix
from tests.test_architectures import REQUIRED


def test_batches_are_reproducible_and_repeat_their_first_half():
    vocab = torch.arange(5, 100)
    a = copy_batch(vocab, 4, 10, seed=3, purpose="train", prefix=[1])
    b = copy_batch(vocab, 4, 10, seed=3, purpose="train", prefix=[1])
    assert torch.equal(a.input_ids, b.input_ids)
    assert a.input_ids.shape == (4, 21)
    assert torch.equal(a.input_ids[:, 1:11], a.input_ids[:, 11:])
    assert (a.input_ids[:, 0] == 1).all()
    assert a.scored_position == 1 + 2 * 10 - 2
    assert a.input_ids[0, a.scored_position + 1] == a.input_ids[0, 10]  # predicting x_n


def test_purposes_and_seeds_draw_different_sequences():
    vocab = torch.arange(5, 1000)
    batches = [copy_batch(vocab, 4, 10, seed, purpose).input_ids for purpose in PURPOSES for seed in (0, 1)]
    assert all(not torch.equal(x, y) for i, x in enumerate(batches) for y in batches[i + 1:])
    assert len({seed_for(p, 0, 4, 10) for p in ("locate", "train", "eval")}) == 3


def test_special_and_added_tokens_are_never_sampled(smollm2):
    tokenizer, config = smollm2.tokenizer, smollm2.model.config
    vocab = sampleable_ids(config.vocab_size, tokenizer, config)
    banned = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert banned and not banned & set(vocab.tolist())
    batch = copy_batch(vocab, 50, 200, 0, "locate", special_prefix(tokenizer))
    assert not banned & set(batch.input_ids.flatten().tolist())


def test_config_special_ids_are_excluded_without_a_tokenizer():
    class Config:
        bos_token_id, eos_token_id, pad_token_id = 1, [2, 7], 0

    vocab = sampleable_ids(10, None, Config()).tolist()
    assert vocab == [3, 4, 5, 6, 8, 9]


@pytest.mark.parametrize("model_type", REQUIRED)
def test_copy_logits_are_the_full_forward_at_the_copyable_positions(model_type):
    from headpatch.pear.proxy import copy_logits, copy_targets
    from tests.tiny import tiny_model

    model = tiny_model(model_type)
    batch = copy_batch(torch.arange(3, 300), 3, 9, 0, "eval", prefix=[1])
    with torch.no_grad():
        full = model(batch.input_ids).logits
        kept = copy_logits(model, batch.input_ids, batch)
    assert kept.shape[1] == batch.n - 1
    torch.testing.assert_close(kept, full[:, batch.copy_positions], atol=1e-5, rtol=0)
    assert torch.equal(copy_targets(batch.input_ids, batch), batch.input_ids[:, 1 + 9 + 1:])



def test_copy_positions_go_to_the_model_on_the_cpu_whatever_device_the_ids_are_on():
    """Layers split over GPUs leave the final hidden states on another device than the input ids; a CPU index tensor
    indexes a tensor on any device, one on the ids' device would not."""
    from types import SimpleNamespace

    from headpatch.pear.proxy import copy_logits

    seen = []

    def model(input_ids, use_cache, logits_to_keep):
        seen.append(logits_to_keep)
        return SimpleNamespace(logits=None)

    batch = copy_batch(torch.arange(3, 300), 2, 6, 0, "eval", prefix=[1])
    copy_logits(model, batch.input_ids.to("meta"), batch)  # ids on a device other than the CPU
    assert seen[0].device.type == "cpu" and seen[0].tolist() == list(range(7, 12))


def test_scoring_chunks_keep_their_logits_within_the_budget():
    from headpatch.pear.memory import SCORING_BYTES, SCORING_CHUNK, scoring_chunk

    assert scoring_chunk(24, 49_152) == SCORING_CHUNK  # SmolLM2's selection set: twenty sequences at once
    assert scoring_chunk(199, 262_144) == 2  # Gemma-3's n=200 check: 420 MB a sequence, float32 logits and log-softmax
    assert scoring_chunk(4_000, 262_144) == 1  # one sequence, even past the budget
    for positions, vocab in ((199, 262_144), (99, 128_256), (199, 49_152)):
        chunk = scoring_chunk(positions, vocab)
        assert chunk * positions * vocab * 8 <= SCORING_BYTES < (chunk + 1) * positions * vocab * 8


def test_copy_scores_do_not_depend_on_how_many_sequences_a_forward_holds(monkeypatch):
    from headpatch.pear import memory
    from headpatch.pear.proxy import copy_scores
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    batch = copy_batch(torch.arange(3, model.config.vocab_size), 7, 9, 0, "eval", prefix=[1])
    forwards = []
    model.register_forward_hook(lambda module, args, output: forwards.append(1))
    whole = copy_scores(model, batch, chunk=7)
    assert len(forwards) == 1
    # a budget of three sequences' logits (8 positions, float32 and log-softmax)
    monkeypatch.setattr(memory, "SCORING_BYTES", 3 * 8 * model.config.vocab_size * 8)
    chunked = copy_scores(model, batch)
    assert len(forwards) == 1 + 3  # 3 + 3 + 1 sequences
    assert chunked[0] == pytest.approx(whole[0], abs=1e-6)
    assert chunked[1] == whole[1]


def test_the_check_memory_estimate_covers_the_chunk_of_every_length():
    from headpatch.options import TrainOptions
    from headpatch.pear.memory import ModelShape, heldout_bytes, scoring_chunk

    gemma3 = ModelShape(parameters=268_098_176, num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256,
                        hidden_size=640, intermediate_size=2048, vocab_size=262_144)
    options = TrainOptions()
    estimate = heldout_bytes(gemma3, 4, options)
    # n=100 holds the most (5 sequences, 1.04 GB), not the longest length (2 sequences of n=200, 0.83 GB)
    held = {n: min(scoring_chunk(n - 1, gemma3.vocab_size), options.eval_samples) * (n - 1) * gemma3.vocab_size * 8
            for n in {options.n, *options.eval_lengths}}
    assert max(held, key=held.get) == 100
    assert max(held.values()) <= estimate <= max(held.values()) + 50_000_000  # plus the stored states, 39 MB
