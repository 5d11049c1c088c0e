"""Resumable, shardable, locked writing of a LaViT dataset (docs/pitfalls.md, datasets).

Layout of an output folder:

    OUT/
      .chunks/shard-00000-of-00002/     one folder per shard (process), written during extraction
        run.json                          the run's settings, the shard's record count, `complete` when done
        chunk-000000.parquet ...          finished samples, one file per chunk, renamed into place when complete
        failures.jsonl, filtered.jsonl    samples that failed or were filtered out (one JSON object a line)
        .lock                             held by the process extracting the shard
      data/train-00000-of-00001.parquet   the final dataset (Hub-style names), written by `write_final`
      README.md, manifest.json, failures.jsonl, filtered.jsonl, .lock

The working chunks sit in a hidden folder, which `load_dataset(OUT)` never reads: an unfinished folder holds no data
it would load (and, after a first finished run, it loads that run's dataset, never a mix).

A chunk is written to a temporary name and renamed, so a killed run leaves only whole chunks; on restart the keys in
the chunks, failures and filtered files are skipped. Chunk rows carry the record's source index (`_index`), which
the final files are ordered by (and lose), so the final dataset is in source order whatever the sharding or the
restarts. Finalising streams: it reads one chunk at a time, never the whole dataset.

Each shard folder is locked (`fcntl.flock`) by the process extracting it, and the output folder by the process
finalising it: a second run into the same folder is refused, naming the process that holds it. The kernel drops the
lock of a process that dies, so a killed run never blocks the next one; the next one finds the dead process's
details in the lock file and says so.

Every I/O error names the file it happened on (`OSError` with the path), disk full included.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.arrow_writer import ParquetWriter

from lavit_hf.jsonl import JsonlAppender, read_jsonl
from lavit_hf.run_settings import as_stored, settings_differences
from lavit_hf.schema import ID


logger = logging.getLogger(__name__)

INDEX = "_index"
CHUNKS_DIR = ".chunks"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
FAILURES_FILE = "failures.jsonl"
FILTERED_FILE = "filtered.jsonl"
# run.json keys that may differ between a run and its restart, or between the shards of one extraction (the extraction
# batch size changes the values only by float rounding).
VOLATILE = {"complete", "command", "extraction_batch_size"}
PER_SHARD = VOLATILE | {"shard_index", "shard_records"}
HASH_BLOCK = 1 << 20


def shard_dir_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def shard_folder(out: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """The working folder of one shard of the extraction into `out`."""
    return Path(out) / CHUNKS_DIR / shard_dir_name(shard_index, num_shards)


def chunk_features(features: datasets.Features) -> datasets.Features:
    """The dataset's features plus the source index used to order rows at finalisation."""
    return datasets.Features({**features, INDEX: datasets.Value("int64")})


@contextlib.contextmanager
def naming_path(path: str | os.PathLike, action: str) -> Iterator[None]:
    """Re-raise an `OSError` that does not name its file as one that names `path` and what was being done.

    The type follows the errno (a full disk stays an `OSError` with `errno.ENOSPC`, a read-only folder a
    `PermissionError` or `OSError` with `errno.EROFS`), so callers can still tell them apart.
    """
    try:
        yield
    except OSError as error:
        if error.filename is not None and error.errno is not None:
            raise
        if error.errno is None:
            raise OSError(f"{path}: could not {action}: {error}") from error
        raise OSError(error.errno, f"{error.strerror or error} (while trying to {action})", str(path)) from error


def write_parquet(path: Path, tables: pa.Table | Iterable[pa.Table], features: datasets.Features) -> None:
    """Write tables with explicit `Features` to a temporary name, then rename it into place (atomic): a failure or
    a kill never leaves a partial file under `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer = None
    try:
        with naming_path(path, "write"):
            writer = ParquetWriter(path=str(tmp), features=features)
            for table in [tables] if isinstance(tables, pa.Table) else tables:
                writer.write_table(table)
            writer.finalize()
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temporary name, then rename), naming the path in any error."""
    tmp = path.with_name(f".{path.name}.tmp")
    with naming_path(path, "write"):
        tmp.write_text(text)
        os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with naming_path(path, "read back"), open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# Locks ---------------------------------------------------------------------------------------------------------------


