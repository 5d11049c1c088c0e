"""Teacher-side extraction against independent references, for every teacher family (docs/method.md section 1)."""

import copy

import pytest
import torch
from PIL import Image

from datasets_scripts.extract import build_row, load_teacher
from datasets_scripts.sources import SourceRecord
from datasets_scripts.teacher import (
    TEACHER_FAMILIES,
    TRAJECTORY_METHODS,
    ExtractionSettings,
    GenerationSettings,
    TeacherError,
    TeacherExtractor,
    TrajectoryMethod,
    register_trajectory_method,
    split_steps,
    teacher_family,
)
from lavit_hf import schema
from lavit_hf.attention import OBSERVED_ATTENTION
from lavit_hf.layout import render_prompt


QUESTION = "Where is the red square?"
RESPONSE = "The red square is at the top left. It is small!\nSo the answer is top left."
FAMILIES = list(TEACHER_FAMILIES)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def private(model):
    return copy.deepcopy(model).float()


@pytest.fixture(scope="module", params=FAMILIES)
def teacher(request, tiny_teachers):
    model, processor = tiny_teachers(request.param)
    return private(model), processor


@pytest.fixture(scope="module")
def extracted(teacher):
    model, processor = teacher
    settings = ExtractionSettings(
        methods=("attention", "gradient"),
        attention_layers=[-2, -1],
        split_steps="sentence",
        gradient_batch_size=4,
        row_chunk=5,
    )
    extractor = TeacherExtractor(copy.deepcopy(model), processor, settings)
    image = noise_image(140, 84)
    return extractor, image, extractor.extract(image, QUESTION, RESPONSE)


def _inputs(extractor, image):
    batch = extractor.encode(image, QUESTION, RESPONSE)
    return batch.samples[0], dict(batch.inputs)


def test_span_is_the_response(extracted):
    extractor, image, out = extracted
    sample, inputs = _inputs(extractor, image)
    ids = inputs["input_ids"][0]
    start, end = out.span
    assert extractor.processor.tokenizer.decode(ids[start:end]) == RESPONSE
    prompt = extractor.processor.tokenizer.decode(ids[:start])
    if out.family.startswith("qwen"):
        expanded = "<|image_pad|>" * len(sample.image_positions)
        assert prompt == render_prompt(extractor.processor, QUESTION).replace("<|image_pad|>", expanded)
    assert prompt.endswith(render_prompt(extractor.processor, QUESTION).split(QUESTION)[-1])


def test_attention_trajectory_equals_eager_output_attentions(extracted, teacher):
    """The capture reads the real post-norm, post-RoPE queries and keys and the layers' own masks (Qwen3-VL's q/k
    norms, Gemma 3's sliding windows and image blocks): every family matches eager attention within 1e-4, per step
    too."""
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
    for step, (a, b, _) in zip(out.step_trajectories["attention"], steps, strict=True):
        torch.testing.assert_close(step, per_row[a:b].mean(0) / per_row[a:b].mean(0).sum(), atol=1e-4, rtol=0)
    assert out.layers == [0, 1]
    # The teacher's text attention is back to what it was.
    assert extractor.model.config.get_text_config()._attn_implementation != OBSERVED_ATTENTION


def test_gradient_trajectory_equals_brute_force(extracted, teacher):
    """Batched vector-Jacobian products equal one full forward and backward per response token, the gradient taken
    where the language model receives the image embeddings (its input embeddings at the image tokens)."""
    extractor, image, out = extracted
    model = copy.deepcopy(teacher[0]).requires_grad_(False)
    sample, inputs = _inputs(extractor, image)
    received = {}

    def make_leaf(module, args, kwargs):
        kwargs["inputs_embeds"] = received["embeds"] = kwargs["inputs_embeds"].detach().requires_grad_(True)
        return args, kwargs

    handle = model.model.language_model.register_forward_pre_hook(make_leaf, with_kwargs=True)
    per_token = []
    try:
        for position in range(*out.span):  # one full forward and backward per token, as the reference code does
            logits = model(**inputs).logits[0, position - 1]
            nll = -torch.log_softmax(logits.float(), -1)[inputs["input_ids"][0, position]]
            nll.backward()
            magnitude = received["embeds"].grad[0, sample.image_positions].abs().mean(-1)
            per_token.append(magnitude / magnitude.sum())
    finally:
        handle.remove()
    reference = torch.stack(per_token).mean(0)
    torch.testing.assert_close(out.trajectories["gradient"], reference / reference.sum(), atol=1e-4, rtol=0)


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
    assert out.vtop_tokens.shape == (out.grid[0] * out.grid[1], model.config.get_text_config().hidden_size)


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


def test_the_row_records_the_family_and_grid(extracted):
    extractor, image, out = extracted
    record = SourceRecord(0, "synthetic/q0", "q0", "synthetic", QUESTION, "top left", image=image)
    row = build_row(record, image.size, out, extractor.settings)
    assert row[schema.TEACHER_FAMILY] == extractor.model.config.model_type
    assert row[schema.TEACHER_GRID] == list(out.grid)
    for method in ("attention", "gradient"):
        assert len(row[schema.trajectory_column(method)]) == out.grid[0] * out.grid[1]
        assert len(row[schema.trajectory_steps_column(method)]) == len(out.steps)


def test_batched_generation_left_pads(teacher):
    model, processor = teacher
    extractor = TeacherExtractor(
        copy.deepcopy(model), processor, ExtractionSettings(), GenerationSettings(max_new_tokens=6, batch_size=2)
    )
    images = [noise_image(140, 84, 3), noise_image(56, 56, 4)]
    questions = ["What is it?", "Describe the image in a few words."]
    batched = extractor.generate(images, questions)
    single = [extractor.generate([i], [q])[0] for i, q in zip(images, questions, strict=True)]
    assert len(batched) == 2 and all(isinstance(r, str) for r in batched)
    assert batched == single
    assert processor.tokenizer.padding_side == "right"  # restored


