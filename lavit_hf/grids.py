"""Geometry of the merged image-token grid: resampling teacher targets between grids, and the share of a trajectory
inside a box. The contract between extraction, training and the demo.

Resampling. The teacher sees the image at its own resolution, so its merged token grid `(h, w)` can differ from the
student's. docs/method.md section 1: resample bilinearly on the 2-D token grid, then renormalise a trajectory; never
guess a grid from a token count (the dataset stores `teacher_grid` with every sample, see `lavit_hf.schema`).

Boxes. Visual-CoT boxes are normalised to the image *padded to a square* (LLaVA's `expand2square`, which centres the
image on the square), so a box is first mapped back to the original image:

    S = max(W, H),  x_img = (x * S - (S - W) / 2) / W,  y_img = (y * S - (S - H) / 2) / H

(`square-topleft` uses offsets 0, `image` takes the box as already normalised to the image); `box_from_pixels` is the
way in, from a box in pixels of the original image to its frame. The merged token grid
`(h, w)` covers the whole resized image, so token `(r, c)` is the cell `[c / w, (c + 1) / w] x [r / h, (r + 1) / h]`;
each token contributes its probability times the fraction of its cell's area inside the box.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _grid(grid: Sequence[int] | torch.Tensor, name: str) -> tuple[int, int]:
    values = grid.tolist() if isinstance(grid, torch.Tensor) else list(grid)
    if len(values) != 2 or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be two positive integers (h, w), got {values}.")
    return int(values[0]), int(values[1])


def resample_grid(
    values: torch.Tensor, from_grid: Sequence[int] | torch.Tensor, to_grid: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Bilinearly resample values laid out row-major on a 2-D token grid onto another grid.

    Bilinear with `align_corners=False` (token centres, the image-resize convention). When a dimension shrinks the
    filter is widened (`antialias=True`) so that every source token contributes: plain bilinear would skip tokens,
    and a trajectory peaked on a skipped token would lose its mass.

    Args:
        values (`torch.Tensor` of shape `(h * w,)` or `(h * w, d)`):
            One value (a trajectory) or one feature vector (`vtop_tokens`) per token of `from_grid`, row-major.
        from_grid (`tuple[int, int]`):
            The grid `(h, w)` the values are laid out on.
        to_grid (`tuple[int, int]`):
            The grid `(h', w')` to resample to.

    Returns:
        `torch.Tensor` of shape `(h' * w',)` or `(h' * w', d)`, float32.

    Example:

    ```python
    >>> import torch
    >>> from lavit_hf.grids import resample_grid
    >>> resample_grid(torch.tensor([1.0, 0.0, 0.0, 0.0]), (2, 2), (4, 4)).view(4, 4)
    tensor([[1.0000, 0.7500, 0.2500, 0.0000],
            [0.7500, 0.5625, 0.1875, 0.0000],
            [0.2500, 0.1875, 0.0625, 0.0000],
            [0.0000, 0.0000, 0.0000, 0.0000]])

    ```
    """
    (h, w), (new_h, new_w) = _grid(from_grid, "from_grid"), _grid(to_grid, "to_grid")
    values = torch.as_tensor(values).float()
    if values.ndim not in (1, 2) or values.shape[0] != h * w:
        raise ValueError(f"values has shape {tuple(values.shape)}: expected ({h * w},) or ({h * w}, d) for grid {(h, w)}.")
    if (h, w) == (new_h, new_w):
        return values.clone()
    channels = values.view(h, w, -1).permute(2, 0, 1).unsqueeze(0)  # (1, d, h, w)
    shrinks = new_h < h or new_w < w
    resized = F.interpolate(channels, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=shrinks)
    resized = resized.squeeze(0).permute(1, 2, 0).reshape(new_h * new_w, -1)
    return resized.squeeze(-1) if values.ndim == 1 else resized


