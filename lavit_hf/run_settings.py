"""Settings recorded beside a resumable output, which a rerun must match before it resumes that output.

An extraction shard records its run's settings in `run.json`, a predictions file of `lavit eval` in
`<name>.settings.json`. Work made under other settings must never be mixed with this run's, so a rerun compares what
it would record with what is recorded, and refuses to resume on any difference it does not expect.
"""

import json
from collections.abc import Collection, Mapping
from typing import Any


def as_stored(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` as they read back from JSON (tuples become lists, keys strings), so that a recorded file and the
    settings of this run compare equal when they are the same."""
    return json.loads(json.dumps(dict(settings)))


def settings_differences(
    recorded: Mapping[str, Any], current: Mapping[str, Any], may_differ: Collection[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between a recorded run and this one, as `{key: (recorded, current)}` in key order.

    Both sides are compared as JSON stores them (`as_stored`); a key present on one side only differs (its missing
    value reads as `None`).

    Args:
        recorded (`Mapping[str, Any]`): the settings read back from the output.
        current (`Mapping[str, Any]`): the settings this run would record.
        may_differ (`Collection[str]`, *optional*): keys that are allowed to differ (progress flags, the command
            line, per-shard counts); never reported.

    Example:

    ```python
    >>> settings_differences({"max_pixels": 12544, "layers": [0, 1], "complete": True},
    ...                      {"max_pixels": 50176, "layers": (0, 1), "complete": False}, may_differ={"complete"})
    {'max_pixels': (12544, 50176)}

    ```
    """
    recorded, current = as_stored(recorded), as_stored(current)
    keys = sorted((set(recorded) | set(current)) - set(may_differ))
    return {key: (recorded.get(key), current.get(key)) for key in keys if recorded.get(key) != current.get(key)}


__all__ = ["as_stored", "settings_differences"]