class FolderLockedError(RuntimeError):
    """Another process is writing into the folder."""


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('purpose')} since {holder.get('started')}"


class FolderLock:
    """An exclusive, non-blocking lock on a folder (`fcntl.flock` on `folder/.lock`), for one process.

    The lock file holds its holder's pid, host, purpose and start time while it is held, and is emptied on release;
    a non-empty lock file that is not locked is the trace of a process that died holding it (the kernel released
    its lock), which `acquire` reports.

    Args:
        folder (`str` or `os.PathLike`): the folder to lock (created if needed).
        purpose (`str`): what the holder does there, shown to a process that finds the folder locked.
    """

    def __init__(self, folder: str | os.PathLike, purpose: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def _holder(self, fd: int) -> dict[str, Any] | None:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {"pid": "unknown", "host": "unknown", "purpose": "unknown", "started": "unknown"}
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> "FolderLock":
        with naming_path(self.path, "create the lock file"):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            held_by = _describe(holder) if holder else "a process that has just started"
            raise FolderLockedError(
                f"{self.folder} is in use by another run ({held_by}): wait for it to finish, or write to another "
                "output folder."
            ) from None
        previous = self._holder(fd)
        if previous is not None:
            logger.warning(
                "%s: the previous run there (%s) ended without finishing (killed or crashed); its finished work is "
                "kept.", self.folder, _describe(previous),
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with naming_path(self.path, "write the lock file"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


# Writing one shard ---------------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard's chunks, failures and filtered samples; knows which keys are done. The caller holds the
    shard folder's `FolderLock`.

    Use it as a context manager: leaving the block normally marks the shard complete; leaving it with an exception
    writes the finished rows still buffered (so no finished sample is lost) and leaves the shard incomplete, to be
    resumed by the next run.

    Args:
        folder (`Path`): the shard's folder (`shard_folder(OUT, i, n)`).
        features (`datasets.Features`): the dataset's features (without `_index`).
        run_info (`dict`): settings written to `run.json`; a restart with different settings is refused.
        chunk_size (`int`, *optional*, defaults to 64): finished samples per chunk file.
        retry_failed (`bool`, *optional*, defaults to `False`): forget recorded failures so those samples run again.

    Raises:
        `ValueError`: the folder holds a run with other settings.
    """

    def __init__(
        self,
        folder: Path,
        features: datasets.Features,
        run_info: dict[str, Any],
        chunk_size: int = 64,
        retry_failed: bool = False,
    ):
        self.folder = Path(folder)
        self.features = chunk_features(features)
        self.run_info = as_stored(run_info)
        self.chunk_size = chunk_size
        self.retry_failed = retry_failed
        self.buffer: list[dict[str, Any]] = []
        self.chunks_written = 0
        self._appenders: dict[str, JsonlAppender] = {}

    def __enter__(self) -> "ShardWriter":
        self._check_run_info()
        if self.retry_failed and (self.folder / FAILURES_FILE).is_file():
            with naming_path(self.folder / FAILURES_FILE, "remove"):
                (self.folder / FAILURES_FILE).unlink()
        chunks = self.chunk_paths()
        self.next_chunk = int(chunks[-1].stem.split("-")[-1]) + 1 if chunks else 0
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.flush()
                self._write_run_info(complete=True)
            elif self.buffer:
                pending = len(self.buffer)
                try:
                    self.flush()
                    logger.info("Wrote the %d finished samples of the interrupted chunk before stopping.", pending)
                except Exception as error:  # the original error is the one to report; this one is logged
                    logger.error("Could not write the %d finished samples of the interrupted chunk: %s", pending,
                                 error)
        finally:
            for appender in self._appenders.values():
                appender.__exit__(None, None, None)
            self._appenders.clear()

    def _write_run_info(self, complete: bool) -> None:
        write_text(self.folder / RUN_FILE, json.dumps({**self.run_info, "complete": complete}, indent=2))

    def _check_run_info(self) -> None:
        with naming_path(self.folder, "create the shard folder"):
            self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / RUN_FILE
        if path.is_file():
            with naming_path(path, "read"):
                previous = json.loads(path.read_text())
            changed = sorted(settings_differences(previous, self.run_info, VOLATILE))
            if changed:
                raise ValueError(f"{self.folder} was started with other settings ({changed}): use a new folder.")
        self._write_run_info(complete=False)

    def chunk_paths(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet"))

    def done_keys(self) -> dict[str, set[str]]:
        """Keys already finished, by outcome: `written`, `failed`, `filtered`."""
        written = set()
        for path in self.chunk_paths():
            with naming_path(path, "read"):
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
        table = datasets.Dataset.from_list(self.buffer, features=self.features).data.table
        write_parquet(self.folder / f"chunk-{self.next_chunk:06d}.parquet", table, self.features)
        self.next_chunk += 1
        self.chunks_written += 1
        self.buffer = []

    def record(self, file_name: str, entry: dict[str, Any]) -> None:
        """Append one failure or filtered entry, flushed at once so a kill keeps it."""
        path = self.folder / file_name
        with naming_path(path, "append to"):
            if file_name not in self._appenders:
                self._appenders[file_name] = JsonlAppender(path).__enter__()
            self._appenders[file_name].write(entry)


# Finalising ----------------------------------------------------------------------------------------------------------


def shard_folders(inputs: list[Path]) -> list[Path]:
    """Every shard folder under the given output folders (or shard folders themselves)."""
    folders = []
    for folder in inputs:
        if (folder / RUN_FILE).is_file():
            folders.append(folder)
        else:
            folders.extend(sorted(p.parent for p in (folder / CHUNKS_DIR).glob(f"*/{RUN_FILE}")))
    if not folders:
        raise FileNotFoundError(f"No extraction shards ({CHUNKS_DIR}/*/{RUN_FILE}) under {[str(p) for p in inputs]}.")
    return folders


def check_shards(folders: list[Path]) -> dict[str, Any]:
    """The common run settings of a set of shards; refuses mixed settings, incomplete or missing shards."""
    infos = []
    for folder in folders:
        with naming_path(folder / RUN_FILE, "read"):
            infos.append(json.loads((folder / RUN_FILE).read_text()))
    incomplete = [str(f) for f, info in zip(folders, infos, strict=True) if not info.pop("complete")]
    if incomplete:
        raise ValueError(f"Shards not finished (rerun them to resume): {incomplete}.")
    common = {k: v for k, v in infos[0].items() if k not in PER_SHARD}
    for folder, info in zip(folders, infos, strict=True):
        differing = sorted(settings_differences(common, info, PER_SHARD))
        if differing:
            raise ValueError(f"{folder} was extracted with other settings than {folders[0]} ({differing}).")
    present = sorted(info["shard_index"] for info in infos)
    if present != list(range(common["num_shards"])):
        raise ValueError(f"Expected shards 0..{common['num_shards'] - 1}, found {present}.")
    return {**common, "command": infos[0].get("command")}


@contextlib.contextmanager
def locked_for_merge(out: Path, inputs: list[Path]) -> Iterator[list[Path]]:
    """Hold the output folder's lock, then every shard's (yielded, from `shard_folders(inputs)`), so that no
    extraction writes while the merge reads."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(FolderLock(out, f"merging into {out}"))
        folders = shard_folders(inputs)
        for folder in folders:
            if folder.resolve() == out.resolve():
                continue
            try:
                stack.enter_context(FolderLock(folder, f"being merged into {out}"))
            except OSError as error:
                if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # Shards on a read-only file system (copied from elsewhere): no run can be writing them.
                logger.info("%s is read-only: merged without a lock (%s)", folder, error.strerror)
        yield folders


def chunk_order(folders: list[Path]) -> list[tuple[int, Path, int]]:
    """`(source index, chunk file, row in the chunk)` of every written sample, in source order; refuses a key
    written twice. Reads only the index and key columns."""
    entries, seen = [], {}
    for folder in folders:
        for path in sorted(folder.glob("chunk-*.parquet")):
            with naming_path(path, "read"):
                table = pq.read_table(path, columns=[INDEX, ID])
            indices, keys = table.column(INDEX).to_pylist(), table.column(ID).to_pylist()
            for row, (index, key) in enumerate(zip(indices, keys, strict=True)):
                if key in seen:
                    raise ValueError(f"Sample {key!r} is in two chunks, {seen[key]} and {path}: the shards overlap.")
                seen[key] = path
                entries.append((index, path, row))
    entries.sort(key=lambda entry: entry[0])
    return entries


def _runs(entries: list[tuple[int, Path, int]]) -> Iterator[tuple[Path, list[int]]]:
    """Consecutive entries from one chunk, as `(chunk, rows)`."""
    start = 0
    for end in range(1, len(entries) + 1):
        if end == len(entries) or entries[end][1] != entries[start][1]:
            yield entries[start][1], [entry[2] for entry in entries[start:end]]
            start = end


def _ordered_tables(entries: list[tuple[int, Path, int]], min_rows: int) -> Iterator[pa.Table]:
    """The rows of `entries`, in order, without `_index`, as tables of at least `min_rows` rows (the last one
    excepted): one chunk in memory at a time, plus the rows gathered for the next table."""
    current, table, pending = None, None, []
    for path, rows in _runs(entries):
        if path != current:
            with naming_path(path, "read"):
                table = pq.read_table(path)
            current = path
        pending.append(table.take(pa.array(rows, pa.int64())).drop_columns([INDEX]))
        if sum(len(piece) for piece in pending) >= min_rows:
            yield pa.concat_tables(pending)
            pending = []
    if pending:
        yield pa.concat_tables(pending)


def write_final(
    out: Path,
    entries: list[tuple[int, Path, int]],
    features: datasets.Features,
    rows_per_file: int,
    rows_per_group: int = 64,
) -> list[dict[str, Any]]:
    """Write the samples `entries` lists (`chunk_order`) as `out/data/train-XXXXX-of-YYYYY.parquet`, streaming.

    The files are written into a temporary folder that replaces `out/data` once all are written, so a failure leaves
    the previous dataset (if any) whole.

    Args:
        out (`Path`): the output folder.
        entries (`list[tuple[int, Path, int]]`): from `chunk_order`.
        features (`datasets.Features`): the dataset's features (without `_index`).
        rows_per_file (`int`): rows per final file.
        rows_per_group (`int`, *optional*, defaults to 64): rows gathered before each write (a parquet row group).

    Returns:
        `list[dict]`: the manifest entries of the files (path, rows, sha256).
    """
    partial, data, old = out / ".data.partial", out / "data", out / ".data.old"
    with naming_path(partial, "prepare the folder of the final files"):
        for stale in (partial, old):
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir(parents=True)
    count = max(1, -(-len(entries) // rows_per_file))
    files = []
    for i in range(count):
        part = entries[i * rows_per_file : (i + 1) * rows_per_file]
        name = f"train-{i:05d}-of-{count:05d}.parquet"
        write_parquet(partial / name, _ordered_tables(part, rows_per_group), features)
        files.append({"path": f"data/{name}", "rows": len(part), "sha256": sha256_file(partial / name)})
    with naming_path(data, "move the final files into place"):
        if data.exists():
            data.rename(old)
        partial.rename(data)
        if old.exists():
            shutil.rmtree(old)
    return files


def merge_jsonl(folders: list[Path], file_name: str, out: Path) -> list[dict[str, Any]]:
    """The failures (or filtered) entries of every shard, in source order, written to `out / file_name`."""
    rows = sorted((row for folder in folders for row in read_jsonl(folder / file_name)), key=lambda r: r["index"])
    write_text(out / file_name, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


__all__ = [
    "CHUNKS_DIR",
    "FAILURES_FILE",
    "FILTERED_FILE",
    "INDEX",
    "LOCK_FILE",
    "RUN_FILE",
    "FolderLock",
    "FolderLockedError",
    "ShardWriter",
    "check_shards",
    "chunk_features",
    "chunk_order",
    "locked_for_merge",
    "merge_jsonl",
    "naming_path",
    "shard_dir_name",
    "shard_folder",
    "shard_folders",
    "write_final",
    "write_parquet",
    "write_text",
]
