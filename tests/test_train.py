import pytest
import torch

from headpatch.architectures import head_layout
from headpatch.options import TrainOptions
from headpatch.pear.scaling import HeadScaling
from headpatch.pear.train import train_coefficients
from tests.test_architectures import REQUIRED
from tests.tiny import tiny_model

QUICK = TrainOptions(steps=20, batch_size=8, n=8, lr=5e-2, eval_lengths=(8, 16), eval_samples=16)


def test_training_moves_only_the_coefficients_and_lowers_the_loss():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = head_layout(model.config)
    heads = [(1, 2), (2, 0)]
    result = train_coefficients(model, None, layout, heads, QUICK, show_progress=False)
    assert set(result.coefficients) == set(heads)
    assert any(abs(c - 1.0) > 1e-3 for c in result.coefficients.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())
    assert result.after.loss < result.before.loss
    assert set(result.before.accuracy) == {8, 16}
    assert len(result.losses) == QUICK.steps


def test_coefficients_stay_float32_on_a_bf16_model():
    model = tiny_model("qwen2").to(torch.bfloat16)
    layout = head_layout(model.config)
    scaling = HeadScaling([(0, 1)], layout).attach(model)
    assert scaling.coefficients.dtype == torch.float32
    scaling.detach()
    result = train_coefficients(model, None, layout, [(0, 1)], QUICK, show_progress=False)
    # bf16 has 8 bits of mantissa: a coefficient learned in float32 is not a bf16 value in general.
    value = result.coefficients[(0, 1)]
    assert torch.tensor(value).to(torch.bfloat16).float().item() != value


def test_training_is_deterministic():
    runs = []
    for _ in range(2):
        model = tiny_model("llama")
        runs.append(train_coefficients(model, None, head_layout(model.config), [(1, 1)], QUICK, show_progress=False))
    assert runs[0].coefficients == runs[1].coefficients



def _reference_check(model, check, options):
    """The check as whole forwards: the loss over the training n's batch at once, accuracy as the share of all
    copyable positions whose top token is the copied one."""
    from headpatch.pear.proxy import copy_logits, copy_loss, copy_targets

    def hit_rate(batch):
        with torch.no_grad():
            hits = copy_logits(model, batch.input_ids, batch).argmax(-1) == copy_targets(batch.input_ids, batch)
        return hits.float().mean().item()

    batch = check.batches[options.n]
    loss = copy_loss(model, batch.input_ids, batch).item()
    return loss, {n: hit_rate(check.batches[n]) for n in options.eval_lengths}


@pytest.mark.parametrize("model_type", REQUIRED)
def test_the_check_from_the_lowest_patched_layer_equals_whole_forwards(model_type):
    from headpatch.pear.memory import SCORING_CHUNK
    from headpatch.pear.proxy import sampleable_ids
    from headpatch.pear.scaling import scaled_heads
    from headpatch.pear.train import check_set, checked

    model = tiny_model(model_type)
    layout = head_layout(model.config)
    start = layout.num_layers - 2
    coefficients = {(start, 0): 3.0, (start + 1, layout.num_heads - 1): 0.2}
    # more sequences than one forward scores, so the stored states are fed chunk by chunk
    options = TrainOptions(n=8, eval_lengths=(8, 12), eval_samples=SCORING_CHUNK + 7)
    check = check_set(sampleable_ids(model.config.vocab_size, None, model.config), [1], options)
    assert sorted(check.batches) == [8, 12]  # the loss batch is the n=8 accuracy batch
    before, after = checked(model, layout, check, coefficients)
    with torch.no_grad():
        reference_before = _reference_check(model, check, options)
        with scaled_heads(model, layout, coefficients):
            reference_after = _reference_check(model, check, options)
    assert after.loss != pytest.approx(before.loss, abs=2e-5)  # the coefficients change what is checked
    for mine, reference in ((before, reference_before), (after, reference_after)):
        assert mine.loss == pytest.approx(reference[0], rel=1e-6, abs=1e-6)
        assert mine.accuracy == pytest.approx(reference[1], abs=1e-6)


class _Copier(torch.nn.Module):
    """Predicts the copied token at every copyable position of even rows and token 0 elsewhere: a known accuracy."""

    def __init__(self, n: int, vocab: int):
        super().__init__()
        self.n, self.vocab = n, vocab
        self.embed = torch.nn.Embedding(vocab, 1)
        self.head = torch.nn.Linear(1, vocab, bias=False)  # the scoring chunk is sized from its vocabulary

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        from types import SimpleNamespace

        copied = input_ids[:, logits_to_keep + 1 - self.n]
        copied[1::2] = 0
        return SimpleNamespace(logits=torch.nn.functional.one_hot(copied, self.vocab).float() * 5)


def test_the_check_counts_hits_and_weighs_chunks_by_their_sequences():
    from headpatch.pear.memory import SCORING_CHUNK
    from headpatch.pear.train import check_set, evaluate_copy

    rows = SCORING_CHUNK + 7  # a full chunk and a short one
    options = TrainOptions(n=5, eval_lengths=(9,), eval_samples=rows)
    vocab = torch.arange(3, 50)
    check = check_set(vocab, [1], options)
    assert sorted(check.batches) == [5, 9] and len(check.batches[9].input_ids) == rows
    copier = _Copier(9, 50)
    result = evaluate_copy(copier, check)
    assert list(result.accuracy) == [9]
    assert result.accuracy[9] == pytest.approx(((rows + 1) // 2) / rows, abs=1e-9)  # the even rows hit everywhere
    with torch.no_grad():
        reference = evaluate_copy(_Copier(5, 50), check_set(vocab, [1], TrainOptions(n=5, eval_lengths=(5,),
                                                                                     eval_samples=rows)))
        hit, miss = torch.log_softmax(torch.tensor([5.0] + [0.0] * 49), 0)[[0, 1]].tolist()
    assert reference.accuracy[5] == pytest.approx(((rows + 1) // 2) / rows, abs=1e-9)
    # the loss at n=5 is the mean over every copyable position: -log p of the hit on even rows, of a miss on odd ones
    assert reference.loss == pytest.approx(-(hit * ((rows + 1) // 2) + miss * (rows // 2)) / rows, rel=1e-6)
