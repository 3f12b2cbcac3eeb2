"""A ``Dataset.save_to_disk`` directory's JSON files (dataset_dict.json, state.json, dataset_info.json), read and
checked before ``datasets`` or the Arrow reader sees them: a corrupt or odd one is a DataError naming it."""

from __future__ import annotations

from pathlib import Path

from gradscope.data.jsonio import read_json_file
from gradscope.errors import DataError

_HINT = "re-save the dataset with save_to_disk(dir)"


def dataset_splits(path: Path) -> list[str]:
    """The split names dataset_dict.json lists."""
    file = path / "dataset_dict.json"
    value = read_json_file(file, "dataset_dict.json")
    splits = value.get("splits") if isinstance(value, dict) else None
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and _plain(s) for s in splits):
        raise DataError("'splits' must be a list of split names", path=file, hint=_HINT)
    return splits


def data_files(path: Path) -> list[Path]:
    """The Arrow files state.json names, each a file inside the directory."""
    file = path / "state.json"
    value = read_json_file(file, "state.json")
    entries = value.get("_data_files") if isinstance(value, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError("'_data_files' must be a list of {\"filename\": ...}", path=file, hint=_HINT)
    files = []
    for i, entry in enumerate(entries):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _plain(name) or not (path / name).is_file():
            raise DataError(
                f"'_data_files' entry {i} names no Arrow file of this directory ({name!r})", path=file, hint=_HINT
            )
        files.append(path / name)
    return files


def num_rows(info: Path) -> int | None:
    """The rows dataset_info.json counts, or None when it has no count (it is optional)."""
    if not info.is_file():
        return None
    value = read_json_file(info, "dataset_info.json")
    splits = value.get("splits") if isinstance(value, dict) else None
    if splits is None:
        return None
    counts = (
        [s.get("num_examples") if isinstance(s, dict) else None for s in splits.values()]
        if isinstance(splits, dict)
        else [None]
    )
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise DataError("'splits' must map split names to {\"num_examples\": N}", path=info, hint=_HINT)
    return sum(c for c in counts if isinstance(c, int)) or None  # every count is an int here


def check_saved_dataset(path: Path) -> None:
    """The JSON files of a saved dataset (or DatasetDict) directory, checked as the scan reads them."""
    if (path / "dataset_dict.json").is_file():
        for split in dataset_splits(path):
            if (path / split).is_dir():
                check_saved_dataset(path / split)
        return
    if (path / "state.json").is_file():
        data_files(path)
        num_rows(path / "dataset_info.json")
        if (path / "dataset_info.json").is_file():
            read_json_file(path / "dataset_info.json", "dataset_info.json")


def _plain(name: str) -> bool:
    """A file or directory name inside the dataset directory (no path of its own)."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")
