import torch

from headpatch.architectures import head_layout
from headpatch.pear.scaling import HeadScaling
from headpatch.options import TrainOptions
from headpatch.pear.train import train_coefficients
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