def resample_trajectory(
    trajectory: torch.Tensor, from_grid: Sequence[int] | torch.Tensor, to_grid: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Resample a distribution over the tokens of `from_grid` onto `to_grid` and renormalise it to sum to 1.

    Args:
        trajectory (`torch.Tensor` of shape `(h * w,)`): non-negative, with positive mass, row-major on `from_grid`.
        from_grid (`tuple[int, int]`): the teacher's merged grid `(h, w)`.
        to_grid (`tuple[int, int]`): the student's merged grid `(h', w')`.

    Returns:
        `torch.Tensor` of shape `(h' * w',)`, float32, non-negative, summing to 1.

    Example:

    ```python
    >>> import torch
    >>> from lavit_hf.grids import resample_trajectory
    >>> resample_trajectory(torch.full((4,), 0.25), (2, 2), (3, 3))
    tensor([0.1111, 0.1111, 0.1111, 0.1111, 0.1111, 0.1111, 0.1111, 0.1111, 0.1111])

    ```
    """
    trajectory = torch.as_tensor(trajectory).float()
    if trajectory.ndim != 1:
        raise ValueError(f"A trajectory is one value per token, got shape {tuple(trajectory.shape)}.")
    if bool((trajectory < 0).any()):
        raise ValueError("A trajectory must be non-negative.")
    # Interpolation weights are non-negative, so the result is too; clamp only guards float rounding.
    resampled = resample_grid(trajectory, from_grid, to_grid).clamp_min(0.0)
    total = resampled.sum()
    if not bool(total > 0):
        raise ValueError("A trajectory must have positive mass to be renormalised.")
    return resampled / total


BBOX_FRAMES = ("square-center", "square-topleft", "image")


def box_in_image(bbox: list[float], image_size: tuple[int, int], frame: str = "square-center") -> list[float]:
    """The box `[x1, y1, x2, y2]` normalised to the original image (clipped to [0, 1]).

    Args:
        bbox (`list[float]`): the box as stored (normalised to the padded square for Visual-CoT).
        image_size (`tuple[int, int]`): the original image's `(width, height)`.
        frame (`str`, *optional*, defaults to `"square-center"`): the box's frame, one of `BBOX_FRAMES`.

    Example:

    ```python
    >>> box_in_image([0.0, 0.25, 1.0, 0.75], (200, 100))  # the whole 200x100 image inside its 200x200 square
    [0.0, 0.0, 1.0, 1.0]

    ```
    """
    if frame not in BBOX_FRAMES:
        raise ValueError(f"bbox frame {frame!r}: expected one of {BBOX_FRAMES}.")
    width, height = image_size
    if frame == "image":
        side, off_x, off_y = None, 0.0, 0.0
        box = list(bbox)
    else:
        side = max(width, height)
        off_x, off_y = ((side - width) / 2, (side - height) / 2) if frame == "square-center" else (0.0, 0.0)
        box = [
            (bbox[0] * side - off_x) / width,
            (bbox[1] * side - off_y) / height,
            (bbox[2] * side - off_x) / width,
            (bbox[3] * side - off_y) / height,
        ]
    return [min(max(v, 0.0), 1.0) for v in box]


def box_from_pixels(
    box: Sequence[float], image_size: tuple[int, int], frame: str = "square-center"
) -> list[float]:
    """A box `[x1, y1, x2, y2]` in pixels of the original image, normalised in `frame` (the inverse of `box_in_image`).

    Args:
        box (`Sequence[float]`): the box in pixels.
        image_size (`tuple[int, int]`): the original image's `(width, height)`.
        frame (`str`, *optional*, defaults to `"square-center"`): one of `BBOX_FRAMES`; `square-center` normalises to
            the image padded to a centred square, as Visual-CoT stores its boxes.

    Example:

    ```python
    >>> box_from_pixels([0, 0, 200, 100], (200, 100))  # the whole 200x100 image, in its 200x200 square
    [0.0, 0.25, 1.0, 0.75]
    >>> box_from_pixels([0, 0, 200, 100], (200, 100), "image")
    [0.0, 0.0, 1.0, 1.0]

    ```
    """
    if frame not in BBOX_FRAMES:
        raise ValueError(f"bbox frame {frame!r}: expected one of {BBOX_FRAMES}.")
    width, height = image_size
    x1, y1, x2, y2 = box
    if frame == "image":
        return [x1 / width, y1 / height, x2 / width, y2 / height]
    side = max(width, height)
    dx, dy = ((side - width) / 2, (side - height) / 2) if frame == "square-center" else (0.0, 0.0)
    return [(x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side]


def _cell_overlap(n: int, low: float, high: float) -> torch.Tensor:
    """Fraction of each of `n` equal cells of [0, 1] that lies inside [low, high]."""
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    return ((torch.minimum(edges[1:], torch.tensor(high)) - torch.maximum(edges[:-1], torch.tensor(low))) * n).clamp(0)


def box_mass(
    trajectory: list[float] | torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    bbox: list[float],
    frame: str = "square-center",
) -> float:
    """Share of a trajectory's mass inside the box (area-weighted over the token cells, see the module docstring).

    Example:

    ```python
    >>> box_mass([0.25, 0.25, 0.25, 0.25], (2, 2), (100, 100), [0.0, 0.0, 0.5, 1.0])
    0.5

    ```
    """
    height, width = grid
    traj = torch.as_tensor(trajectory, dtype=torch.float64).reshape(height, width)
    x1, y1, x2, y2 = box_in_image(bbox, image_size, frame)
    inside = torch.outer(_cell_overlap(height, y1, y2), _cell_overlap(width, x1, x2))
    return float((traj * inside).sum())


__all__ = ["BBOX_FRAMES", "box_from_pixels", "box_in_image", "box_mass", "resample_grid", "resample_trajectory"]
