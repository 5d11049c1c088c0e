"""Append-only JSONL files that survive a kill: predictions, failed and filtered samples.

A process killed mid-write leaves a torn last line. Reading drops it (the one record that was not finished; its work
is redone) and repairs the file, so that the next append starts on a fresh line instead of gluing a record onto the
torn one. Any other line that is not a JSON object is an error naming the file and the line.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file (none when it does not exist); a torn last line is dropped and the file repaired.

    Raises:
        `ValueError`: naming the file and the line, for a line before the last that is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = max((number for number, line in enumerate(lines, 1) if line.strip()), default=0)
    records, kept_bytes = [], 0
    for number, line in enumerate(lines, 1):
        is_last = number == last
        if line.strip():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if is_last:
                    logger.warning("%s, line %d: dropped a torn last line (an interrupted write).", path, number)
                    break
                raise ValueError(f"{path}, line {number}: not a JSON record ({error}); fix or remove that line.") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
        kept_bytes += len(line) + 1
    kept_bytes = min(kept_bytes, len(data))
    if kept_bytes < len(data) or (data and not data.endswith(b"\n")):
        # Keep the whole records, each ending with a newline, so that the next append starts a line of its own.
        with path.open("r+b") as handle:
            handle.truncate(kept_bytes)
            if kept_bytes and not data[:kept_bytes].endswith(b"\n"):
                handle.seek(kept_bytes)
                handle.write(b"\n")
    return records


class JsonlAppender:
    """Append records to a JSONL file, one line each, flushed after each `write`; the file's torn last line, if any,
    is repaired when it is opened.

    Example:

    ```python
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> with JsonlAppender(path) as out:
    ...     out.write({"id": "a"})
    >>> read_jsonl(path)
    [{'id': 'a'}]

    ```
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle = None

    def __enter__(self) -> "JsonlAppender":
        read_jsonl(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a")
        return self

    def write(self, *records: dict[str, Any]) -> None:
        for record in records:
            self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def __exit__(self, *exc_info) -> None:
        self._handle.close()


__all__ = ["JsonlAppender", "read_jsonl"]
