"""Teacher-side extraction against independent references (METHOD.md section 1, project issue 3)."""

import copy

import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from datasets_scripts.teacher import (
    ExtractionSettings,
    GenerationSettings,
    TeacherError,
    TeacherExtractor,
    split_steps,
)
from lavit_hf.layout import render_prompt


QUESTION = "Where is the red square?"
RESPONSE = "The red square is at the top left. It is small!\nSo the answer is top left."


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def teacher(tiny_teacher_pair):
    model, processor = tiny_teacher_pair
    return copy.deepcopy(model).float(), processor


@pytest.fixture(scope="module")
def extracted(teacher):
    model, processor = teacher
    settings = ExtractionSettings(methods=("attention", "gradient"), attention_layers=[-2, -1], split_steps="sentence",
                                  gradient_batch_size=4, row_chunk=5)
    extractor = TeacherExtractor(copy.deepcopy(model), processor, settings)
    image = noise_image(140, 84)
    return extractor, image, extractor.extract(image, QUESTION, RESPONSE)


def _inputs(extractor, image):
    sample = extractor.encode(image, QUESTION, RESPONSE)
    return sample, dict(sample.inputs)


def test_span_is_the_response(extracted):
    extractor, image, out = extracted
    sample, inputs = _inputs(extractor, image)
    ids = inputs["input_ids"][0]
    start, end = out.span
    assert extractor.processor.tokenizer.decode(ids[start:end]) == RESPONSE
    assert extractor.processor.tokenizer.decode(ids[:start]) == render_prompt(extractor.processor, QUESTION).replace(
        "<|image_pad|>", "<|image_pad|>" * len(sample.image_positions)
    )


def test_attention_trajectory_equals_eager_output_attentions(extracted, teacher):
    extractor, image, out = extracted
    eager = copy.deepcopy(teacher[0])
    eager.set_attn_implementation("eager")
    sample, inputs = _inputs(extractor, image)
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    rows = torch.arange(*out.span)
    per_layer = [attentions[layer][0][:, rows][:, :, sample.image_positions].mean(0) for layer in (-2, -1)]
    per_row = torch.stack(per_layer).mean(0)  # [R, N]
    reference = per_row.mean(0) / per_row.mean(0).sum()
    torch.testing.assert_close(out.trajectories["attention"], reference, atol=1e-4, rtol=0)
    steps = split_steps(RESPONSE, sample.offsets, "sentence")
    for step, (a, b, _) in zip(out.step_trajectories["attention"], steps):
        torch.testing.assert_close(step, per_row[a:b].mean(0) / per_row[a:b].mean(0).sum(), atol=1e-4, rtol=0)
    assert out.layers == [0, 1]


def test_gradient_trajectory_equals_brute_force(extracted, teacher):
    extractor, image, out = extracted
    model = copy.deepcopy(teacher[0]).requires_grad_(False)
    sample, inputs = _inputs(extractor, image)
    with torch.no_grad():
        encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        features = torch.cat(encoded.pooler_output)
    text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
    per_token = []
    for position in range(*out.span):  # one full forward and backward per token, as the reference code does
        embeds = features.clone().requires_grad_(True)
        encoder = {"image": BaseModelOutputWithPooling(pooler_output=(embeds,))}
        logits = model(**text_inputs, mm_encoder_outputs=encoder).logits[0, position - 1]
        nll = -torch.log_softmax(logits.float(), -1)[inputs["input_ids"][0, position]]
        nll.backward()
        magnitude = embeds.grad.abs().mean(-1)
        per_token.append(magnitude / magnitude.sum())
    reference = torch.stack(per_token).mean(0)
    torch.testing.assert_close(out.trajectories["gradient"], reference / reference.sum(), atol=1e-4, rtol=0)


def test_gradient_temperature_normalises_before_softmax(teacher):
    model, processor = teacher
    settings = ExtractionSettings(methods=("gradient",), gradient_temperature=0.01)
    extractor = TeacherExtractor(copy.deepcopy(model), processor, settings)
    out = extractor.extract(noise_image(84, 84, 2), QUESTION, "Top left.")
    traj = out.trajectories["gradient"]
    assert torch.isfinite(traj).all() and abs(float(traj.sum()) - 1) < 1e-5
    # max-normalised magnitudes lie in [0, 1], so with T = 0.01 the peak token dominates but nothing overflows
    assert float(traj.max()) > 1 / len(traj)


def test_vtop_is_last_layer_output_before_norm(extracted, teacher):
    extractor, image, out = extracted
    model = copy.deepcopy(teacher[0])
    sample, inputs = _inputs(extractor, image)
    with torch.no_grad():
        tied = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
        model.model.language_model.config.tie_last_hidden_states = False
        untied = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
    positions = sample.image_positions
    # transformers replaces hidden_states[-1] by the normed last_hidden_state: V_top is the pre-norm one.
    torch.testing.assert_close(out.vtop_tokens, untied[positions], atol=1e-5, rtol=0)
    norm = model.model.language_model.norm
    with torch.no_grad():
        torch.testing.assert_close(norm(out.vtop_tokens), tied[positions], atol=1e-5, rtol=0)
    assert not torch.allclose(out.vtop_tokens, tied[positions], atol=1e-3)
    assert out.vtop_tokens.shape == (out.grid[0] * out.grid[1], model.config.text_config.hidden_size)


def test_distributions_sum_to_one(extracted):
    _, _, out = extracted
    n = out.grid[0] * out.grid[1]
    for method in ("attention", "gradient"):
        assert out.trajectories[method].shape == (n,)
        assert abs(float(out.trajectories[method].sum()) - 1) < 1e-5
        assert (out.trajectories[method] >= 0).all()
        steps = out.step_trajectories[method]
        assert steps.shape == (len(out.steps), n)
        torch.testing.assert_close(steps.sum(-1), torch.ones(len(out.steps)), atol=1e-5, rtol=0)
    assert out.steps == ["The red square is at the top left.", "It is small!", "So the answer is top left."]


def test_split_steps_cover_every_token(teacher):
    _, processor = teacher
    for rule in ("none", "newline", "sentence"):
        enc = processor.tokenizer(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
        steps = split_steps(RESPONSE, enc["offset_mapping"], rule)
        assert steps[0][0] == 0 and steps[-1][1] == len(enc["input_ids"])
        assert all(a < b and b == c for (a, b, _), (c, _, _) in zip(steps, steps[1:] + [(steps[-1][1], 0, "")]))
    assert len(split_steps(RESPONSE, enc["offset_mapping"], "none")) == 1


def test_empty_response_is_a_teacher_error(extracted):
    extractor, image, _ = extracted
    with pytest.raises(TeacherError, match="empty"):
        extractor.extract(image, QUESTION, "")


def test_batched_generation_left_pads(teacher):
    model, processor = teacher
    extractor = TeacherExtractor(copy.deepcopy(model), processor, ExtractionSettings(),
                                 GenerationSettings(max_new_tokens=6, batch_size=2))
    images = [noise_image(140, 84, 3), noise_image(56, 56, 4)]
    questions = ["What is it?", "Describe the image in a few words."]
    batched = extractor.generate(images, questions)
    single = [extractor.generate([i], [q])[0] for i, q in zip(images, questions)]
    assert len(batched) == 2 and all(isinstance(r, str) for r in batched)
    assert batched == single
    assert processor.tokenizer.padding_side == "right"  # restored
