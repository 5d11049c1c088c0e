"""The demo's experiment bookkeeping: every variant gets the same budget, the diagnostics score every item."""

import pytest
import torch

from lavit_cli.experiment import PAPER_STAGE1_SHARE, VARIANTS, Budget, resolve_variants


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_spends_the_same_budget(name):
    budget = Budget(steps=160, learning_rate=2e-3, batch_size=16, warmup_ratio=0.1)
    fields = budget.schedule(VARIANTS[name])
    if VARIANTS[name].two_stage:
        assert fields["stage1_steps"] + fields["stage2_steps"] == 160
        assert fields["stage1_steps"] == round(160 * PAPER_STAGE1_SHARE)
        assert fields["stage1_learning_rate"] == 2e-3 and fields["stage2_learning_rate"] == pytest.approx(8e-4)
        assert fields["stage1_warmup_ratio"] == fields["stage2_warmup_ratio"] == 0.1
    else:
        assert (fields["max_steps"], fields["learning_rate"], fields["warmup_steps"]) == (160, 2e-3, 0.1)
    # A variant changes the loss, never the budget.
    assert not set(VARIANTS[name].overrides) & {"max_steps", "learning_rate", "per_device_train_batch_size", "seed"}


def test_the_reference_and_the_controls_are_registered():
    assert {"ce_only", "ce_two_stage", "lavit_single", "lavit_two_stage", "vtop_only", "trajectory_only"} <= set(VARIANTS)
    assert VARIANTS["ce_only"].overrides == {"vtop_loss_weight": 0.0, "trajectory_loss_weight": 0.0}
    with pytest.raises(ValueError, match="Unknown variant"):
        resolve_variants(["ce_only", "lavit_three_stage"])


def test_the_stage_split_and_the_stage2_rate_are_budget_settings():
    budget = Budget(steps=100, learning_rate=1e-3, batch_size=8, stage1_share=0.7, stage2_learning_rate_ratio=1.0)
    fields = budget.schedule(VARIANTS["lavit_two_stage"])
    assert (fields["stage1_steps"], fields["stage2_steps"]) == (70, 30)
    assert fields["stage1_learning_rate"] == fields["stage2_learning_rate"] == 1e-3
    with pytest.raises(ValueError, match="stage1_share"):
        Budget(steps=100, learning_rate=1e-3, batch_size=8, stage1_share=1.0)
    with pytest.raises(ValueError, match="stage2_learning_rate_ratio"):
        Budget(steps=100, learning_rate=1e-3, batch_size=8, stage2_learning_rate_ratio=0.0)


@pytest.mark.parametrize("vtop_source", ["pooled", "trajectory", "tokens"])
def test_vtop_targets_are_the_students_targets(tiny_lavit_pair, vtop_source):
    """`vtop_targets` gives each row's target as the training collator does, whatever the chunking (token-wise
    targets mean-pooled over the image)."""
    from lavit_cli.experiment import vtop_targets
    from lavit_hf.testing_utils import synthetic_lavit_rows
    from trainer.collator import DataCollatorForLaViT

    columns = synthetic_lavit_rows(5, 8, token_features=True)
    rows = [{name: values[index] for name, values in columns.items()} for index in range(5)]
    collator = DataCollatorForLaViT(tiny_lavit_pair[1], teacher_hidden_size=8, vtop_source=vtop_source)
    targets = vtop_targets(collator, rows, batch_size=2)
    assert targets.shape == (5, 8)
    for index, row in enumerate(rows):
        batch = collator([row])
        expected = batch["vtop_target"][0] if vtop_source != "tokens" else batch["vtop_target"][0].mean(0)
        torch.testing.assert_close(targets[index], expected.float())


def test_the_probe_reads_an_answer_the_states_carry_and_not_one_they_do_not():
    from lavit_cli.experiment import linear_probe_accuracy

    generator = torch.Generator().manual_seed(0)
    colours = ["red", "green", "blue", "yellow"]
    labels = [colours[i % 4] for i in range(240)]
    codes = torch.nn.functional.one_hot(torch.tensor([i % 4 for i in range(240)]), 4).float()
    noise = torch.randn(240, 16, generator=generator)
    carrying = torch.cat([codes * 3, noise[:, 4:]], dim=1) + 0.3 * noise
    assert linear_probe_accuracy(carrying[:160], labels[:160], carrying[160:], labels[160:]) == 1.0
    assert linear_probe_accuracy(noise[:160], labels[:160], noise[160:], labels[160:]) < 0.5
