"""Behaviour of the LaViT model through its public API, on tiny random models of every student family
(docs/method.md sections 2, 3, 6). The attention-rule tests compare the final hidden states (the logits are the LM head
applied to them), which skips the 152k-wide projection on the CPU."""

import copy
import pickle

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lavit_hf import STUDENT_FAMILIES
from lavit_hf.heads import align_trajectory_target
from lavit_hf.losses import labelled_causal_lm_loss, trajectory_kl_loss, vtop_cosine_loss


ATTENTION_IMPLEMENTATIONS = ["sdpa", "eager"]
FAMILIES = list(STUDENT_FAMILIES)
DEFAULT = "qwen2_5_vl"


def with_families(stages_for_all, stages_for_default):
    """`(student, stage)` parameters: some stages for every family, more for the default one only (the rule-free stages
    0 and 2 run the same code path)."""
    pairs = [(family, stage) for stage in stages_for_all for family in FAMILIES]
    return pairs + [(DEFAULT, stage) for stage in stages_for_default]


def image(size, seed):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def chat(processor, question, answer, num_latent=4):
    latent = "".join(f"<lvr{i}>" for i in range(1, num_latent + 1))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": f"{latent} {answer}"},
    ]
    return processor.apply_chat_template(messages)


def batch(processor, samples, padding_side="right"):
    """Inputs for (question, answer, image) triples."""
    processor.tokenizer.padding_side = padding_side
    texts = [chat(processor, q, a) for q, a, _ in samples]
    return processor(text=texts, images=[img for _, _, img in samples], return_tensors="pt", padding=True)


SAMPLES = [
    ("What colour is the square?", "It is red.", image((112, 84), 0)),
    ("How many circles are there in the picture?", "Three.", image((56, 140), 1)),
]


def spans(model, input_ids):
    """Per sample: first and last image position, first and last latent position."""
    out = []
    for row in input_ids:
        image_pos = (row == model.config.image_token_id).nonzero().flatten()
        latent_pos = torch.isin(row, torch.tensor(model.config.latent_token_ids)).nonzero().flatten()
        out.append((int(image_pos[0]), int(image_pos[-1]), int(latent_pos[0]), int(latent_pos[-1])))
    return out


def clone(model):
    """A private copy of a student sharing its attached processor (copying a 152k-token tokenizer costs seconds)."""
    return copy.deepcopy(model, memo={id(model.processor): model.processor})


def staged(model, stage, attn, block_prompt=True):
    model = clone(model)
    model.set_training_stage(stage)
    model.config.block_prompt = block_prompt
    model.set_attn_implementation(attn)
    return model


def family_class(obj):
    """The transformers class a LaViT binding (model or config) extends."""
    return next(cls for cls in type(obj).__mro__ if cls.__module__.startswith("transformers."))


@pytest.fixture(scope="module", params=FAMILIES)
def student(request, tiny_students):
    return tiny_students(request.param)


@pytest.fixture(scope="module")
def inputs(student):
    _, processor = student
    return batch(processor, SAMPLES)


@pytest.fixture(scope="module")
def qwen2_5(tiny_lavit_pair):
    """The Qwen2.5-VL student and its inputs, for what no family changes (loss combination, target checks)."""
    model, processor = tiny_lavit_pair
    return model, batch(processor, SAMPLES)


def with_pixels(inputs, seed):
    changed = dict(inputs)
    generator = torch.Generator().manual_seed(seed)
    changed["pixel_values"] = torch.randn(inputs["pixel_values"].shape, generator=generator)
    return changed


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def states(model, inputs, **kwargs):
    """The final hidden states (the rules' effect on them is their effect on the logits)."""
    with torch.no_grad():
        return model.model(**inputs, **kwargs).last_hidden_state


# --- identity with the family ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("student", "stage"), with_families([0], [2]), indirect=["student"])
def test_no_target_forward_is_exactly_the_family(student, inputs, stage):
    model, _ = student
    model = staged(model, stage, "sdpa")
    base_config_class, base_class = family_class(model.config), family_class(model)
    fields = {k: v for k, v in model.config.to_dict().items() if k in base_config_class.__dataclass_fields__}
    base = base_class(base_config_class(**fields)).eval()
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(("vtop_head.", "trajectory_query.")) for k in unexpected)
    assert torch.equal(logits(model, inputs), logits(base, inputs))


