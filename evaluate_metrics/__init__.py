# Copyright 2026 The lavit-hf Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
The benchmarks of LaViT (arXiv 2601.10129, Sec. 4), HallusionBench and the demo's shapes task: one folder each, found
by its name.

A benchmark is a folder `evaluate_metrics/<name>/` holding

- `<name>.py`, `README.md` and `requirements.txt`: an `evaluate` module, self-contained as `evaluate.load` needs it
  (evaluate copies `<name>.py` and the files it imports with a single dot: `metric_utils.py`, a link to this
  package's one copy);
- `loader.py` with `load(data_root, **options) -> datasets.Dataset`: reads the benchmark's official local layout
  into rows whose fields are the module's references (see `loader_utils`).

Adding a benchmark is adding such a folder; `lavit eval --benchmark <name>` finds it.

Example:

```python
>>> import evaluate
>>> from evaluate_metrics import BENCHMARKS, module_path
>>> sorted(BENCHMARKS)
['blink', 'hallusionbench', 'mmstar', 'mmvp', 'shapes', 'vsp', 'vstar']
>>> mmvp = evaluate.load(module_path("mmvp"))

```
"""

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets


_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """
    A benchmark folder of this package.

    Args:
        name (`str`):
            The folder's name, e.g. `"mmvp"`.
        module_path (`str`):
            Absolute path of the folder, for `evaluate.load`.
    """

    name: str
    module_path: str

    def load(self, data_root: str | os.PathLike, **options: Any) -> datasets.Dataset:
        """The rows of the benchmark: `<name>/loader.py`'s `load(data_root, **options)`."""
        return importlib.import_module(f"{__name__}.{self.name}.loader").load(data_root, **options)


# A folder is a benchmark when it holds the evaluate module of its own name.
BENCHMARKS: dict[str, Benchmark] = {
    folder.name: Benchmark(name=folder.name, module_path=str(folder))
    for folder in sorted(_HERE.iterdir())
    if (folder / f"{folder.name}.py").is_file()
}


def get_benchmark(name: str) -> Benchmark:
    """
    The benchmark folder `name`, or a `KeyError` that lists the known ones.

    Args:
        name (`str`):
            One of `BENCHMARKS`, e.g. `"mmvp"`.
    """
    if name not in BENCHMARKS:
        raise KeyError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name]


def module_path(name: str) -> str:
    """
    Absolute path of a benchmark's `evaluate` module folder (a short relative name would be looked up on the Hub).

    Args:
        name (`str`):
            One of `BENCHMARKS`, e.g. `"mmvp"`.

    Returns:
        `str`: the folder, to pass to `evaluate.load`.
    """
    return get_benchmark(name).module_path


def load_benchmark(name: str, data_root: str | os.PathLike, **options: Any) -> datasets.Dataset:
    """
    Reads benchmark `name` from its official local layout under `data_root`.

    Args:
        name (`str`):
            One of `BENCHMARKS`, e.g. `"mmvp"`.
        data_root (`str` or `os.PathLike`):
            The benchmark's folder (or file, where its loader takes one).
        options:
            The loader's own options, e.g. `require_images=False` (see `evaluate_metrics/<name>/loader.py`).

    Returns:
        `datasets.Dataset`: `id`, `image`, `question`, `answer` and the module's reference fields.
    """
    return get_benchmark(name).load(data_root, **options)


__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "load_benchmark", "module_path"]
