"""Raw data files: read rows from .jsonl, .json, .parquet files and saved Hugging Face ``datasets`` directories.

A row is raw when it holds ``prompt`` + ``completion`` (strings or message lists), ``messages``, or ``text``; it is
pre-tokenized when it holds ``input_ids``. Reading never tokenizes: ``gradscope.data.roles`` does that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gradscope.data.datasets_dir import check_saved_dataset
from gradscope.data.jsonio import decode_line, iter_json_array, loads
from gradscope.data.sources import SUFFIXES, data_format
from gradscope.errors import DataError, first_line


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a data file or saved dataset directory, as plain dicts, in order.

    Args:
        path: A ``.jsonl``, ``.json`` (an array of objects), ``.parquet`` file or a ``datasets.save_to_disk``
            directory (its ``train`` split, or its only split).
        limit: Keep only the first N rows.

    Raises:
        DataError: missing or unreadable data, or rows that are not JSON objects.
    """
    path = Path(path)
    fmt = data_format(path)
    if fmt == "datasets":
        rows = _read_dataset_dir(path, limit)
    elif fmt == "jsonl":
        rows = _read_jsonl(path, limit)
    elif fmt == "json":
        rows = _read_json(path, limit)
    elif fmt == "parquet":
        rows = _read_parquet(path, limit)
    elif fmt == "arrow":
        rows = _read_arrow(path, limit)
    else:
        raise DataError("a .safetensors file is a batch, not rows", path=path, hint="check it as a batch")
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise DataError("no rows", path=path, hint="write at least one row")
    return rows


def is_tokenized(row: dict[str, Any]) -> bool:
    """A row holding token ids rather than text."""
    return "input_ids" in row


def is_raw_file(path: str | Path) -> bool:
    """Whether the data at path holds raw rows (text to tokenize) rather than a batch or pre-tokenized rows."""
    if SUFFIXES.get(Path(path).suffix.lower()) == "safetensors":  # a batch, whether it exists yet or not
        return False
    fmt = data_format(path)
    if fmt == "jsonl":
        first = _read_jsonl(Path(path), 1)
        return bool(first) and not is_tokenized(first[0])
    return True


def jsonl_lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """The non-empty lines of a JSON-lines file with their 1-based line numbers, at most ``limit`` of them."""
    count = 0
    with path.open("rb") as f:
        for number, data in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            line = decode_line(data, path, f"line {number}")
            if line.strip():
                count += 1
                yield number, line


def iter_jsonl(path: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file one by one; a line that is not a JSON object is a DataError naming it."""
    for n, line in jsonl_lines(path, limit):
        yield _object(_loads(line, path, f"line {n}"), path, f"line {n}")


def _read_jsonl(path: Path, limit: int | None) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, limit))


def _read_json(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a .json array, parsed one by one (the rest of the file is not read)."""
    return [_object(row, path, i) for i, row in enumerate(iter_json_array(path, limit))]


def _loads(text: str, path: Path, row: str | None) -> Any:
    return loads(text, path, row)


def _object(value: Any, path: Path, row: str | int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"the row is a {type(value).__name__}, not a JSON object", path=path, row=row)
    return value


def _read_parquet(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a Parquet file, read batch by batch (only the pages needed)."""
    rows: list[dict[str, Any]] = []
    try:
        file = open_parquet(path)
        for batch in file.iter_batches(batch_size=min(limit or 8192, 8192)):
            rows.extend(batch.to_pylist())
            if limit is not None and len(rows) >= limit:
                break
    except (OSError, ValueError, TypeError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"cannot read parquet: {first_line(err)}", path=path) from err
    return rows if limit is None else rows[:limit]


PARQUET_READ_BYTES = 1 << 20
"""Bytes read at a time from a Parquet column chunk (else a batch of one row reads its whole row group's chunks)."""


def open_parquet(path: Path) -> Any:
    """A Parquet file opened to be read batch by batch in bounded memory: each column chunk through a read buffer,
    and no pre-buffering (which keeps every row group read so far)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError("reading .parquet needs pyarrow", path=path, hint="pip install pyarrow") from err

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_READ_BYTES)


def _read_arrow(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of an Arrow file, batch by batch."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    try:
        for batch in arrow_batches(path, lambda names, _: names):
            rows.extend(batch.to_pylist())
            if limit is not None and len(rows) >= limit:
                break
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataError(f"cannot read arrow: {first_line(err)}", path=path) from err
    return rows if limit is None else rows[:limit]


def arrow_batches(path: Path, pick: Callable[[list[str], Path], list[str]]) -> Iterator:
    """An Arrow file (IPC stream or file format) read batch by batch through ordinary reads (not memory-mapped: the
    resident set stays flat), with the columns ``pick(names, path)`` chooses."""
    import pyarrow as pa

    with pa.OSFile(str(path)) as f:
        try:
            reader = pa.ipc.open_stream(f)
        except pa.ArrowInvalid:
            f.seek(0)
            file_reader = pa.ipc.open_file(f)
            names = pick(file_reader.schema.names, path)
            for i in range(file_reader.num_record_batches):
                yield file_reader.get_batch(i).select(names)
            return
        names = pick(reader.schema.names, path)
        for batch in reader:
            yield batch.select(names)


def _read_dataset_dir(path: Path, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            "reading a saved dataset needs the datasets library",
            path=path,
            hint="install the trl extra: pip install -e '.[trl]' in a clone of gradscope",
        ) from err
    check_saved_dataset(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise DataError(
            f"not a saved dataset ({err})", path=path, hint="save it with Dataset.save_to_disk(dir)"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[pick_split(list(loaded), path)]
    if limit is not None:
        loaded = loaded.select(range(min(limit, len(loaded))))
    return loaded.to_list()


def pick_split(splits: list[str], path: Path) -> str:
    """The split of a DatasetDict that a check or scan reads: ``train``, else the only one.

    Raises:
        DataError: several splits and none is ``train``.
    """
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DataError(
        f"the dataset has splits {sorted(splits)} and none is 'train'",
        path=path,
        hint=f"give {path}/<split> to read one of them",
    )
