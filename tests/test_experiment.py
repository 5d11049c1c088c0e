"""The demo's experiment bookkeeping: every variant gets the same budget, the diagnostics score every item."""

import pytest

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
