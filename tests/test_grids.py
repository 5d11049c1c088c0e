"""Resampling teacher targets between token grids: bilinear on the 2-D grid, then renormalised (docs/method.md
section 1)."""

import pytest
import torch

from lavit_hf.grids import resample_grid, resample_trajectory


def test_identity_when_grids_match():
    values = torch.rand(12, 5)
    assert torch.equal(resample_grid(values, (3, 4), (3, 4)), values)
    trajectory = torch.softmax(torch.randn(12), 0)
    torch.testing.assert_close(resample_trajectory(trajectory, (3, 4), (3, 4)), trajectory)


def test_known_upsampling_case():
    # Bilinear, align_corners=False, 2x2 -> 4x4: the 1-D weights of source 0 are [1, 0.75, 0.25, 0].
    out = resample_grid(torch.tensor([1.0, 0.0, 0.0, 0.0]), (2, 2), (4, 4)).view(4, 4)
    weights = torch.tensor([1.0, 0.75, 0.25, 0.0])
    torch.testing.assert_close(out, weights[:, None] * weights[None, :])
    trajectory = resample_trajectory(torch.tensor([1.0, 0.0, 0.0, 0.0]), (2, 2), (4, 4)).view(4, 4)
    torch.testing.assert_close(trajectory, weights[:, None] * weights[None, :] / 4.0)


def test_integer_upsampling_preserves_mass_before_renormalising():
    # Each source token spreads exactly k*k of its value over a k-times finer grid.
    trajectory = torch.softmax(torch.randn(6), 0)
    assert resample_grid(trajectory, (2, 3), (6, 9)).sum().item() == pytest.approx(9.0, abs=1e-5)


def test_row_major_layout_is_kept():
    # A trajectory concentrated on the top row stays on the top rows after resampling to a non-square grid.
    trajectory = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])  # grid (3, 2): the top row
    out = resample_trajectory(trajectory, (3, 2), (6, 5)).view(6, 5)
    # Rows 0-2 of the finer grid take weights 1, 0.75, 0.25 of the top source row; rows 3+ none.
    assert out[3:].sum() == 0 and out[:3].sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(out[:3].sum(dim=1), torch.tensor([1.0, 0.75, 0.25]) / 2.0)


@pytest.mark.parametrize("to_grid", [(2, 2), (5, 3), (7, 11), (1, 1)])
def test_trajectory_is_a_distribution(to_grid):
    trajectory = torch.softmax(torch.randn(20), 0)
    out = resample_trajectory(trajectory, (4, 5), to_grid)
    assert out.shape == (to_grid[0] * to_grid[1],)
    assert (out >= 0).all() and out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_downsampling_keeps_every_token():
    # Plain bilinear 8x8 -> 2x2 reads only 4 source tokens: a point mass elsewhere would vanish. Antialiasing keeps it.
    point = torch.zeros(64)
    point[8 * 1 + 1] = 1.0  # row 1, column 1: not one of the tokens plain bilinear samples
    out = resample_trajectory(point, (8, 8), (2, 2))
    assert out.argmax().item() == 0 and out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_features_resample_per_channel():
    features = torch.randn(6, 4)
    out = resample_grid(features, (2, 3), (4, 6))
    assert out.shape == (24, 4)
    for channel in range(4):
        torch.testing.assert_close(out[:, channel], resample_grid(features[:, channel], (2, 3), (4, 6)))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="expected"):
        resample_grid(torch.rand(5), (2, 3), (2, 2))
    with pytest.raises(ValueError, match="two positive integers"):
        resample_grid(torch.rand(6), (2, 3, 1), (2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        resample_trajectory(torch.tensor([0.5, -0.5, 1.0, 0.0]), (2, 2), (3, 3))
    with pytest.raises(ValueError, match="positive mass"):
        resample_trajectory(torch.zeros(4), (2, 2), (3, 3))
