"""The model-FLOP count behind the benches' MFU (`bench/flops.py`) against the matrix products a training step runs,
counted by torch's `FlopCounterMode` on the tiny student with eager attention."""

import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

from lavit_hf.testing_utils import synthetic_lavit_rows
from trainer.collator import DataCollatorForLaViT


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from flops import training_flops  # noqa: E402


PRODUCTS = ("mm", "addmm", "convolution", "convolution_backward")


@pytest.mark.parametrize("tower_trains", [False, True])
def test_counted_flops_are_the_products_a_training_step_runs(tiny_lavit, tower_trains):
    """Linear layers (the head on the labelled positions only, the tower forward only when frozen) and the LaViT heads
    match the products of a forward and backward exactly; attention matches eager attention's products once eager's
    full score matrix is reduced to the causal half (`T (T + 1)` of its `2 T**2` pairs a layer), the tower's windows
    and images exactly."""
    model, processor = tiny_lavit
    model.set_attn_implementation("eager")
    model.train()
    model.model.visual.requires_grad_(tower_trains)
    rows = synthetic_lavit_rows(1, model.config.teacher_hidden_size, image_sizes=[(224, 168)], answer_words=6)
    collator = DataCollatorForLaViT(processor, teacher_hidden_size=model.config.teacher_hidden_size)
    batch = collator([{name: column[0] for name, column in rows.items()}])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["input_ids"].shape[1] - 1  # the prompt and the image are not labelled

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    ran = {str(op).split(".")[-1]: flops for op, flops in counter.get_flop_counts()["Global"].items()}
    counted = training_flops(model, batch)

    # The trajectory head's product with the image tokens runs as a batched product, as attention does.
    text = model.config.get_text_config()
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    trajectory_product = 3 * 2 * image_tokens * text.hidden_size
    linear = sum(ran.get(op, 0) for op in PRODUCTS)
    assert linear == counted["language linear"] + counted["vision linear"] + counted["heads"] - trajectory_product
    assert counted["heads"] > trajectory_product > 0

    tokens = int(batch["attention_mask"].sum())
    causal_to_full = 2 * tokens**2 / (tokens * (tokens + 1))
    eager_attention = counted["vision attention"] + counted["language attention"] * causal_to_full
    assert ran["bmm"] == pytest.approx(eager_attention + trajectory_product, rel=1e-12)