def test_the_base_model_is_built_once(student, monkeypatch):
    model, _ = student
    base_class = family_class(model.model)
    built = []
    original = base_class.__init__

    def counted(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(base_class, "__init__", counted)
    type(model)(model.config)
    assert built == [type(model.model).__name__]


# --- the stage-1 bottleneck ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_stage1_blocks_the_image_outside_the_latent_tokens(student, attn, padding_side):
    model, processor = student
    model = staged(model, 1, attn)
    inputs = batch(processor, SAMPLES, padding_side)
    before, after = states(model, inputs), states(model, with_pixels(inputs, 7))
    for sample, (first_img, last_img, first_lat, last_lat) in enumerate(spans(model, inputs["input_ids"])):
        real = inputs["attention_mask"][sample].bool()
        changed = (before[sample] != after[sample]).any(-1) & real
        # Before the image (causal) and between the image and the latent tokens (block_prompt): exactly equal.
        assert not changed[:first_img].any() and not changed[last_img + 1 : first_lat].any()
        # The latent tokens see the image, and so does the answer, through them.
        assert changed[first_lat : last_lat + 1].all()
        assert changed[last_lat + 1 :][real[last_lat + 1 :]].any()


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_stage1_answer_sees_the_image_only_through_the_latent_tokens(student, inputs, attn):
    """The exact-zero leak: with the latent tokens hidden from later positions, nothing after them depends on the
    pixels, to the last bit (an eager mask in the wrong format lets attention mass through)."""
    model, _ = student
    model = staged(model, 1, attn)
    before = states(model, inputs, mask_latent=True)
    after = states(model, with_pixels(inputs, 3), mask_latent=True)
    for sample, (_, _, _, last_lat) in enumerate(spans(model, inputs["input_ids"])):
        assert torch.equal(before[sample, last_lat + 1 :], after[sample, last_lat + 1 :])
        assert not torch.equal(before[sample, last_lat], after[sample, last_lat])


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_stage1_without_block_prompt_lets_the_question_see_the_image(student, inputs, attn):
    model, _ = student
    model = staged(model, 1, attn, block_prompt=False)
    before, after = states(model, inputs), states(model, with_pixels(inputs, 5))
    for sample, (_, last_img, first_lat, _) in enumerate(spans(model, inputs["input_ids"])):
        assert (before[sample, last_img + 1 : first_lat] != after[sample, last_img + 1 : first_lat]).any(-1).all()


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize(("student", "stage"), with_families([0, 1], [2]), indirect=["student"])
def test_a_later_token_never_changes_an_earlier_state(student, inputs, attn, stage):
    model, _ = student
    model = staged(model, stage, attn)
    before = states(model, inputs)
    changed = {key: value.clone() for key, value in inputs.items()}
    ends = [last_lat for _, _, _, last_lat in spans(model, inputs["input_ids"])]
    for sample, last_lat in enumerate(ends):  # the rows of a batch are independent: one change in each
        changed["input_ids"][sample, last_lat + 2] = 1000
    after = states(model, changed)
    for sample, last_lat in enumerate(ends):
        assert torch.equal(before[sample, : last_lat + 2], after[sample, : last_lat + 2])
        assert not torch.equal(before[sample, last_lat + 2], after[sample, last_lat + 2])


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_stage1_padded_batch_equals_one_by_one(student, attn):
    model, processor = student
    model = staged(model, 1, attn)
    together = states(model, batch(processor, SAMPLES))
    for sample, triple in enumerate(SAMPLES):
        alone = states(model, batch(processor, [triple]))[0]
        torch.testing.assert_close(together[sample, : alone.shape[0]], alone, atol=2e-5, rtol=1e-4)


# --- the mask_latent diagnostic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_mask_latent_equals_removing_the_latent_keys(student, attn):
    model, processor = student
    model = staged(model, 0, attn)
    inputs = batch(processor, SAMPLES[:1])
    ids = inputs["input_ids"][0]
    is_latent = torch.isin(ids, torch.tensor(model.config.latent_token_ids))
    with torch.no_grad():
        position_ids, _ = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
        masked = model(**inputs, mask_latent=True).logits[0][~is_latent]
        kept = ~is_latent
        removed = model(
            input_ids=inputs["input_ids"][:, kept],
            attention_mask=inputs["attention_mask"][:, kept],
            mm_token_type_ids=inputs["mm_token_type_ids"][:, kept],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            position_ids=position_ids[:, :, kept],
        ).logits[0]
    torch.testing.assert_close(masked, removed, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("stage", [0, 1])
def test_generation_with_cache_follows_the_mask_rules(student, stage):
    """Greedy decoding with a KV cache gives the tokens that full forwards (no cache) would pick."""
    model, processor = student
    model = staged(model, stage, "sdpa")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    prompt += "".join(f"<lvr{i}>" for i in range(1, 5))
    inputs = processor(text=[prompt], images=[SAMPLES[0][2]], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, mask_latent=True)
        ids = inputs["input_ids"]
        for _ in range(4):
            step = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            step["mm_token_type_ids"] = torch.nn.functional.pad(
                inputs["mm_token_type_ids"], (0, ids.shape[1] - inputs["input_ids"].shape[1])
            )
            next_id = model(**step, mask_latent=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


def test_a_prepared_mask_cannot_carry_the_rules(qwen2_5):
    """A static cache makes `generate` hand the model a prepared 4-D mask at each decoding step: refused in stage 1
    (never a silent plain causal mask)."""
    model, _ = qwen2_5
    model = staged(model, 1, "sdpa")
    processor = model.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True) + "<lvr1><lvr2><lvr3><lvr4>"
    inputs = processor(text=[prompt], images=[SAMPLES[0][2]], return_tensors="pt")
    with torch.no_grad(), pytest.raises(ValueError, match="a prepared .* attention mask was given"):
        model.generate(**inputs, max_new_tokens=2, do_sample=False, cache_implementation="static")


# --- the heads and their losses -----------------------------------------------------------------------------------


def targets(model, inputs, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    width = int(counts.max())
    trajectory = torch.rand(len(counts), width, generator=generator)
    mask = torch.arange(width) < counts[:, None]
    trajectory = trajectory * mask
    trajectory = trajectory / trajectory.sum(-1, keepdim=True)
    vtop = torch.randn(len(counts), model.config.teacher_hidden_size, generator=generator)
    return {"vtop_target": vtop, "trajectory_target": trajectory, "trajectory_mask": mask}


def test_losses_equal_an_independent_computation(student, inputs):
    model, _ = student
    goal = targets(model, inputs)
    with torch.no_grad():
        out = model(**inputs, **goal)
        hidden = model.model(**inputs).last_hidden_state
    for sample, row in enumerate(inputs["input_ids"]):
        latent = hidden[sample, int(torch.isin(row, torch.tensor(model.config.latent_token_ids)).nonzero().max())]
        image_states = hidden[sample, row == model.config.image_token_id]
        scores = image_states @ model.trajectory_query(latent) / model.config.text_config.hidden_size**0.5
        predicted = torch.log_softmax(scores, -1)
        n = image_states.shape[0]
        target = goal["trajectory_target"][sample, :n]
        kl = (target * (target.log() - predicted)).sum()
        cosine = torch.nn.functional.cosine_similarity(model.vtop_head(latent), goal["vtop_target"][sample], dim=0)
        if sample == 0:
            kl_sum, cos_loss = kl, 1 - cosine
        else:
            kl_sum, cos_loss = kl_sum + kl, cos_loss + 1 - cosine
    count = inputs["input_ids"].shape[0]
    torch.testing.assert_close(out.loss_traj, kl_sum / count)
    torch.testing.assert_close(out.loss_vtop, cos_loss / count)
    assert out.loss_traj > 0 and out.loss_vtop > 0


def test_losses_send_gradient_to_both_heads(student, inputs):
    model = clone(student[0]).train()
    out = model(**inputs, labels=inputs["input_ids"], **targets(model, inputs))
    out.loss.backward()
    expected = model.config.ce_loss_weight * out.loss_ce + 0.3 * out.loss_vtop + 0.3 * out.loss_traj
    torch.testing.assert_close(out.loss, expected)
    for head in (model.vtop_head, model.trajectory_query):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize(("student", "stage"), with_families([1], [0]), indirect=["student"])
def test_batched_and_one_by_one_losses_agree(student, stage):
    model, processor = student
    model = staged(model, stage, "sdpa")
    inputs = batch(processor, SAMPLES)
    goal = targets(model, inputs)
    with torch.no_grad():
        together = model(**inputs, **goal)
        singles = []
        for sample, triple in enumerate(SAMPLES):
            alone = batch(processor, [triple])
            n = int((alone["input_ids"] == model.config.image_token_id).sum())
            one = {
                "vtop_target": goal["vtop_target"][sample : sample + 1],
                "trajectory_target": goal["trajectory_target"][sample : sample + 1, :n],
                "trajectory_mask": goal["trajectory_mask"][sample : sample + 1, :n],
            }
            singles.append(model(**alone, **one))
    for name in ("loss_vtop", "loss_traj"):
        mean = torch.stack([getattr(single, name) for single in singles]).mean()
        torch.testing.assert_close(getattr(together, name), mean, atol=1e-5, rtol=1e-4)


def test_stage1_ce_switch(qwen2_5):
    model, inputs = qwen2_5
    model = staged(model, 1, "sdpa")
    goal = targets(model, inputs)
    with torch.no_grad():
        with_ce = model(**inputs, labels=inputs["input_ids"], **goal)
        model.config.ce_in_stage1 = False
        without_ce = model(**inputs, labels=inputs["input_ids"], **goal)
    torch.testing.assert_close(without_ce.loss, 0.3 * without_ce.loss_vtop + 0.3 * without_ce.loss_traj)
    torch.testing.assert_close(with_ce.loss, without_ce.loss + with_ce.loss_ce)


def test_token_wise_vtop_target_is_mean_pooled(qwen2_5):
    model, inputs = qwen2_5
    goal = targets(model, inputs)
    tokens = torch.randn(2, 5, model.config.teacher_hidden_size)
    tokens[0, 3:] = float("nan")  # padded rows may hold anything
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = torch.stack([tokens[0, :3].mean(0), tokens[1].mean(0)])
    with torch.no_grad():
        wise = model(
            **inputs,
            trajectory_target=goal["trajectory_target"],
            trajectory_mask=goal["trajectory_mask"],
            vtop_target=tokens,
            vtop_target_mask=mask,
        )
        flat = model(
            **inputs,
            trajectory_target=goal["trajectory_target"],
            trajectory_mask=goal["trajectory_mask"],
            vtop_target=pooled,
        )
    torch.testing.assert_close(wise.loss_vtop, flat.loss_vtop)


def test_pure_loss_functions():
    target = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    same = torch.log(torch.tensor([[0.5, 0.5, 1e-9], [1.0, 1e-9, 1.0]]))
    assert trajectory_kl_loss(same, target, mask).abs() < 1e-6
    uniform = torch.log(torch.full((2, 3), 1 / 3))
    expected = ((0.5 * torch.log(torch.tensor(1.5)) * 2) + torch.log(torch.tensor(3.0))) / 2
    torch.testing.assert_close(trajectory_kl_loss(uniform, target, mask), expected)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(vtop_cosine_loss(a, a), torch.tensor(0.0))
    torch.testing.assert_close(vtop_cosine_loss(a, -a), torch.tensor(2.0))


# --- bad input -----------------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_sample(qwen2_5):
    model, inputs = qwen2_5
    goal = targets(model, inputs)
    with pytest.raises(ValueError, match="vtop_target has shape"):
        model(**inputs, vtop_target=torch.zeros(2, 7))
    short = {**goal, "trajectory_mask": goal["trajectory_mask"].clone()}
    short["trajectory_mask"][1, 0] = False
    with pytest.raises(ValueError, match="Sample 1: trajectory_target has"):
        model(**inputs, **short)
    no_latent = {key: value.clone() for key, value in inputs.items()}
    no_latent["input_ids"][1][torch.isin(no_latent["input_ids"][1], torch.tensor(model.config.latent_token_ids))] = 11
    with pytest.raises(ValueError, match="Sample 1: expected each latent token"):
        model(**no_latent, **goal)
    wrong_grid = dict(inputs)
    wrong_grid["image_grid_thw"] = inputs["image_grid_thw"].flip(0)
    with pytest.raises(ValueError, match="Sample 0: .* image tokens in input_ids but image_grid_thw gives"):
        model(**wrong_grid, **goal)
    with pytest.raises(ValueError, match="Unknown training stage 3"):
        clone(model).set_training_stage(3)
    with pytest.raises(ValueError, match="no V_top head"):
        bare = clone(model)
        bare.vtop_head = None
        bare(**inputs, **goal)


def test_bad_targets_name_the_sample(qwen2_5):
    """Through the model API (no collator), a target that is no finite V_top or no distribution is refused, naming the
    sample, before the forward: a NaN V_top would give a NaN loss, a NaN or negative trajectory would be ignored."""
    model, inputs = qwen2_5
    goal = targets(model, inputs)
    cases = {
        "Sample 1: vtop_target holds non-finite values": ("vtop_target", (1, 3), float("nan")),
        "Sample 0: trajectory_target holds non-finite values": ("trajectory_target", (0, 2), float("nan")),
        "Sample 1: trajectory_target has negative entries": ("trajectory_target", (1, 0), -0.5),
        "Sample 0: trajectory_target does not sum to 1": ("trajectory_target", (0, 0), 5.0),
    }
    for message, (name, where, value) in cases.items():
        bad = {key: tensor.clone() for key, tensor in goal.items()}
        bad[name][where] = value
        with pytest.raises(ValueError, match=message):
            model(**inputs, **bad)
    tokens = torch.randn(2, 5, model.config.teacher_hidden_size)
    tokens[1, 2, 0] = float("inf")  # a valid row
    with pytest.raises(ValueError, match="Sample 1: vtop_target holds non-finite values"):
        model(**inputs, vtop_target=tokens, vtop_target_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="Sample 0: vtop_target_mask selects no row"):
        model(**inputs, vtop_target=tokens, vtop_target_mask=torch.tensor([[0] * 5, [1] * 5], dtype=torch.bool))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"], ids=["mask-mapping", "prepared-4d-mask"])
def test_flex_attention_applies_the_same_rule(tiny_students, family):
    """Flex attention (registered under our name; forward only, as flex has no CPU backward) equals sdpa in stage 1,
    where the mask function becomes a BlockMask, and blocks the image exactly as sdpa does; a text model that takes a
    mapping of masks and one that takes the prepared mask alike."""
    from lavit_hf.attention import register_flex_attention

    model, processor = tiny_students(family)
    inputs = batch(processor, SAMPLES)
    flex = staged(model, 1, "sdpa")
    flex.set_attn_implementation({"text_config": register_flex_attention(), "vision_config": "sdpa"})
    before, after = logits(flex, inputs), logits(flex, with_pixels(inputs, 7))
    torch.testing.assert_close(before, logits(staged(model, 1, "sdpa"), inputs), atol=2e-5, rtol=1e-4)
    for sample, (first_img, last_img, first_lat, last_lat) in enumerate(spans(model, inputs["input_ids"])):
        assert torch.equal(before[sample, :first_img], after[sample, :first_img])
        assert torch.equal(before[sample, last_img + 1 : first_lat], after[sample, last_img + 1 : first_lat])
        assert (before[sample, first_lat : last_lat + 1] != after[sample, first_lat : last_lat + 1]).any(-1).all()


def test_labelled_ce_equals_full_logit_ce(qwen2_5):
    model, inputs = qwen2_5
    labels = inputs["input_ids"].clone()
    labels[:, :20] = -100
    labels[inputs["attention_mask"] == 0] = -100
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        full = model.loss_function(
            logits=model.lm_head(hidden), labels=labels, vocab_size=model.config.text_config.vocab_size
        )
        torch.testing.assert_close(labelled_causal_lm_loss(model.lm_head, hidden, labels), full)
        summed = model.loss_function(
            logits=model.lm_head(hidden),
            labels=labels,
            vocab_size=model.config.text_config.vocab_size,
            num_items_in_batch=7,
        )
        torch.testing.assert_close(labelled_causal_lm_loss(model.lm_head, hidden, labels, 7), summed)
        # The sync-free gather (the count known in advance, as the forward knows it) selects the same tokens.
        count = int((labels[:, 1:] != -100).sum())
        torch.testing.assert_close(labelled_causal_lm_loss(model.lm_head, hidden, labels, num_labelled=count), full)


def test_trajectory_target_alignment_follows_any_mask():
    """Each sample's masked entries land on its image tokens in order, wherever the mask's holes are."""
    target = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.2, 0.3, 0.5, 0.7]])
    mask = torch.tensor([[True, False, True, False], [True, True, True, False]])
    image_valid = torch.tensor([[True, True, False], [True, True, True]])
    aligned = align_trajectory_target(target, mask, image_valid)
    torch.testing.assert_close(aligned, torch.tensor([[0.1, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    narrow = torch.tensor([[0.4, 0.6], [1.0, 0.0]]), torch.tensor([[True, True], [True, False]])
    wider = torch.tensor([[True, True, False], [True, False, False]])
    aligned = align_trajectory_target(*narrow, wider)
    torch.testing.assert_close(aligned, torch.tensor([[0.4, 0.6, 0.0], [1.0, 0.0, 0.0]]))


# --- speed paths that must not change the function ----------------------------------------------------------------


def vision_inputs(processor, sizes):
    out = processor.image_processor(images=[image(size, seed) for seed, size in enumerate(sizes)], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("sizes", [[(112, 112)], [(112, 84), (56, 56), (140, 196)]], ids=["full-windows", "ragged"])
def test_packed_vision_attention_equals_the_window_loop(student, sizes):
    """One sdpa call per layer over the packed segments (Qwen2.5-VL's windows, or whole images for Qwen2-VL and
    Qwen3-VL; all segments equally long: a reshape; ragged: padded and masked) equals the family's loop of one sdpa
    call per segment, in float32 and bfloat16, and passes the same gradient."""
    from lavit_hf.attention import PACKED_VISION_ATTENTION, use_packed_vision_attention

    model, processor = student
    model = clone(model).float()
    model.set_attn_implementation("sdpa")
    pixels, grid = vision_inputs(processor, sizes)
    pixels.requires_grad_(True)
    outputs = {}
    for packed in (False, True):
        if packed:
            assert use_packed_vision_attention(model)
            assert model.model.visual.config._attn_implementation == PACKED_VISION_ATTENTION
        out = model.model.visual(pixels, grid_thw=grid).pooler_output
        (gradient,) = torch.autograd.grad(out.square().sum(), pixels)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.model.visual(pixels, grid_thw=grid).pooler_output.float()
        outputs[packed] = out.detach(), gradient, low
    (loop, loop_grad, loop_bf16), (ours, our_grad, ours_bf16) = outputs[False], outputs[True]
    torch.testing.assert_close(ours, loop, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(our_grad, loop_grad, atol=1e-6, rtol=1e-4)
    # bfloat16: the packed call is no further from the float32 result than the loop is (bf16 tolerance).
    assert (ours_bf16 - loop).norm() / loop.norm() < 2e-2
    assert (ours_bf16 - loop).norm() <= 1.5 * (loop_bf16 - loop).norm() + 1e-6
    assert not use_packed_vision_attention(model)  # only "sdpa" is switched


def test_linear_patch_embedding_equals_the_convolution(student, tmp_path):
    """The patch embedding as one GEMM on the Conv3d's own weight gives the tower's features and the weight's
    gradient of the convolution, keeps every parameter and saved tensor, switches once, and steps aside for a `proj`
    replaced after the switch (an adapter on it would otherwise be bypassed)."""
    from lavit_hf.patch_embedding import use_linear_patch_embedding

    model, processor = student
    model = clone(model).float()
    pixels, grid = vision_inputs(processor, [(112, 84), (56, 56)])
    tower = model.model.visual
    results = {}
    for linear in (False, True):
        if linear:
            assert use_linear_patch_embedding(model) == 1
        out = tower(pixels, grid_thw=grid).pooler_output
        (gradient,) = torch.autograd.grad(out.square().sum(), tower.patch_embed.proj.weight)
        results[linear] = out.detach(), gradient
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-4)
    assert use_linear_patch_embedding(model) == 0
    # What is saved is what the stock module saves, tensor for tensor.
    for folder, saved in (("switched", model), ("stock", clone(student[0]).float())):
        saved.save_pretrained(tmp_path / folder)
    switched, stock = (load_file(tmp_path / folder / "model.safetensors") for folder in ("switched", "stock"))
    assert switched.keys() == stock.keys() and all(torch.equal(switched[key], stock[key]) for key in stock)

    class Shifted(torch.nn.Conv3d):  # stands for an adapter's layer: a Conv3d that adds to the convolution
        def forward(self, x):
            return super().forward(x) + 1.0

    embed = tower.patch_embed
    patches = pixels[:8]
    plain = embed(patches)
    conv = embed.proj
    embed.proj = Shifted(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None)
    embed.proj.load_state_dict(conv.state_dict())
    torch.testing.assert_close(embed(patches), plain + 1.0, atol=1e-5, rtol=1e-4)
    # A ZeRO-3 partitioned weight is gathered only around a call of the convolution itself: that call is made.
    embed.proj = conv
    calls = []
    handle = conv.register_forward_pre_hook(lambda module, args: calls.append(1))
    embed(patches)
    assert not calls
    conv.weight.ds_id = 0
    torch.testing.assert_close(embed(patches), plain, atol=1e-5, rtol=1e-4)
    assert calls
    handle.remove()


def _loss_and_grads(model, inputs, images_ahead: bool):
    """The CE loss and every gradient of a training forward, with images encoded ahead or in the family's order."""
    model.model.host_vision_inputs = type(model.model).host_vision_inputs if images_ahead else None
    model.zero_grad()
    labelled = {**inputs, "labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}
    loss = model(**labelled).loss_ce
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", [0, 1])
def test_training_forward_encodes_images_ahead_with_the_familys_values(student, stage):
    """A training forward of a family with `host_vision_inputs` (Qwen2-VL, Qwen2.5-VL) hands the tower the inputs it
    accepts precomputed, derived from a host copy of the grid, and derives the 3-D positions on the host: the loss
    and every gradient are the family's own order's, exactly (packed window attention, images of two sizes, with and
    without the stage-1 rule; left padding, so that the padding mask reaches the language model in both orders), the
    image-token count checked as the family checks it. Qwen3-VL keeps the family's order."""
    from lavit_hf.attention import use_packed_vision_attention

    model, processor = student
    model = clone(model).train()
    model.set_training_stage(stage)
    use_packed_vision_attention(model)
    inputs = batch(processor, SAMPLES, padding_side="left")
    tower_inputs = []
    model.model.visual.register_forward_pre_hook(
        lambda module, args, kwargs: tower_inputs.append(set(kwargs)), with_kwargs=True
    )
    loss_ahead, grads_ahead = _loss_and_grads(model, inputs, images_ahead=True)
    loss_family, grads_family = _loss_and_grads(model, inputs, images_ahead=False)
    assert torch.equal(loss_ahead, loss_family)
    assert grads_ahead.keys() == grads_family.keys() and grads_family
    assert all(torch.equal(grads_ahead[name], grads_family[name]) for name in grads_family)
    ahead = type(model.model).host_vision_inputs is not None
    assert ahead == (model.config.model_type != "lavit_qwen3_vl")
    assert ("cu_seqlens" in tower_inputs[0]) == ahead and "cu_seqlens" not in tower_inputs[1]
    # The image-token count is checked against the features on the host copy of the ids, as the family checks it.
    model.model.host_vision_inputs = type(model.model).host_vision_inputs
    broken = inputs["input_ids"].clone()
    broken[0, (broken[0] == model.config.image_token_id).nonzero()[0]] = 0
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model.model(**{**inputs, "input_ids": broken})


@pytest.mark.parametrize(("stage", "padding_side"), [(0, "right"), (2, "right"), (0, "left"), (1, "right")])
def test_right_padded_training_batch_attends_causally_without_its_padding_mask(student, monkeypatch, stage, padding_side):
    """Under the plain causal rule (stages 0 and 2) no real token of a right-padded batch sees a padding position, so
    a training forward that encodes its images ahead hands the language model no padding mask: sdpa runs its causal
    kernel, not a masked one over every key. The loss and every gradient are those with the mask, to float32
    rounding. A left-padded batch and the stage-1 rule keep their masks."""
    from lavit_hf.attention import use_packed_vision_attention

    model, processor = student
    model = clone(model).train()
    model.set_training_stage(stage)
    use_packed_vision_attention(model)
    inputs = batch(processor, SAMPLES, padding_side=padding_side)
    assert not inputs["attention_mask"].all()
    length = inputs["input_ids"].shape[1]
    text_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, *args, is_causal=False, **kwargs):
        if query.shape[-2] == length:  # the language model's layers (the tower's sequences are its patches)
            text_calls.append((attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask, *args, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    loss_ahead, grads_ahead = _loss_and_grads(model, inputs, images_ahead=True)
    ahead_calls, text_calls[:] = list(text_calls), []
    loss_family, grads_family = _loss_and_grads(model, inputs, images_ahead=False)
    layers = model.config.text_config.num_hidden_layers
    assert text_calls == [(False, False)] * layers  # the family's order: the padding mask
    causal = model.config.model_type != "lavit_qwen3_vl" and stage != 1 and padding_side == "right"
    assert ahead_calls == [(True, True) if causal else (False, False)] * layers
    torch.testing.assert_close(loss_ahead, loss_family, rtol=1e-6, atol=0.0)
    for name, grad in grads_family.items():
        torch.testing.assert_close(grads_ahead[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item())


def test_batch_carrying_the_tower_inputs_trains_and_evaluates_as_one_without(student):
    """A batch that carries the vision tower's inputs, derived as the data collator derives them (the model's
    `vision_inputs_function`, on the grid alone, pickled as a worker process receives it), gives the training forward
    the loss and every gradient of the same batch without them, and the training forward derives none of them itself;
    an evaluation forward (the family's order) passes them to the tower and returns the same logits. Qwen3-VL, whose
    training forward keeps the family's order, has no such function."""
    from lavit_hf.attention import use_packed_vision_attention

    model, processor = student
    model = clone(model).train()
    use_packed_vision_attention(model)
    function = model.model.vision_inputs_function()
    if model.config.model_type == "lavit_qwen3_vl":
        assert function is None
        return
    inputs = batch(processor, SAMPLES)
    carried = {**inputs, **pickle.loads(pickle.dumps(function))(inputs["image_grid_thw"])}
    assert {"image_position_ids", "image_cu_seqlens"} <= set(carried)

    loss, grads = _loss_and_grads(model, inputs, images_ahead=True)

    def derive_nothing(*args):
        raise AssertionError("the forward derived the tower's inputs that the batch carries")

    model.model.host_vision_inputs = derive_nothing
    model.zero_grad()
    labelled = {**carried, "labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}
    loss_carried = model(**labelled).loss_ce
    loss_carried.backward()
    assert torch.equal(loss_carried.detach(), loss)
    carried_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert carried_grads.keys() == grads.keys() and all(torch.equal(carried_grads[n], grads[n]) for n in grads)

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**carried).logits, model(**inputs).logits)


def test_frozen_vision_tower_runs_without_autograd(student, inputs):
    """Activation checkpointing hooks the tower's patch embedding to require grad, so the stock family model records
    autograd through a frozen tower (then recomputes and backpropagates it for nothing). Ours computes the same
    features without autograd when the tower is frozen, and keeps autograd when it trains."""
    model, _ = student
    model = clone(model).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    trained = model.model.get_image_features(pixels, grid).pooler_output
    assert all(part.requires_grad for part in trained)
    model.model.visual.requires_grad_(False)
    stock = family_class(model.model).get_image_features(model.model, pixels, grid).pooler_output
    # The behaviour this avoids: Qwen2-VL and Qwen2.5-VL hook the tower's patch embedding (Qwen3-VL's tower is not).
    assert all(part.requires_grad for part in stock) == (model.config.model_type != "lavit_qwen3_vl")
    frozen = model.model.get_image_features(pixels, grid).pooler_output
    assert not any(part.requires_grad for part in frozen)
    for ours, theirs, unfrozen in zip(frozen, stock, trained, strict=True):
        assert torch.equal(ours, theirs.detach())
        assert torch.equal(ours, unfrozen.detach())
