"""`head_layer`: the heads read the hidden states after the first k decoder layers, which later positions can attend
to, instead of the final states, which no position reads (docs/method.md section 2)."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from test_modeling import SAMPLES, batch, clone, targets

from lavit_hf import STUDENT_FAMILIES


@pytest.fixture(scope="module", params=list(STUDENT_FAMILIES))
def student(request, tiny_students):
    return tiny_students(request.param)


def distillation_gradients(model, processor):
    """`loss_vtop + loss_traj`'s gradient norm on each decoder layer's parameters."""
    model = clone(model).train()
    model.set_training_stage(1)
    inputs = batch(processor, SAMPLES)
    outputs = model(**inputs, **targets(model, inputs))
    model.zero_grad()
    (outputs.loss_vtop + outputs.loss_traj).backward()
    layers = model.model.language_model.layers
    return [sum(float(p.grad.norm()) for p in layer.parameters() if p.grad is not None) for layer in layers]


def test_the_heads_read_the_states_after_head_layer_layers(student):
    model, processor = student
    num_layers = model.config.get_text_config().num_hidden_layers
    final = distillation_gradients(model, processor)
    assert all(norm > 0 for norm in final)  # the final states depend on every layer
    layered = clone(model)
    layered.config.head_layer = num_layers - 1
    gradients = distillation_gradients(layered, processor)
    assert gradients[-1] == 0 and all(norm > 0 for norm in gradients[:-1])  # the last layer is past the heads' input


def test_the_states_are_the_decoder_layer_outputs(tiny_lavit):
    model, processor = tiny_lavit
    model.config.head_layer = 1
    inputs = batch(processor, SAMPLES)
    captured = {}
    hook = model.model.language_model.layers[0].register_forward_hook(
        lambda module, args, output: captured.setdefault("states", output[0] if isinstance(output, tuple) else output)
    )
    with torch.no_grad():
        layered = model(**inputs, **targets(model, inputs))
    hook.remove()
    # The same heads fed with layer 1's output (through the final norm) by hand give the same V_top prediction.
    latent_ids = torch.tensor(model.config.latent_token_ids)
    last_latent = torch.stack([torch.isin(row, latent_ids).nonzero().flatten()[-1] for row in inputs["input_ids"]])
    states = model.model.language_model.norm(captured["states"])[torch.arange(len(last_latent)), last_latent]
    with torch.no_grad():
        torch.testing.assert_close(layered.vtop_prediction, model.predict_vtop(states))


def test_head_layer_out_of_range_is_refused(tiny_lavit):
    model, _ = tiny_lavit
    num_layers = model.config.get_text_config().num_hidden_layers
    for value in (0, num_layers):
        with pytest.raises((ValueError, StrictDataclassError), match="head_layer"):
            type(model.config)(**{**model.config.to_dict(), "head_layer": value})
