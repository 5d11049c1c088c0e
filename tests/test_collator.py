"""DataCollatorForLaViT: chat, labels, image inputs and teacher targets on the student's grid (docs/method.md sections
1-2)."""

import copy
import math

import pytest
import torch

from lavit_hf import schema
from lavit_hf.grids import resample_grid, resample_trajectory
from lavit_hf.heads import pool_vtop_target
from lavit_hf.testing_utils import synthetic_lavit_dataset, synthetic_lavit_rows
from trainer.collator import DataCollatorForLaViT
from trainer.train import with_target_format


D = 48
# Row 0: a 56x56 image (student grid 2x2) with the same teacher grid; row 1: 112x84 (student 3x4), teacher 3x5.
GRIDS = ((2, 2), (3, 5))


def _rows(num_rows: int = 2, **kwargs) -> list[dict]:
    columns = synthetic_lavit_rows(num_rows, D, teacher_grids=GRIDS, **kwargs)
    return [{name: values[index] for name, values in columns.items()} for index in range(num_rows)]


@pytest.fixture
def collator(tiny_lavit_pair):
    return DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D)


def test_labels_start_at_the_first_latent_token(collator, tiny_lavit_pair):
    rows = _rows()
    batch = collator(rows)
    tokenizer = tiny_lavit_pair[1].tokenizer
    latent_ids = tiny_lavit_pair[0].config.latent_token_ids
    for index, row in enumerate(rows):
        labels, ids = batch["labels"][index], batch["input_ids"][index]
        labelled = (labels != -100).nonzero().flatten()
        assert ids[labelled[0]].item() == latent_ids[0]
        # One contiguous span: the latent tokens, a space and the answer, then the end of the turn.
        assert torch.equal(labelled, torch.arange(labelled[0], labelled[-1] + 1))
        assert tokenizer.decode(labels[labelled]) == "<lvr1><lvr2><lvr3><lvr4> " + row["answer"] + "<|im_end|>"
        assert (labels[batch["attention_mask"][index] == 0] == -100).all()
    # Right padding: the shorter sample ends in padding.
    assert batch["attention_mask"][:, 0].all()


def test_image_inputs_are_kept(collator, tiny_lavit_pair):
    batch = collator(_rows())
    config = tiny_lavit_pair[0].config
    is_image = batch["input_ids"] == config.image_token_id
    # mm_token_type_ids marks the image tokens (dropping it silently gives them 1-D positions, docs/pitfalls.md,
    # Qwen2.5-VL in transformers 5.x).
    assert torch.equal(batch["mm_token_type_ids"] == 1, is_image)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 6, 8]]
    assert is_image.sum(dim=1).tolist() == [4, 12]
    assert batch["pixel_values"].shape[0] == 16 + 48


def test_trajectory_is_resampled_to_the_student_grid(collator):
    rows = _rows()
    batch = collator(rows)
    target, mask = batch["trajectory_target"], batch["trajectory_mask"]
    assert mask.sum(dim=1).tolist() == [4, 12]
    # Same grid: unchanged. Different grid (3x5 -> 3x4): bilinear on the 2-D grid, then renormalised.
    torch.testing.assert_close(target[0, :4], torch.tensor(rows[0]["trajectory_attention"]))
    expected = resample_trajectory(torch.tensor(rows[1]["trajectory_attention"]), (3, 5), (3, 4))
    torch.testing.assert_close(target[1], expected)
    assert target[1].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (target[0, 4:] == 0).all() and not mask[0, 4:].any()
    assert batch["vtop_target"].shape == (2, D) and batch["vtop_target"].dtype == torch.float32


def test_batch_runs_through_the_model(collator, tiny_lavit):
    model, _ = tiny_lavit
    model.train()
    outputs = model(**collator(_rows()))
    for name in ("loss_ce", "loss_vtop", "loss_traj"):
        assert math.isfinite(getattr(outputs, name).item())
    assert outputs.loss_traj.item() > 0


def test_token_wise_vtop_is_resampled(tiny_lavit_pair):
    collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D, vtop_source="tokens")
    rows = _rows(token_features=True)
    batch = collator(rows)
    assert batch["vtop_target"].shape == (2, 12, D)
    assert batch["vtop_target_mask"].sum(dim=1).tolist() == [4, 12]
    expected = resample_grid(torch.as_tensor(rows[1]["vtop_tokens"]).float(), (3, 5), (3, 4))
    torch.testing.assert_close(batch["vtop_target"][1], expected)
    model, _ = tiny_lavit_pair
    assert pool_vtop_target(batch["vtop_target"], batch["vtop_target_mask"]).shape == (2, D)


