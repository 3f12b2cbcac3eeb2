"""Stream pre-tokenized rows from a data file, chunk by chunk, in bounded memory; raw rows a chunk of rows at a time."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from gradscope.data.chunks import TOKEN_COLUMNS, Chunk, rechunk, row_groups, safetensors_chunk, to_chunk
from gradscope.data.datasets_dir import data_files, dataset_splits
from gradscope.data.datasets_dir import num_rows as _num_rows
from gradscope.data.files import arrow_batches, iter_jsonl, open_parquet, pick_split, read_rows
from gradscope.data.jsonio import decode_line, iter_json_array, loads
from gradscope.data.sources import RAW_COLUMNS, data_format
from gradscope.errors import DataError

_JSON_BLOCK_BYTES = 1 << 24
_PARQUET_BATCH_ROWS = 8192


@dataclass
class Source:
    """A dataset on disk, recognized but not yet read."""

    path: Path
    format: str  # jsonl | parquet | arrow | datasets | safetensors
    rows: int | None  # known without reading the data, else None
    files: list[Path]


@dataclass(frozen=True)
class Part:
    """A piece of a source that one process reads alone: Parquet row groups [start, stop), record batches
    [start, stop) of the ``file``-th Arrow file, or JSON lines bytes [start, stop) (cut at line ends), typed with
    the ``columns`` of the file's first block (``json_columns``)."""

    file: int
    start: int
    stop: int
    columns: tuple[str, ...] = ()


