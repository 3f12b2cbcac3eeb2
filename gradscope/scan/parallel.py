"""``scan --num-proc N``: the same checks spread over processes by ``datasets.Dataset.map``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.data.chunks import TOKEN_COLUMNS, Chunk, to_chunk
from gradscope.data.stream import Source
from gradscope.errors import DataError
from gradscope.scan.roles import prefill_mask, stream_token_roles, token_roles
from gradscope.scan.stream_roles import ChunkRoles
from gradscope.scan.verdicts import CHECKS, Verdicts, verdicts

MAP_BATCH_ROWS = 16384


def parallel_checked_chunks(
    source: Source,
    end_token_ids: frozenset[int],
    num_proc: int,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    bos_added: bool = False,
    read: ChunkRoles | None = None,
    prefills: tuple[tuple[int, ...], ...] = (),
) -> Iterator[tuple[Any, Verdicts]]:
    """Check every row in ``num_proc`` processes; yield (rows, verdicts) in the order of the data. Rows without a
    role mask get the roles ``read`` finds in their tokens (its stream reader runs in the workers)."""
    roles = read if read is not None and read.available and read.vectorized else None
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
            fn_kwargs={
                "columns": columns,
                "ends": sorted(end_token_ids),
                "path": str(source.path),
                "pad": pad_token_id,
                "bos": bos_token_id,
                "adds_bos": bos_added,
                "roles": roles.stream if roles else None,
                "prefills": prefills,
            },
        )
        first = 0
        for batch in table.with_format("arrow").iter(batch_size=MAP_BATCH_ROWS * 4):
            known = batch.column("known").to_numpy(zero_copy_only=False).astype(bool)
            rows = DatasetRows(dataset, columns, first, batch.num_rows, source.path, known, roles)
            if roles is not None and not known.all():
                rows.role_reasons = (_reason(rows, int(np.flatnonzero(~known)[0]), roles),)
            yield rows, _verdicts_of(batch)
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


def _verdict_table(
    batch,
    indices: list[int],
    columns: list[str],
    ends: list[int],
    path: str,
    pad: int | None = None,
    bos: int | None = None,
    adds_bos: bool = False,
    roles: Any = None,
    prefills: tuple[tuple[int, ...], ...] = (),
):
    """In a worker: one batch of rows (a pyarrow Table) to its verdicts, one row each; rows without a role mask get
    the roles ``roles`` (a ``StreamReader``) reads, and their prefill positions."""
    import pyarrow as pa

    record = batch.select(columns).combine_chunks().to_batches()
    if not record:
        return pa.table({name: pa.array([], pa.int64()) for name in _verdict_columns()})
    chunk = to_chunk(record[0], indices[0], Path(path))
    if roles is not None and chunk.completion is None:
        chunk = stream_token_roles(chunk, roles)
    if prefills and chunk.completion is not None:
        chunk = replace(chunk, prefill=prefill_mask(chunk, prefills))
    v = verdicts(chunk, ends, pad, bos, adds_bos)
    out = {"tokens": v.tokens, "trained": v.trained, "known": chunk.known_rows()}
    for name in CHECKS:
        out[f"positions.{name}"] = v.positions[name]
        out[f"fails.{name}"] = v.fails[name]
    return pa.table(out)


def _verdict_columns() -> list[str]:
    return ["tokens", "trained", "known", *(f"{kind}.{name}" for name in CHECKS for kind in ("positions", "fails"))]


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
    known: np.ndarray  # (R,) the rows whose roles are known (a role column, or read from the tokens)
    roles: ChunkRoles | None = None  # reads a row's roles again when it is shown
    role_reasons: tuple[str, ...] = field(default=())

    @property
    def has_roles(self) -> bool:
        return any(c in self.columns for c in ("completion_mask", "assistant_masks")) or self.roles is not None

    def known_rows(self) -> np.ndarray:
        """(R,) True where the row's roles are known."""
        return self.known

    def row(self, r: int) -> dict[str, np.ndarray]:
        return self._chunk(r).row(0)

    def _chunk(self, r: int) -> Chunk:
        index = self.first_row + r
        table = self.dataset.with_format("arrow")[index : index + 1].select(self.columns)
        chunk: Chunk = to_chunk(table.combine_chunks().to_batches()[0], index, self.path)
        return token_roles(chunk, self.roles) if self.roles is not None and chunk.completion is None else chunk


def _reason(rows: DatasetRows, r: int, roles: ChunkRoles) -> str:
    """Why no source reads row r (the same for every such row)."""
    chunk = rows._chunk(r)
    return chunk.role_reasons[0] if chunk.role_reasons else roles.unread_reason([], chunk.first_row)