def test_trajectory_weighted_vtop_is_what_the_teacher_looked_at(tiny_lavit_pair):
    """`vtop_source="trajectory"`: the resampled token rows pooled with the resampled trajectory as weights; a
    trajectory on one token gives exactly that token's features."""
    collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D, vtop_source="trajectory")
    rows = _rows(token_features=True)
    batch = collator(rows)
    assert batch["vtop_target"].shape == (2, D) and "vtop_target_mask" not in batch
    tokens = resample_grid(torch.as_tensor(rows[1]["vtop_tokens"]).float(), (3, 5), (3, 4))
    weights = batch["trajectory_target"][1, :12]
    torch.testing.assert_close(batch["vtop_target"][1], weights @ tokens)
    one_hot = [0.0] * 4
    one_hot[2] = 1.0
    rows[0] = _break(rows[0], "trajectory_attention", one_hot)  # row 0: teacher grid = student grid (2x2)
    torch.testing.assert_close(collator(rows)["vtop_target"][0], torch.as_tensor(rows[0]["vtop_tokens"][2]).float())
    assert schema.VTOP_TOKENS in collator.columns and schema.VTOP not in collator.columns


def test_torch_formatted_rows_give_the_same_batch(collator):
    dataset = synthetic_lavit_dataset(2, D, teacher_grids=GRIDS)
    from_lists = collator([dataset[0], dataset[1]])
    formatted = with_target_format(dataset)
    assert isinstance(formatted[1]["trajectory_attention"], torch.Tensor)
    from_tensors = collator([formatted[0], formatted[1]])
    for key, value in from_lists.items():
        torch.testing.assert_close(from_tensors[key], value)


def _break(row: dict, key: str, value) -> dict:
    row = copy.deepcopy(row)
    row[key] = value
    return row


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("vtop", None, "'vtop' target is missing"),
        ("vtop", [0.1] * (D - 1), r"'vtop' has shape \(47,\), expected \(48,\)"),
        ("trajectory_attention", None, "'trajectory_attention' target is missing"),
        ("trajectory_attention", [1 / 14] * 14, "needs 15 entries"),
        ("trajectory_attention", [float("nan")] + [1 / 14] * 14, "non-finite"),
        ("trajectory_attention", [0.5] * 15, "not a distribution"),
        ("teacher_grid", None, "teacher_grid"),
        ("image", None, "missing"),
    ],
)
def test_bad_row_raises_naming_the_row(collator, key, value, message):
    rows = _rows()
    rows[1] = _break(rows[1], key, value)
    with pytest.raises(ValueError, match=message) as error:
        collator(rows)
    assert "synthetic-1" in str(error.value)


def test_wrong_token_feature_shape_raises(tiny_lavit_pair):
    collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D, vtop_source="tokens")
    rows = _rows(token_features=True)
    rows[0] = _break(rows[0], schema.VTOP_TOKENS, rows[0][schema.VTOP_TOKENS][:3])
    with pytest.raises(ValueError, match=r"synthetic-0.*vtop_tokens.*expected \(4, 48\)"):
        collator(rows)


def test_processor_without_latent_tokens_is_refused(tiny_teacher_pair):
    with pytest.raises(ValueError, match="lacks the latent tokens"):
        DataCollatorForLaViT(tiny_teacher_pair[1])


@pytest.mark.parametrize(
    ("field", "text", "token"),
    [("question", "Which shape <lvr1> is left?", "<lvr1>"), ("answer", "the <|image_pad|> square", "<|image_pad|>")],
)
def test_special_tokens_in_user_text_are_refused_naming_the_row(collator, field, text, token):
    """A literal latent token in a question would let it see the image in stage 1 and start the labels inside it; an
    image placeholder in an answer would break the processor's image expansion: both are refused, naming the row."""
    rows = _rows()
    rows[1] = _break(rows[1], field, text)
    with pytest.raises(ValueError, match=f"row 'synthetic-1': the {field} holds the special token '{token}'"):
        collator(rows)


def test_sample_lengths_equal_the_collated_lengths(tiny_lavit_pair):
    """`sample_lengths` measures a row from its `image_size` and text, as the collator will tokenise it, for images
    the processor resizes up, down or not at all, and for pixel limits given to the collator."""
    sizes = ((56, 56), (112, 84), (300, 200), (1000, 30), (640, 480), (50, 900))
    dataset = synthetic_lavit_dataset(len(sizes), D, image_sizes=sizes, answer_words=5)
    for limits in ({}, {"min_pixels": 3136, "max_pixels": 12544}):
        collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D, **limits)
        collated = collator([dataset[i] for i in range(len(sizes))])["attention_mask"].sum(dim=1).tolist()
        assert collator.sample_lengths(dataset) == collated
        assert collator.sample_lengths(dataset.remove_columns([schema.IMAGE_SIZE])) == collated  # from the images


def test_a_sample_over_max_length_is_refused_naming_the_row(tiny_lavit_pair):
    rows = _rows()
    lengths = DataCollatorForLaViT(tiny_lavit_pair[1])(rows)["attention_mask"].sum(dim=1).tolist()
    collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=D, max_length=lengths[1] - 1)
    message = f"row 'synthetic-1': {lengths[1]} tokens, more than max_length={lengths[1] - 1}"
    with pytest.raises(ValueError, match=message):
        collator(rows)