def open_source(path: str | Path) -> Source:
    """Recognize a dataset's format and its files.

    Raises:
        DataError: no such path, an unknown format, or a DatasetDict with several splits, none of them train.
    """
    path = Path(path)
    fmt = data_format(path)
    if fmt == "datasets":
        return _datasets_dir(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return Source(path, "parquet", _parquet_rows(pq, path), [path])
    return Source(path, "jsonl" if fmt == "json" else fmt, None, [path])


def _parquet_rows(pq, path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet: {err}", path=path) from err


def _datasets_dir(path: Path) -> Source:
    """A directory written by ``Dataset.save_to_disk``: state.json names its Arrow files in order."""
    if (path / "dataset_dict.json").is_file():  # its train split, else its only one, as check reads it
        return _datasets_dir(path / pick_split(dataset_splits(path), path))
    state = path / "state.json"
    if not state.is_file():
        raise DataError(
            "not a saved datasets directory (no state.json)",
            path=path,
            hint="give a directory written by Dataset.save_to_disk, or a data file",
        )
    return Source(path, "datasets", _num_rows(path / "dataset_info.json"), data_files(path))


def chunks(source: Source, vocab_size: int | None = None, part: Part | None = None) -> Iterator[Chunk]:
    """The source's rows, chunk by chunk, numbered from 0 across files; token ids checked against ``vocab_size``
    when it is known (the tokenizer's). With ``part``: that part's rows only, numbered from 0 within it.

    Raises:
        DataError: missing or raw-text columns, nulls, per-token lists whose length differs from input_ids', empty
            rows, or negative token ids, naming the row.
    """
    if source.format == "safetensors":
        yield safetensors_chunk(source.path, vocab_size)
        return
    first = 0
    for batch in rechunk(_record_batches(source, part)):
        chunk = to_chunk(batch, first, source.path, vocab_size)
        first += chunk.rows
        yield chunk


def _record_batches(source: Source, part: Part | None = None) -> Iterator:
    import pyarrow as pa

    try:
        if source.format == "jsonl":
            if part is not None:
                yield from _json_batches(source.path, part)
            else:
                yield from (_json_array_batches if _is_json_array(source.path) else _json_batches)(source.path)
        elif source.format == "parquet":
            file = open_parquet(source.path)
            yield from file.iter_batches(
                batch_size=_PARQUET_BATCH_ROWS,
                row_groups=None if part is None else range(part.start, part.stop),
                columns=_wanted(file.schema_arrow.names, source.path),
            )
        elif part is not None:
            yield from _arrow_part(source.files[part.file], part.start, part.stop)
        else:
            for path in source.files:
                yield from _arrow_batches(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"cannot read {source.format}: {err}", path=source.path) from err


def _json_batches(path: Path, part: Part | None = None) -> Iterator:
    """JSON lines parsed block by block (one block in memory at a time: pyarrow's own streaming reader reads ahead),
    typed by the first block: token columns as lists of int64, other fields skipped. With ``part``: its bytes,
    typed by its ``columns``."""
    import pyarrow as pa
    import pyarrow.json as pj

    options, first = None, 0
    for block in _line_blocks(path, _JSON_BLOCK_BYTES, *((part.start, part.stop) if part else ())):
        if options is None:
            # Typed before pyarrow reads anything: left to infer types, pyarrow follows a 10,000-deep nested value
            # of the first block down and crashes the process.
            names = list(part.columns) if part else _wanted(_block_names(block, path), path)
            schema = pa.schema([(name, pa.list_(pa.int64())) for name in names])
            options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        table = _read_json_block(block, options, first, path)
        first += table.num_rows
        yield from table.combine_chunks().to_batches()


def _block_names(block: bytes, path: Path) -> list[str]:
    """The token columns the first block names, in the first row's order of keys (parsed with Python's checks)."""
    row = next(iter_jsonl(path, limit=1), None)
    if row is None:
        raise DataError("no rows", path=path, hint="write at least one row")
    names = list(row) + [c for c in TOKEN_COLUMNS if c not in row and f'"{c}"'.encode() in block]
    return names


def _read_json_block(block: bytes, options, first_row: int, path: Path):
    """One block of JSON lines as a table; a parse error names the row in the file (pyarrow counts from the block)."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        return pj.read_json(pa.BufferReader(block), parse_options=options)
    except pa.ArrowInvalid as err:
        _locate_bad_row(block, options.explicit_schema.names, first_row, path)
        found = re.search(r"\s*in row (\d+)$", str(err))
        if found is None:
            raise
        raise DataError(
            f"cannot read JSON lines: {str(err)[: found.start()]}", path=path, row=first_row + int(found.group(1))
        ) from err


def _locate_bad_row(block: bytes, names: list[str], first_row: int, path: Path) -> None:
    """Find the row pyarrow refused, parsing the block line by line in Python, and say what is wrong with it."""
    row = first_row
    for data in block.splitlines():
        text = decode_line(data, path, row)
        if not text.strip():
            continue
        try:
            value = loads(text, path, row)
        except DataError:  # not JSON: pyarrow's own message names the row
            return
        if not isinstance(value, dict):
            raise DataError(f"the row is a {type(value).__name__}, not a JSON object", path=path, row=row)
        for name in names:
            column = value.get(name)
            if column is not None and not (
                isinstance(column, list)
                and all(isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in column)
            ):
                raise DataError(f"'{name}' must hold lists of integers (int64)", path=path, row=row)
        row += 1


def _json_array_batches(path: Path) -> Iterator:
    """A .json file holding one array of rows, parsed row by row (jsonio's incremental reader), in record batches."""
    import pyarrow as pa

    names = None
    for start, part in enumerate_groups(_json_array_rows(path), _PARQUET_BATCH_ROWS):
        names = names or _wanted(list(part[0]), path)
        yield pa.record_batch([_json_column(part, name, start, path) for name in names], names=names)
    if names is None:
        raise DataError("no rows", path=path, hint="write at least one row")


def _json_array_rows(path: Path) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(iter_json_array(path)):
        if not isinstance(row, dict):
            raise DataError(f"the row is a {type(row).__name__}, not a JSON object", path=path, row=i)
        yield row


def enumerate_groups(rows: Iterator[dict[str, Any]], size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Groups of ``size`` rows with the index of each group's first row."""
    start = 0
    for group in row_groups(rows, size):
        yield start, group
        start += len(group)


def _json_column(rows: list[dict[str, Any]], name: str, first_row: int, path: Path):
    """One column of JSON rows as an Arrow array, its type inferred (floats stay floats, for the chunk to refuse)."""
    import pyarrow as pa

    values: list[Any] = [row.get(name) for row in rows]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
        bad = next(
            (i for i, v in enumerate(values) if not isinstance(v, list) or not all(isinstance(x, int) for x in v)), None
        )
        if bad is None and isinstance(err, OverflowError):
            bad = next(i for i, v in enumerate(values) if any(not -(2**63) <= x < 2**63 for x in v))
            raise DataError(
                f"'{name}' holds an integer past int64",
                path=path,
                row=first_row + bad,
                hint="token ids are small non-negative integers",
            ) from None
        raise DataError(f"'{name}' must hold lists of integers ({err})", path=path, row=first_row + (bad or 0)) from err


def json_columns(path: Path) -> tuple[str, ...] | None:
    """The token columns ``chunks`` types JSON lines with (the first block's), or None for a .json array."""
    if _is_json_array(path):
        return None
    block = next(_line_blocks(path, _JSON_BLOCK_BYTES), b"")
    return tuple(_wanted(_block_names(block, path), path))


def _line_blocks(path: Path, size: int, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """The file (or its bytes [start, stop), cut at line ends) in blocks of about ``size`` bytes, each ending at a
    line end."""
    rest = b""
    with path.open("rb") as f:
        if start:
            f.seek(start)
        elif f.read(3) != b"\xef\xbb\xbf":  # a UTF-8 BOM is not part of the first row
            f.seek(0)
        while data := f.read(size if stop is None else min(size, stop - f.tell())):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            block, rest = (data[:cut], data[cut:]) if cut else (b"", data)
            if block:
                yield block
    if rest.strip():
        yield rest


def _arrow_batches(path: Path, columns: Callable[[list[str], Path], list[str]] | None = None) -> Iterator:
    """An Arrow file read batch by batch with the columns ``columns(names, path)`` picks (default: the token
    columns)."""
    return arrow_batches(path, columns or _wanted)


def _arrow_part(path: Path, start: int, stop: int) -> Iterator:
    """Record batches [start, stop) of an Arrow file (IPC stream or file format), memory-mapped: the batches before
    them are skipped without being read."""
    import pyarrow as pa

    mapped = pa.memory_map(str(path))
    batches: Iterator
    try:
        stream = pa.ipc.open_stream(mapped)
        names, batches = _wanted(stream.schema.names, path), islice(stream, start, stop)
    except pa.ArrowInvalid:
        file = pa.ipc.open_file(mapped)
        names, batches = _wanted(file.schema.names, path), (file.get_batch(i) for i in range(start, stop))
    for batch in batches:
        yield batch.select(names)


def _wanted(names: list[str], path: Path) -> list[str]:
    """The token columns present; input_ids is required, and raw text needs a tokenizer."""
    if "input_ids" not in names:
        if _raw_names(names):
            raise raw_text_error(names, path)
        raise DataError(
            f"no 'input_ids' column (columns: {', '.join(names)})",
            path=path,
            hint="store the token ids under 'input_ids'",
        )
    return [c for c in TOKEN_COLUMNS if c in names]


# ------------------------------------------------------------------------------------------------ raw rows

RAW_CHUNK_ROWS = 1024
"""Raw rows per chunk: enough for the tokenizer's batched call to pay, few enough to keep memory small."""


def _raw_names(names: list[str]) -> list[str]:
    return [c for c in RAW_COLUMNS if c in names] if "input_ids" not in names else []


def raw_text_error(names: list[str], path: Path) -> DataError:
    """Raw rows given without the tokenizer that turns them into tokens."""
    return DataError(
        f"rows hold raw text ({', '.join(_raw_names(names))}), not token ids",
        path=path,
        hint="pass `tokenizer` DIR to tokenize them and derive their roles as check does, or tokenize them first",
    )


def raw_columns(source: Source) -> list[str]:
    """The raw-text columns of the source (messages, prompt, completion, text, ...) when it holds no input_ids, else
    []: the first row of JSON lines, the schema of Parquet and Arrow data.

    Raises:
        DataError: unreadable data.
    """
    import pyarrow as pa

    if source.format == "safetensors":
        return []
    try:
        return _raw_names(_column_names(source))
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"cannot read {source.format}: {err}", path=source.path) from err


def _column_names(source: Source) -> list[str]:
    if source.format == "jsonl":
        if _is_json_array(source.path):
            rows = read_rows(source.path, limit=1)
            return list(rows[0])
        try:
            first = next(iter_jsonl(source.path, limit=1), None)
        except DataError:  # not JSON: the token reader says so, as it always has
            return []
        return list(first) if first is not None else []
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source.path).schema_arrow.names
    for batch in _arrow_batches(source.files[0], lambda names, _: names) if source.files else ():
        return batch.schema.names
    return []


def _is_json_array(path: Path) -> bool:
    """A .json file holding one array of rows (as check reads .json) rather than JSON lines."""
    with path.open("rb") as f:
        return f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def raw_row_batches(source: Source, size: int = RAW_CHUNK_ROWS) -> Iterator[list[dict[str, Any]]]:
    """The source's raw rows as plain dicts, ``size`` at a time (a .json array parsed row by row, as check reads it).

    Raises:
        DataError: unreadable data, or a JSON line that is not an object (naming the line).
    """
    import pyarrow as pa

    try:
        if source.format == "jsonl":
            rows = _json_array_rows(source.path) if _is_json_array(source.path) else iter_jsonl(source.path)
            yield from row_groups(rows, size)
        elif source.format == "parquet":
            for batch in open_parquet(source.path).iter_batches(batch_size=size):
                yield batch.to_pylist()
        else:
            for path in source.files:
                for batch in _arrow_batches(path, lambda names, _: names):
                    yield from row_groups(batch.to_pylist(), size)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"cannot read {source.format}: {err}", path=source.path) from err
