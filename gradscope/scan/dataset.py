"""Scan: a model-free audit of every row of a tokenized dataset, read from its labels alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gradscope.data.chunks import Chunk
from gradscope.data.load import role_spec
from gradscope.data.pipelines import DataOptions
from gradscope.data.prefill import generation_prefills
from gradscope.data.stream import Source, open_source, raw_columns, raw_text_error
from gradscope.data.token_roles import RoleSources
from gradscope.data.tokens import bos_added, default_end_token_ids, resolve_bos_token_id, resolve_pad_token_id
from gradscope.errors import DataError, InputError, ModelLoadError
from gradscope.model.checkpoint import CONFIG_BYTES, check_config, check_regular_file
from gradscope.model.load import load_tokenizer
from gradscope.report.scan import ScanReport
from gradscope.scan.pipeline import Job
from gradscope.scan.raw import RawSettings, raw_chunks
from gradscope.scan.roles import with_prefills
from gradscope.scan.stream_roles import ChunkRoles
from gradscope.scan.summary import ScanAccumulator
from gradscope.scan.verdicts import CHECKS, UNKNOWN_ROLES, Verdicts, verdicts
from gradscope.tokenizer import Tokenizer


def scan_chunks(
    checked: Iterator[tuple[Chunk, Verdicts]],
    report: ScanReport,
    *,
    end_token_ids: frozenset[int],
    pad_token_id: int | None = None,
    decode: Callable[[int], str | None] = lambda _: None,
    examples: int = 3,
    worst: int = 10,
    progress: Callable[[int], None] | None = None,
    no_roles: str | None = None,
    bos_token_id: int | None = None,
    bos_added: bool = False,
    prefills: tuple[tuple[int, ...], ...] = (),
) -> ScanReport:
    """Fold a stream of checked chunks into ``report`` (``no_roles``: why rows without a role mask have none)."""
    for name in (*CHECKS, UNKNOWN_ROLES):
        report.checks.setdefault(name, {"rows": 0, "positions": 0, "first_rows": []})
    acc = ScanAccumulator(
        report,
        end_token_ids=end_token_ids,
        pad_token_id=pad_token_id,
        decode=decode,
        examples=examples,
        worst=worst,
        bos_token_id=bos_token_id,
        bos_added=bos_added,
        prefills=prefills,
        **({"no_roles": no_roles} if no_roles else {}),
    )
    for chunk, v in checked:
        acc.add(chunk, v)
        if progress is not None:
            progress(chunk.rows)
    return acc.finish()


# ------------------------------------------------------------------------------------------------ entry point


def scan(
    data: str | Path,
    *,
    tokenizer: str | Path | None = None,
    end_token_ids: Iterable[int] | None = None,
    options: DataOptions | None = None,
    examples: int = 3,
    worst: int = 10,
    num_proc: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> ScanReport:
    """Audit every row of a dataset from its labels, without a model.

    Args:
        data: A ``.jsonl``/``.json`` of rows, a ``.parquet``, an ``.arrow`` file, a directory saved with
            ``datasets``' ``save_to_disk``, or a ``.safetensors`` batch. Pre-tokenized rows hold ``input_ids`` and
            optionally ``labels``, ``attention_mask`` and ``completion_mask``/``assistant_masks``. Raw rows
            (``prompt``/``completion``, ``messages``, ``text``) need ``tokenizer``: they are tokenized and split into
            roles as ``check`` does, and labelled by its reference masking.
        tokenizer: A tokenizer (or model) directory: names the end and pad tokens (with the directory's
            config.json and generation_config.json, as ``check`` does), decodes token texts in messages, and
            tokenizes raw rows (with its chat template).
        end_token_ids: Token ids that close a completion, instead of the tokenizer's.
        options: For raw rows: ``train_on``, ``response_template``, ``instruction_template``, ``max_length`` and
            ``truncation_mode``, as ``check`` reads them (the other fields do not apply to a scan).
        examples: Rows of each check given in full (positions and message) in ``findings``.
        worst: How many of the rows with the most flagged positions to list.
        num_proc: Processes that read and check parts of the data (None or 1: this process alone); pre-tokenized
            data only.
        progress: Called as ``progress(rows_done, total_rows_or_None)`` after each chunk.

    Returns:
        The ScanReport; ``report.ok`` is False when a row fails an error check.

    Raises:
        InputError: unreadable or malformed data, raw rows without a tokenizer or that ``check`` would reject, or
            a tokenizer directory that cannot be loaded.
    """
    source = open_source(data)
    settings = TokenSettings.load(tokenizer, end_token_ids)
    report = ScanReport(source=settings.describe(source))
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, source.rows)

    ends, bos = settings.end_token_ids, (settings.bos_token_id, settings.bos_added)
    options = options or DataOptions()
    raw = _raw_settings(source, settings, options)
    read = None if raw is not None else _role_reader(settings, options)
    prefills = generation_prefills(settings.tokenizer)
    in_process = read is not None and read.available and not read.vectorized  # roles read row by row, here
    job = Job(source, ends, settings.pad_token_id, *bos, settings.vocab_size, read, prefills, examples, worst)
    checked: Iterator[tuple[Chunk, Verdicts]]
    if raw is not None:
        checked = (
            (chunk, verdicts(chunk, ends, settings.pad_token_id, *bos))
            for chunk in with_prefills(raw_chunks(source, raw), prefills)
        )
        if num_proc and num_proc > 1:
            report.notes.append(
                "`num_proc` was not used: raw rows are tokenized in this process, by the tokenizer's batched call"
            )
    elif num_proc and num_proc > 1 and source.format != "safetensors" and not in_process:
        from gradscope.scan.parallel import parallel_checked_chunks

        checked = parallel_checked_chunks(job, num_proc)
    else:
        if num_proc and num_proc > 1 and in_process:
            report.notes.append(
                "`num_proc` was not used: the chat template's markers are read from the rows' tokens "
                "row by row, in this process"
            )
        checked = job.checked()
    scanned = scan_chunks(
        checked,
        report,
        end_token_ids=settings.end_token_ids,
        pad_token_id=settings.pad_token_id,
        decode=settings.decode,
        examples=examples,
        worst=worst,
        progress=advance,
        no_roles=None if read is None else read.reason,
        bos_token_id=settings.bos_token_id,
        bos_added=settings.bos_added,
        prefills=prefills,
    )
    if raw is not None:
        scanned.source["raw"] = raw.describe()
    if not scanned.rows:  # a verdict on nothing is not a pass
        raise DataError("no rows to scan: the data is empty", path=source.path, hint="give a file with rows")
    return scanned


def _role_reader(settings: TokenSettings, options: DataOptions) -> ChunkRoles:
    """How rows without a role mask get roles from their tokens: a response template, the chat template, or none."""
    sources = RoleSources(
        response_template=options.response_template,
        instruction_template=options.instruction_template,
        train_on=options.train_on,
    )
    return ChunkRoles(settings.tokenizer, settings.end_token_ids, sources)


def _raw_settings(source: Source, settings: TokenSettings, options: DataOptions) -> RawSettings | None:
    """How to read raw rows, or None when the data is tokenized; raw rows without a tokenizer are bad input."""
    names = raw_columns(source)
    if not names:
        return None
    if settings.tokenizer is None:
        raise raw_text_error(names, source.path)
    spec = role_spec(settings.tokenizer, options, settings.end_token_ids, source=str(source.path))
    return RawSettings(settings.tokenizer, spec, options)


@dataclass
class TokenSettings:
    """What a scan knows of the tokens without a model: end ids, the pad id, the BOS, and texts."""

    end_token_ids: frozenset[int]
    pad_token_id: int | None
    tokenizer: Tokenizer | None = None
    directory: Path | None = None
    bos_token_id: int | None = None
    bos_added: bool = False  # the tokenizer puts its BOS first in every encoding
    _texts: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | Path | None, end_token_ids: Iterable[int] | None) -> TokenSettings:
        """From a tokenizer or model directory (tokenizer files, config.json, generation_config.json)."""
        if directory is None:
            ends = frozenset(end_token_ids or ())
            if any(i < 0 for i in ends):
                raise InputError(f"`end_token_ids` {sorted(ends)} holds a negative id", hint="give token ids (>= 0)")
            return cls(ends, None)
        directory = Path(directory)
        tokenizer = load_tokenizer(directory) if directory.is_dir() else None
        if tokenizer is None:
            raise ModelLoadError(
                "no tokenizer files in this directory",
                path=directory,
                hint="give the model's directory (tokenizer.json, tokenizer_config.json)",
            )
        configs = SimpleNamespace(
            config=_json_config(directory / "config.json"),
            generation_config=_json_config(directory / "generation_config.json"),
        )
        ends = frozenset(end_token_ids) if end_token_ids else default_end_token_ids(configs, tokenizer)
        outside = sorted(i for i in ends if not 0 <= i < len(tokenizer))
        if outside:
            raise InputError(
                f"end token id(s) {outside} outside the tokenizer's vocabulary [0, {len(tokenizer)})",
                path=directory,
                hint="give `end_token_ids` this tokenizer has",
            )
        return cls(
            ends,
            resolve_pad_token_id(configs, tokenizer),
            tokenizer,
            directory,
            resolve_bos_token_id(tokenizer),
            bos_added(tokenizer),
        )

    @property
    def vocab_size(self) -> int | None:
        """Ids the tokenizer knows (added tokens included), or None without one."""
        return len(self.tokenizer) if self.tokenizer is not None else None

    def decode(self, token_id: int) -> str | None:
        """The token's text (each id decoded once: the rows shown repeat their tokens)."""
        if self.tokenizer is None:
            return None
        if token_id not in self._texts:
            self._texts[token_id] = self.tokenizer.decode([token_id])
        return self._texts[token_id]

    def describe(self, source: Source) -> dict[str, Any]:
        return {
            "path": str(source.path),
            "format": source.format,
            "tokenizer": str(self.directory) if self.directory else None,
            "end_token_ids": sorted(self.end_token_ids),
            "pad_token_id": self.pad_token_id,
            "raw": None,
        }


def _json_config(path: Path) -> SimpleNamespace | None:
    """A config file's eos/pad ids, read as plain JSON (nothing from the directory runs)."""
    if not path.exists():
        return None
    check_regular_file(path, path.parent, max_bytes=CONFIG_BYTES)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelLoadError(f"cannot read {path.name}: {err}", path=path) from err
    if not isinstance(values, dict):
        raise ModelLoadError(f"{path.name} is not a JSON object", path=path)
    ids = SimpleNamespace(eos_token_id=values.get("eos_token_id"), pad_token_id=values.get("pad_token_id"))
    check_config(ids, path.parent)  # the same types check accepts: ids or lists of them (not 1.5, -5, true)
    return ids
