"""Statistics of the demo's experiments: accuracies and paired differences over seeds and held-out items, with
bootstrap confidence intervals that account for both.

Every student of an experiment is scored item by item on the same held-out items, so its results form a `(seeds,
items)` matrix of 0/1 correctness. Two students trained with the same seed (same data order, same initialisation of
the heads) and scored on the same items are *paired*: their difference matrix removes the shared item difficulty.
The interval of a mean comes from a two-level bootstrap: resample the seeds, then the items (the same items for every
resampled seed), and take the percentiles of the resampled means; it is wide when the seeds disagree, as it should be.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval.

    Attributes:
        mean (`float`): the mean over seeds and items.
        low (`float`), high (`float`): the interval's bounds.
        per_seed (`tuple[float, ...]`): the mean of each seed.
    """

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, percent: bool = True, signed: bool = False) -> str:
        """`"72.3% [68.1, 76.0]"` (or `"+4.1 pp [...]"` with `signed`)."""
        scale = 100.0 if percent else 1.0
        if signed:
            unit = " pp" if percent else ""
            return f"{self.mean * scale:+.1f}{unit} [{self.low * scale:+.1f}, {self.high * scale:+.1f}]"
        unit = "%" if percent else ""
        return f"{self.mean * scale:.1f}{unit} [{self.low * scale:.1f}, {self.high * scale:.1f}]"


def bootstrap_mean(
    values: Sequence[Sequence[float]] | np.ndarray, confidence: float = 0.95, resamples: int = 4000, seed: int = 0
) -> Estimate:
    """The mean of a `(seeds, items)` matrix and its two-level bootstrap interval (seeds, then items).

    Args:
        values (`np.ndarray` of shape `(seeds, items)`): one row per seed, one column per held-out item; for a
            paired difference, the difference of two such matrices.
        confidence (`float`, *optional*, defaults to 0.95): the interval's coverage.
        resamples (`int`, *optional*, defaults to 4000): bootstrap resamples.
        seed (`int`, *optional*, defaults to 0): seeds the resampling (the interval is reproducible).

    Example:

    ```python
    >>> estimate = bootstrap_mean([[1, 1, 0, 1], [1, 0, 0, 1]])
    >>> estimate.mean, estimate.per_seed
    (0.625, (0.75, 0.5))
    >>> estimate.low <= 0.625 <= estimate.high
    True

    ```
    """
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"Expected a non-empty (seeds, items) matrix, got shape {matrix.shape}.")
    seeds, items = matrix.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    item_draws = rng.integers(0, items, size=(resamples, items))
    # Mean over the resampled seeds and items: the item resample is shared by the seeds of one draw.
    per_seed_item_means = np.stack([matrix[:, draw].mean(axis=1) for draw in item_draws])  # (resamples, seeds)
    means = np.take_along_axis(per_seed_item_means, seed_draws, axis=1).mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(float(matrix.mean()), float(low), float(high), tuple(float(m) for m in matrix.mean(axis=1)))


def paired_difference(
    first: Sequence[Sequence[float]] | np.ndarray, second: Sequence[Sequence[float]] | np.ndarray, **kwargs
) -> Estimate:
    """`first - second` for two `(seeds, items)` correctness matrices paired by seed and item, with its interval.

    Example:

    ```python
    >>> round(paired_difference([[1, 1, 1, 0]], [[1, 0, 0, 0]]).mean, 2)
    0.5

    ```
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"Paired matrices must have one shape (seeds, items), got {first.shape} and {second.shape}.")
    return bootstrap_mean(first - second, **kwargs)


__all__ = ["Estimate", "bootstrap_mean", "paired_difference"]
