"""What `LaViTTrainer` does with its datasets: samples over the length limit left out (counted, named) or refused,
and length-grouped batches that still show every sample once per epoch."""

import logging
from collections import Counter

import pytest

from lavit_hf.testing_utils import synthetic_lavit_dataset
from trainer import LaViTTrainer, LaViTTrainingArguments
from trainer.train import with_target_format


D = 48


def _args(output_dir, **overrides) -> LaViTTrainingArguments:
    values = dict(
        output_dir=str(output_dir), min_pixels=3136, max_pixels=50176, activation_checkpointing=False,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return LaViTTrainingArguments(**values)


@pytest.fixture(scope="module")
def mixed():
    """64 rows of two image sizes (4 and 12 student image tokens), in alternating order."""
    return with_target_format(synthetic_lavit_dataset(64, D, image_sizes=((56, 56), (112, 84))))


def test_samples_over_max_length_are_left_out_and_counted(tiny_lavit, mixed, tmp_path, caplog):
    model, processor = tiny_lavit
    dataset = mixed.select(range(6))
    trainer = LaViTTrainer(model, _args(tmp_path), train_dataset=dataset, processing_class=processor)
    lengths = trainer._train_lengths
    assert trainer.max_length == model.config.text_config.max_position_embeddings  # the default: the positions
    limit = min(lengths) + 2  # between the two image sizes: rows 1, 3, 5 are longer
    with caplog.at_level(logging.WARNING, logger="trainer.lavit_trainer"):
        trainer = LaViTTrainer(model, _args(tmp_path, max_length=limit), train_dataset=dataset, eval_dataset=dataset,
                               processing_class=processor)  # fmt: skip
    assert trainer.train_dataset["id"] == ["synthetic-0", "synthetic-2", "synthetic-4"]
    assert trainer.eval_dataset["id"] == ["synthetic-0", "synthetic-2", "synthetic-4"]
    assert trainer.skipped_long_samples == {"train": ["synthetic-1", "synthetic-3", "synthetic-5"],
                                            "eval": ["synthetic-1", "synthetic-3", "synthetic-5"]}  # fmt: skip
    assert f"left out 3 of 6 samples longer than max_length={limit}" in caplog.text and "'synthetic-3'" in caplog.text
    trainer.train()  # what is left trains
    with pytest.raises(ValueError, match=rf"3 sample\(s\) are longer than max_length={limit}.*'synthetic-1'"):
        LaViTTrainer(model, _args(tmp_path, max_length=limit, long_samples="error"), train_dataset=dataset,
                     processing_class=processor)  # fmt: skip


@pytest.mark.parametrize("accumulation", [1, 2])
def test_length_grouped_batches_cover_every_sample_once(tiny_lavit, mixed, tmp_path, accumulation):
    """The training batches of a `group_by_length` run, from the token lengths the trainer measured (no length
    column in the data): nearly every batch holds one image size, and every sample comes once per epoch."""
    model, processor = tiny_lavit
    args = _args(tmp_path, train_sampling_strategy="group_by_length", gradient_accumulation_steps=accumulation)
    trainer = LaViTTrainer(model, args, train_dataset=mixed, processing_class=processor)
    large = [length > 46 for length in trainer._train_lengths]  # 12 image tokens, not 4 (questions vary a little)
    assert large == [index % 2 == 1 for index in range(len(mixed))]
    order = list(trainer._get_train_sampler())
    assert Counter(order) == Counter(range(len(mixed)))  # every sample once per epoch
    # The dataloader the Trainer trains from follows that order: nearly all of its batches hold one image size (in
    # the rows' own, alternating order every batch would mix them).
    batches = [batch["image_grid_thw"][:, 1:].prod(dim=1).tolist() for batch in trainer.get_train_dataloader()]
    assert sum(len(batch) for batch in batches) == len(mixed)
    mixed_batches = sum(len(set(batch)) > 1 for batch in batches)
    assert mixed_batches <= 4, batches
