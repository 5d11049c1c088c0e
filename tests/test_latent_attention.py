"""`trajectory_prediction="latent_attention"`: the trajectory loss reads the latent tokens' own attention over the
image tokens (docs/method.md section 2), on tiny random students of every family."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from test_modeling import SAMPLES, batch, clone, staged, targets

from lavit_hf import STUDENT_FAMILIES
from lavit_hf.attention import FLEX_ATTENTION, register_flex_attention


@pytest.fixture(scope="module", params=list(STUDENT_FAMILIES))
def student(request, tiny_students):
    return tiny_students(request.param)


def reading_latent_attention(model, layers=None):
    model.config.trajectory_prediction = "latent_attention"
    model.config.trajectory_attention_layers = layers
    return model


def eager_latent_trajectory(model, inputs, layers):
    """The expected distribution from eager attention's own weights (`output_attentions=True`)."""
    with torch.no_grad():
        attentions = model.model(**inputs, output_attentions=True).attentions
    chosen = range(len(attentions)) if layers is None else [i % len(attentions) for i in layers]
    weights = torch.stack([attentions[i] for i in chosen]).mean(0).mean(1)  # (batch, seq, seq)
    latent_ids = torch.tensor(model.config.latent_token_ids)
    expected = []
    for sample, row in enumerate(inputs["input_ids"]):
        latent_rows = torch.isin(row, latent_ids).nonzero().flatten()
        image_keys = (row == model.config.image_token_id).nonzero().flatten()
        on_image = weights[sample][latent_rows][:, image_keys].mean(0)
        expected.append(on_image / on_image.sum())
    return expected


@pytest.mark.parametrize("stage", [0, 1])
@pytest.mark.parametrize("layers", [None, [-1]])
def test_the_trajectory_is_the_latent_tokens_eager_attention_on_the_image(student, stage, layers):
    model, processor = student
    model = reading_latent_attention(staged(model, stage, "eager"), layers)
    inputs = batch(processor, SAMPLES)  # two samples of different lengths: right padding
    expected = eager_latent_trajectory(model, inputs, layers)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        predicted = model(**inputs, **targets(model, inputs)).trajectory_log_probs.exp()
    for sample, distribution in enumerate(expected):
        n = distribution.numel()
        torch.testing.assert_close(predicted[sample, :n], distribution, atol=1e-5, rtol=1e-4)
        assert torch.all(predicted[sample, n:] == 0)
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # restored after the forward


def test_the_loss_trains_the_attention_not_the_trajectory_head(tiny_lavit):
    model, processor = tiny_lavit
    model = reading_latent_attention(model.train(), layers=[0])
    inputs = batch(processor, SAMPLES)
    out = model(**inputs, **targets(model, inputs))
    out.loss_traj.backward()
    attention = model.model.language_model.layers[0].self_attn
    assert attention.q_proj.weight.grad.abs().sum() > 0 and attention.k_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.trajectory_query.parameters())
    assert out.loss_traj > 0


def test_the_latent_tokens_learn_to_look_where_the_teacher_looked(tiny_lavit):
    """A few optimiser steps on the latent-attention loss alone move the latent tokens' attention onto the target."""
    model, processor = tiny_lavit
    model = reading_latent_attention(model.train())
    inputs = batch(processor, SAMPLES[:1])
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    target = torch.zeros(1, n)
    target[0, n // 2] = 1.0
    goal = {"trajectory_target": target, "trajectory_mask": torch.ones(1, n, dtype=torch.bool)}
    optimizer = torch.optim.Adam(model.model.language_model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(**inputs, **goal).loss_traj
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


def test_latent_attention_is_refused_where_it_cannot_be_read(tiny_lavit):
    model, processor = tiny_lavit
    model = reading_latent_attention(model.train())
    inputs = batch(processor, SAMPLES)
    goal = targets(model, inputs)
    model.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="activation checkpointing"):
        model(**inputs, **goal)
    model.activation_checkpointing_disable()
    model.set_attn_implementation({"text_config": register_flex_attention()})
    with pytest.raises(ValueError, match=f"not '{FLEX_ATTENTION}'"):
        model(**inputs, **goal)


def test_latent_attention_settings_are_checked(tiny_lavit_pair):
    model, _ = tiny_lavit_pair
    config = clone(model).config
    with pytest.raises(StrictDataclassError, match="trajectory_attention_layers"):
        type(config)(
            **{**config.to_dict(), "trajectory_prediction": "latent_attention", "trajectory_attention_layers": [5]}
        )
    with pytest.raises(StrictDataclassError, match="trajectory_prediction"):
        type(config)(**{**config.to_dict(), "trajectory_prediction": "attention"})
    with pytest.raises(StrictDataclassError, match="read only with trajectory_prediction='latent_attention'"):
        type(config)(**{**config.to_dict(), "trajectory_attention_layers": [0]})


def test_compiled_blocks_read_the_same_latent_attention_with_gradients(tiny_lavit_pair):
    """Under the trainer's compiled blocks the observer still sees every read layer once, with autograd history."""
    from lavit_hf.compilation import compile_repeated_blocks

    model, processor = tiny_lavit_pair
    inputs = batch(processor, SAMPLES)
    losses, gradients = [], []
    for compiled in (False, True):
        student = reading_latent_attention(clone(model).train(), layers=[0, 1])
        if compiled:
            torch._dynamo.reset()
            assert compile_repeated_blocks(student, vision=False, backend="aot_eager") == 2
        out = student(**inputs, **targets(student, inputs))
        out.loss_traj.backward()
        losses.append(out.loss_traj.detach())
        gradients.append(student.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-5, rtol=1e-4)