def greedy_responses(model, processor, cache: str):
    """The teacher's greedy responses to two left-padded prompts under `cache`, and the extractor that wrote them."""
    images = [noise_image(140, 84, 3), noise_image(56, 56, 4)]
    questions = ["What is it?", "Describe the image in a few words."]
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, cache=cache)
    extractor = TeacherExtractor(copy.deepcopy(model), processor, ExtractionSettings(), settings)
    return extractor.generate(images, questions), extractor


def test_static_cache_generates_the_same_greedy_tokens(teacher):
    assert greedy_responses(*teacher, "static")[0] == greedy_responses(*teacher, "dynamic")[0]


# Family-agnostic behaviour, on the Qwen2.5-VL teacher -------------------------------------------------------------


def test_compiled_generation_gives_the_same_greedy_tokens(qwen_teacher):
    """`cache="compiled"`: the static cache with the decoding step compiled by torch.compile, on the CPU too."""
    compiled, extractor = greedy_responses(*qwen_teacher, "compiled")
    assert compiled == greedy_responses(*qwen_teacher, "dynamic")[0]
    assert hasattr(extractor.model, "_compiled_call")  # transformers' compiled forward did run the decoding steps
    with pytest.raises(ValueError, match="cache='paged': expected one of"):
        GenerationSettings(cache="paged")


@pytest.fixture(scope="module")
def qwen_teacher(tiny_teacher_pair):
    model, processor = tiny_teacher_pair
    return private(model), processor


def test_gradient_temperature_normalises_before_softmax(qwen_teacher):
    model, processor = qwen_teacher
    settings = ExtractionSettings(methods=("gradient",), gradient_temperature=0.01)
    extractor = TeacherExtractor(copy.deepcopy(model), processor, settings)
    out = extractor.extract(noise_image(84, 84, 2), QUESTION, "Top left.")
    traj = out.trajectories["gradient"]
    assert torch.isfinite(traj).all() and abs(float(traj.sum()) - 1) < 1e-5
    # max-normalised magnitudes lie in [0, 1], so with T = 0.01 the peak token dominates but nothing overflows
    assert float(traj.max()) > 1 / len(traj)


def test_split_steps_cover_every_token(qwen_teacher):
    _, processor = qwen_teacher
    for rule in ("none", "newline", "sentence"):
        enc = processor.tokenizer(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
        steps = split_steps(RESPONSE, enc["offset_mapping"], rule)
        assert steps[0][0] == 0 and steps[-1][1] == len(enc["input_ids"])
        following = steps[1:] + [(steps[-1][1], 0, "")]
        assert all(a < b and b == c for (a, b, _), (c, _, _) in zip(steps, following, strict=True))
    assert len(split_steps(RESPONSE, enc["offset_mapping"], "none")) == 1


def test_empty_response_is_a_teacher_error(qwen_teacher):
    model, processor = qwen_teacher
    extractor = TeacherExtractor(copy.deepcopy(model), processor, ExtractionSettings())
    with pytest.raises(TeacherError, match="empty"):
        extractor.extract(noise_image(56, 56), QUESTION, "")


def test_a_registered_method_is_extracted_into_its_own_columns(qwen_teacher):
    """Adding a trajectory method is one registration: settings accept it, extraction computes it, the schema and the
    row carry its columns."""
    model, processor = qwen_teacher
    method = register_trajectory_method(
        TrajectoryMethod(
            name="final_row_attention",
            rule="the last response row's attention",
            captures_attention=True,
            needs_gradient=False,
            per_token=lambda forward, settings: forward.attention[-1:],
        )
    )
    try:
        settings = ExtractionSettings(methods=("attention", method.name), attention_layers=[-1])
        extractor = TeacherExtractor(copy.deepcopy(model), processor, settings)
        image = noise_image(84, 56)
        out = extractor.extract(image, QUESTION, RESPONSE)
        features = schema.lavit_features(extractor.hidden_size, trajectory_methods=settings.methods)
        assert {"trajectory_final_row_attention", "trajectory_steps_final_row_attention"} <= set(features)
        assert schema.trajectory_methods(features) == ["attention", "final_row_attention"]
        assert abs(float(out.trajectories[method.name].sum()) - 1) < 1e-5
        assert not torch.allclose(out.trajectories[method.name], out.trajectories["attention"])
    finally:
        del TRAJECTORY_METHODS[method.name]
    with pytest.raises(ValueError, match="expected one or more of"):
        ExtractionSettings(methods=(method.name,))


def test_teachers_without_one_known_grid_are_refused_by_name(tmp_path, tiny_teachers):
    for model_type, why in (("llava_next", "any-resolution tiling"), ("internvl", "dynamic tiling")):
        with pytest.raises(ValueError, match=f"'{model_type}' teacher cannot be used: .*{why}.*Supported teacher"):
            teacher_family(model_type)
    with pytest.raises(
        ValueError, match="No teacher support for model_type 'bert'; supported teacher families: qwen2_vl"
    ):
        teacher_family("bert")
    # From a checkpoint folder: refused before any weight is read.
    from transformers import LlavaNextConfig

    LlavaNextConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llava_next' teacher cannot be used"):
        load_teacher(str(tmp_path), "cpu", "float32")
    # Gemma 3 with pan-and-scan crops has more than one grid per image.
    model, processor = tiny_teachers("gemma3")
    crops = copy.deepcopy(processor)
    crops.image_processor.do_pan_and_scan = True
    with pytest.raises(ValueError, match="do_pan_and_scan on"):
        TeacherExtractor(model, crops, ExtractionSettings())
