"""The parts ``scan --num-proc`` hands its worker processes: consecutive pieces of a source, each read alone by the
reader one process uses (``gradscope.data.stream.chunks`` with a ``Part``), its rows numbered from 0 within it."""

from __future__ import annotations

from pathlib import Path

from gradscope.data.files import open_parquet
from gradscope.data.stream import Part, Source, json_columns

PART_ROWS = 32768
"""Rows a part holds at least (Parquet row groups, Arrow record batches joined up to it): a smaller part costs its
worker more to receive and to send back than it saves (about 4M tokens at 128 tokens a row)."""
PART_BYTES = 1 << 25
"""JSON lines bytes a part holds at least (its rows are parsed from them: about as many rows as ``PART_ROWS``)."""
PARTS_PER_PROCESS = 4
"""Parts per worker, about, where the data has that many: the parts that finish last keep every worker busy."""


def source_parts(source: Source, processes: int) -> list[Part]:
    """The source cut into consecutive parts for ``processes`` workers, in the order of its rows: Parquet by row
    groups, Arrow files and saved ``datasets`` directories by record batches, JSON lines by byte ranges cut at line
    ends. One part where cutting does not pay (small data) or the format is read whole (a .json array, a
    .safetensors batch).

    Raises:
        DataError, OSError, pyarrow.ArrowException: the source cannot be read (the reader of one process says why).
    """
    if source.format == "parquet":
        metadata = open_parquet(source.path).metadata
        sizes = [[metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]]
        return _joined(sizes, PART_ROWS, processes)
    if source.format in ("arrow", "datasets"):
        return _joined([_batch_rows(path) for path in source.files], PART_ROWS, processes)
    if source.format == "jsonl":
        columns = json_columns(source.path)
        return [Part(0, 0, -1)] if columns is None else _byte_ranges(source.path, columns, processes)
    return [Part(0, 0, -1)]


def _joined(sizes: list[list[int]], least: int, processes: int) -> list[Part]:
    """Consecutive units (row groups, record batches) of each file joined into parts of at least ``least`` rows, or
    of the total ÷ (processes × PARTS_PER_PROCESS) where that is more."""
    target = max(least, sum(map(sum, sizes)) // (processes * PARTS_PER_PROCESS))
    parts = []
    for file, units in enumerate(sizes):
        start, rows = 0, 0
        for i, n in enumerate(units):
            rows += n
            if rows >= target:
                parts.append(Part(file, start, i + 1))
                start, rows = i + 1, 0
        if start < len(units):
            parts.append(Part(file, start, len(units)))
    return parts


def _byte_ranges(path: Path, columns: tuple[str, ...], processes: int) -> list[Part]:
    """The file's bytes in ranges of at least ``PART_BYTES``, each cut after a line end."""
    size = path.stat().st_size
    target = max(PART_BYTES, size // (processes * PARTS_PER_PROCESS))
    cuts = [0]
    with path.open("rb") as f:
        while cuts[-1] + target < size:
            f.seek(cuts[-1] + target)
            f.readline()  # to the end of the line the cut falls in
            if f.tell() >= size:
                break
            cuts.append(f.tell())
    return [Part(0, start, stop, columns) for start, stop in zip(cuts, [*cuts[1:], size], strict=True)]


def _batch_rows(path: Path) -> list[int]:
    """The rows of each record batch of an Arrow file (IPC stream or file format), read from the memory-mapped file:
    the batches' headers, not their values."""
    import pyarrow as pa

    mapped = pa.memory_map(str(path))
    try:
        return [batch.num_rows for batch in pa.ipc.open_stream(mapped)]
    except pa.ArrowInvalid:
        file = pa.ipc.open_file(mapped)
        return [file.get_batch(i).num_rows for i in range(file.num_record_batches)]
