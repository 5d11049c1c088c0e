"""Resumable, shardable writing of a LaViT dataset (HF_NOTES.md, datasets).

Layout of an output folder:

    OUT/
      chunks/shard-00000-of-00002/      one folder per shard (process), written during extraction
        run.json                          the run's settings, the shard's record count, `complete` when done
        chunk-000000.parquet ...          finished samples, one file per chunk, renamed into place when complete
        failures.jsonl, filtered.jsonl    samples that failed or were filtered out (one JSON object a line)
      data/train-00000-of-00001.parquet   the final dataset (Hub-style names), written by `finalise`
      README.md, manifest.json, failures.jsonl, filtered.jsonl

A chunk is written to a temporary name and renamed, so a killed run leaves only whole chunks; on restart the keys in
the chunks, failures and filtered files are skipped. Chunk rows carry the record's source index (`_index`), which
`finalise` sorts by and drops, so the final dataset is in source order whatever the sharding or the restarts.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.arrow_writer import ParquetWriter

from lavit_hf.schema import ID


logger = logging.getLogger(__name__)

INDEX = "_index"
RUN_FILE = "run.json"
FAILURES_FILE = "failures.jsonl"
FILTERED_FILE = "filtered.jsonl"
# Test hook: SIGKILL the process right after this many chunks land (simulates a crash for the resume test).
ABORT_ENV = "LAVIT_EXTRACT_ABORT_AFTER_CHUNKS"
# run.json keys that may differ between a run and its restart, or between the shards of one extraction.
VOLATILE = {"complete", "command"}
PER_SHARD = VOLATILE | {"shard_index", "shard_records"}


def shard_dir_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def chunk_features(features: datasets.Features) -> datasets.Features:
    """The dataset's features plus the source index used to order rows at finalisation."""
    return datasets.Features({**features, INDEX: datasets.Value("int64")})


