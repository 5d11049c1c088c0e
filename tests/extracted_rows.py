"""Reading the rows of an extracted dataset, and comparing two extractions of the same records column by column."""

import math

import datasets
import numpy as np

from lavit_hf import schema


# One float16 rounding step: a value a float32 rounding away from a float16 boundary may round either way.
FLOAT16_RTOL = 2.0**-10


def load_rows(folder) -> list[dict]:
    """The dataset in `folder` as `load_dataset` reads it (images left encoded), one dict per row."""
    ds = datasets.load_dataset(str(folder), split="train")
    return ds.cast_column(schema.IMAGE, datasets.Image(decode=False)).to_list()


def float_columns(rows: list[dict]) -> set[str]:
    """The columns whose values (or innermost list items) are floats in the first row: V_top, the trajectories and
    their steps."""
    columns = set()
    for column, value in rows[0].items():
        while isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, float):
            columns.add(column)
    return columns


def assert_rows_match(actual: list[dict], expected: list[dict], atol: float = 1e-5) -> None:
    """Every non-float column equal; every float column within `atol` (the float16 `vtop_tokens` within one float16
    rounding step as well), naming the row and column that differ."""
    assert [row[schema.ID] for row in actual] == [row[schema.ID] for row in expected]
    floats = float_columns(expected)
    assert floats >= {schema.VTOP}, floats
    for got, want in zip(actual, expected, strict=True):
        assert got.keys() == want.keys()
        for column in want:
            where = f"row {want[schema.ID]!r}, column {column!r}"
            if column not in floats:
                assert got[column] == want[column], where
                continue
            if isinstance(want[column], list):
                # Steps of one row have equal lengths; a ragged list would fail here, naming the column.
                a, b = np.asarray(got[column], dtype=np.float64), np.asarray(want[column], dtype=np.float64)
                assert a.shape == b.shape, where
                rtol = FLOAT16_RTOL if column == schema.VTOP_TOKENS else 0.0
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=where)
            else:
                assert math.isclose(got[column], want[column], rel_tol=0, abs_tol=atol), where
