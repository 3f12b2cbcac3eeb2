"""``scan --num-proc N``: the same checks spread over processes by ``datasets.Dataset.map``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.data.chunks import TOKEN_COLUMNS, Chunk, to_chunk
from gradscope.data.stream import Source
from gradscope.errors import DataError
from gradscope.scan.verdicts import CHECKS, Verdicts, verdicts

MAP_BATCH_ROWS = 16384


def parallel_checked_chunks(
    source: Source, end_token_ids: frozenset[int], num_proc: int, pad_token_id: int | None = None,
    bos_token_id: int | None = None, bos_added: bool = False,
) -> Iterator[tuple[Any, Verdicts]]:
    """Check every row in ``num_proc`` processes; yield (rows, verdicts) in the order of the data."""
    dataset = as_dataset(source)
    columns = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    # The verdict tables go to a temporary directory: by default datasets writes them beside the user's files.
    with tempfile.TemporaryDirectory(prefix="gradscope-scan-") as tmp, _quiet_datasets():
        table = dataset.with_format("arrow").map(
            _verdict_table,
            batched=True,
            batch_size=MAP_BATCH_ROWS,
            with_indices=True,
            num_proc=num_proc,
            remove_columns=dataset.column_names,
            cache_file_name=str(Path(tmp) / "verdicts.arrow"),
            fn_kwargs={"columns": columns, "ends": sorted(end_token_ids), "path": str(source.path), "pad": pad_token_id,
                       "bos": bos_token_id, "adds_bos": bos_added},
        )
        first = 0
        for batch in table.with_format("arrow").iter(batch_size=MAP_BATCH_ROWS * 4):
            yield DatasetRows(dataset, columns, first, batch.num_rows, source.path), _verdicts_of(batch)
            first += batch.num_rows
        del table  # its files are memory-mapped from tmp


def as_dataset(source: Source):
    """The source as a ``datasets.Dataset`` (JSON lines and Parquet are converted into datasets' cache first)."""
    import datasets

    path = str(source.path)
    try:
        if source.format == "datasets":
            return datasets.load_from_disk(path)
        if source.format == "arrow":
            return datasets.Dataset.from_file(path)
        if source.format == "parquet":
            return datasets.Dataset.from_parquet(path)
        return datasets.Dataset.from_json(path)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"datasets cannot load it: {err}", path=source.path) from err


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' own progress bars off for the map (gradscope draws its own on stderr), then as they were; and the
    process's ``os.environ`` given back: ``Dataset.map`` with ``num_proc`` replaces it with a copy, which the caller's
    later changes to the environment (and anything holding the original, as rich's consoles do) no longer see."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    environ = os.environ
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        os.environ = environ  # noqa: B003  (the object itself is given back, not its contents: see above)
        if not was_disabled:
            datasets.enable_progress_bars()


def _verdict_table(batch, indices: list[int], columns: list[str], ends: list[int], path: str, pad: int | None = None,
                   bos: int | None = None, adds_bos: bool = False):
    """In a worker: one batch of rows (a pyarrow Table) to its verdicts, one row each."""
    import pyarrow as pa

    record = batch.select(columns).combine_chunks().to_batches()
    if not record:
        return pa.table({name: pa.array([], pa.int64()) for name in _verdict_columns()})
    v = verdicts(to_chunk(record[0], indices[0], Path(path)), ends, pad, bos, adds_bos)
    out = {"tokens": v.tokens, "trained": v.trained}
    for name in CHECKS:
        out[f"positions.{name}"] = v.positions[name]
        out[f"fails.{name}"] = v.fails[name]
    return pa.table(out)


def _verdict_columns() -> list[str]:
    return ["tokens", "trained", *(f"{kind}.{name}" for name in CHECKS for kind in ("positions", "fails"))]


def _verdicts_of(batch) -> Verdicts:
    column = lambda name: batch.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
    return Verdicts(
        tokens=column("tokens"),
        trained=column("trained"),
        positions={name: column(f"positions.{name}") for name in CHECKS},
        fails={name: column(f"fails.{name}").astype(bool) for name in CHECKS},
    )


@dataclass
class DatasetRows:
    """Stands in for a Chunk whose tokens stayed in the dataset: rows are read back one by one when shown."""

    dataset: Any
    columns: list[str]
    first_row: int
    rows: int
    path: Path

    @property
    def has_roles(self) -> bool:
        return any(c in self.columns for c in ("completion_mask", "assistant_masks"))

    def known_rows(self) -> np.ndarray:
        """(R,) True where the row's roles are known: every row with a role column, none without."""
        return np.full(self.rows, self.has_roles, dtype=bool)

    def row(self, r: int) -> dict[str, np.ndarray]:
        index = self.first_row + r
        table = self.dataset.with_format("arrow")[index : index + 1].select(self.columns)
        chunk: Chunk = to_chunk(table.combine_chunks().to_batches()[0], index, self.path)
        return chunk.row(0)