def write_parquet(path: Path, table: pa.Table, features: datasets.Features) -> None:
    """Write a table with explicit `Features` to a temporary name, then rename it into place (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer = ParquetWriter(path=str(tmp), features=features)
    writer.write_table(table)
    writer.finalize()
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a last line cut short by a kill is dropped with a warning."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
            logger.warning("%s: dropping a truncated last line (an interrupted run)", path)
    return rows


@dataclass
class ShardWriter:
    """Writes one shard's chunks, failures and filtered samples; knows which keys are already done.

    Args:
        folder (`Path`): the shard's folder (`OUT/chunks/shard-i-of-n`).
        features (`datasets.Features`): the dataset's features (without `_index`).
        run_info (`dict`): settings written to `run.json`; a restart with different settings is refused.
        chunk_size (`int`): finished samples per chunk file.
        retry_failed (`bool`): forget recorded failures so those samples run again.
    """

    folder: Path
    features: datasets.Features
    run_info: dict[str, Any]
    chunk_size: int = 64
    retry_failed: bool = False
    buffer: list[dict[str, Any]] = field(default_factory=list)
    chunks_written: int = 0

    def __post_init__(self):
        self.run_info = json.loads(json.dumps(self.run_info))  # compare as stored (tuples become lists)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_run_info()
        if self.retry_failed and (self.folder / FAILURES_FILE).is_file():
            (self.folder / FAILURES_FILE).unlink()
        self.next_chunk = len(self.chunk_paths())

    def _check_run_info(self) -> None:
        path = self.folder / RUN_FILE
        if path.is_file():
            previous = json.loads(path.read_text())
            changed = sorted(
                k for k in (set(previous) | set(self.run_info)) - VOLATILE if previous.get(k) != self.run_info.get(k)
            )
            if changed:
                raise ValueError(f"{self.folder} was started with other settings ({changed}): use a new folder.")
        path.write_text(json.dumps({**self.run_info, "complete": False}, indent=2))

    def chunk_paths(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet"))

    def done_keys(self) -> dict[str, set[str]]:
        """Keys already finished, by outcome: `written`, `failed`, `filtered`."""
        written = set()
        for path in self.chunk_paths():
            written.update(pq.read_table(path, columns=[ID]).column(ID).to_pylist())
        failed = {row["key"] for row in read_jsonl(self.folder / FAILURES_FILE)}
        filtered = {row["key"] for row in read_jsonl(self.folder / FILTERED_FILE)}
        return {"written": written, "failed": failed, "filtered": filtered}

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        features = chunk_features(self.features)
        table = datasets.Dataset.from_list(self.buffer, features=features).data.table
        write_parquet(self.folder / f"chunk-{self.next_chunk:06d}.parquet", table, features)
        self.next_chunk += 1
        self.chunks_written += 1
        self.buffer = []
        abort_after = os.environ.get(ABORT_ENV)
        if abort_after is not None and self.chunks_written >= int(abort_after):
            logger.error("%s=%s: killing this process now (test hook)", ABORT_ENV, abort_after)
            os.kill(os.getpid(), 9)

    def record(self, file_name: str, entry: dict[str, Any]) -> None:
        """Append one failure or filtered entry, flushed at once so a kill keeps it."""
        with open(self.folder / file_name, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()

    def close(self) -> None:
        self.flush()
        path = self.folder / RUN_FILE
        path.write_text(json.dumps({**self.run_info, "complete": True}, indent=2))


def shard_folders(inputs: list[Path]) -> list[Path]:
    """Every shard folder under the given output folders (or shard folders themselves)."""
    folders = []
    for folder in inputs:
        if (folder / RUN_FILE).is_file():
            folders.append(folder)
        else:
            folders.extend(sorted(p.parent for p in (folder / "chunks").glob(f"*/{RUN_FILE}")))
    if not folders:
        raise FileNotFoundError(f"No extraction shards (chunks/*/{RUN_FILE}) under {[str(p) for p in inputs]}.")
    return folders


def check_shards(folders: list[Path]) -> dict[str, Any]:
    """The common run settings of a set of shards; refuses mixed settings, incomplete or missing shards."""
    infos = [json.loads((folder / RUN_FILE).read_text()) for folder in folders]
    incomplete = [str(f) for f, info in zip(folders, infos) if not info.pop("complete")]
    if incomplete:
        raise ValueError(f"Shards not finished (rerun them to resume): {incomplete}.")
    common = {k: v for k, v in infos[0].items() if k not in PER_SHARD}
    for folder, info in zip(folders, infos):
        if {k: v for k, v in info.items() if k not in PER_SHARD} != common:
            raise ValueError(f"{folder} was extracted with other settings than {folders[0]}.")
    present = sorted(info["shard_index"] for info in infos)
    if present != list(range(common["num_shards"])):
        raise ValueError(f"Expected shards 0..{common['num_shards'] - 1}, found {present}.")
    return {**common, "command": infos[0].get("command")}


def merged_table(folders: list[Path]) -> pa.Table:
    """All chunks of all shards, in source order, without `_index`; refuses a key written twice."""
    tables = [pq.read_table(path) for folder in folders for path in sorted(folder.glob("chunk-*.parquet"))]
    if not tables:
        return None
    table = pa.concat_tables(tables).sort_by(INDEX)
    keys = table.column(ID).to_pylist()
    if len(set(keys)) != len(keys):
        raise ValueError("A sample key appears in two chunks: the shards overlap.")
    return table.drop_columns([INDEX])


def write_final(out: Path, table: pa.Table | None, features: datasets.Features, rows_per_file: int) -> list[dict]:
    """Write `data/train-XXXXX-of-YYYYY.parquet` files; returns their manifest entries (path, rows, sha256)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob("train-*.parquet"):
        stale.unlink()
    if table is None:
        table = features.arrow_schema.empty_table()
    count = max(1, -(-table.num_rows // rows_per_file))
    entries = []
    for i in range(count):
        path = data / f"train-{i:05d}-of-{count:05d}.parquet"
        part = table.slice(i * rows_per_file, rows_per_file)
        write_parquet(path, part, features)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append({"path": str(path.relative_to(out)), "rows": part.num_rows, "sha256": digest})
    return entries


def merge_jsonl(folders: list[Path], file_name: str, out: Path) -> list[dict[str, Any]]:
    """The failures (or filtered) entries of every shard, in source order, written to `out / file_name`."""
    rows = sorted((row for folder in folders for row in read_jsonl(folder / file_name)), key=lambda r: r["index"])
    (out / file_name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


__all__ = [
    "ABORT_ENV",
    "FAILURES_FILE",
    "FILTERED_FILE",
    "INDEX",
    "RUN_FILE",
    "ShardWriter",
    "check_shards",
    "chunk_features",
    "merge_jsonl",
    "merged_table",
    "read_jsonl",
    "shard_dir_name",
    "shard_folders",
    "write_final",
    "write_parquet",
]
