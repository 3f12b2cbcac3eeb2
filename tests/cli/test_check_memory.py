"""``gradscope check MODEL FILE --samples 1`` on a 20M-token Parquet file and on a 100 MB .json array peaks within
1.2x of the same check on a 10-row file of the same format: only the rows asked for are read.

Each check runs the CLI in a fresh Python process, whose peak resident set (VmHWM) counts everything the command
allocated, pyarrow's buffers included. Parsing the .json array whole would add about 600 MB (Python objects of 10M
token ids), reading the Parquet file whole 320 MB of int64 columns; the 10-row check peaks near 520 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
LLAMA = ROOT / "fixtures/models/tiny-llama-chat"
WIDTH = 256  # tokens per row, within the tiny model's 512 positions
_PROBE = """
import sys
from gradscope.cli import app
try:
    app(sys.argv[1:], prog_name="gradscope")
    code = 0
except SystemExit as exit:
    code = exit.code
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(f"exit={code} peak_kib={peak}", file=sys.stderr)
"""


def _check(data: Path) -> tuple[int, int, dict]:
    """Exit status, peak RSS in KiB and JSON report of ``check LLAMA data --samples 1`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", _PROBE, "check", str(LLAMA), str(data), "--samples", "1", "--format", "json"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)  # exit 1 = findings
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("exit="), out.stderr[-2000:]
    code, peak = (int(part.split("=")[1]) for part in last.split())
    return code, peak, json.loads(out.stdout)


def _table(rows: int, seed: int = 0) -> pa.Table:
    ids = np.random.default_rng(seed).integers(3, 480, size=rows * WIDTH, dtype=np.int64)  # (rows * WIDTH,)
    offsets = np.arange(0, rows * WIDTH + 1, WIDTH, dtype=np.int32)
    labels = np.where(np.arange(rows * WIDTH) % WIDTH < WIDTH // 2, -100, ids)  # the second half of each row trained
    return pa.table(
        {"input_ids": pa.ListArray.from_arrays(offsets, ids), "labels": pa.ListArray.from_arrays(offsets, labels)}
    )


def _write_json(path: Path, table: pa.Table, repeat: int = 1) -> None:
    """The table's rows as one JSON array, repeated ``repeat`` times (written in pieces: the text is never whole)."""
    rows = ",\n".join(json.dumps(row) for row in table.to_pylist())
    with path.open("w") as f:
        f.write("[" + rows)
        for _ in range(repeat - 1):
            f.write(",\n" + rows)
        f.write("]\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("memory")
    small = _table(10)
    pq.write_table(small, tmp / "small.parquet")
    pq.write_table(_table(20_000_000 // WIDTH, seed=1), tmp / "large.parquet")  # one row group of 78,125 rows
    _write_json(tmp / "small.json", small)
    _write_json(tmp / "large.json", small, repeat=10_000_000 // (10 * WIDTH))  # 10M tokens of each column
    return {kind: (tmp / f"small.{kind}", tmp / f"large.{kind}") for kind in ("parquet", "json")}


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_check_of_one_sample_of_a_large_file_peaks_as_on_a_10_row_file(files, kind):
    if not Path("/proc/self/status").exists():
        pytest.fail("needs /proc (Linux) to read the peak resident set")
    small, large = files[kind]
    tokens = pq.ParquetFile(large).metadata.num_rows * WIDTH if kind == "parquet" else None
    assert tokens in (None, 20_000_000)
    assert kind == "parquet" or large.stat().st_size > 90e6
    small_code, base, small_report = _check(small)
    large_code, peak, large_report = _check(large)
    assert small_code == large_code and small_code in (0, 1)
    assert len(small_report["samples"]) == len(large_report["samples"]) == 1
    assert peak <= 1.2 * base, f"{kind}: check --samples 1 peaks at {peak} KiB on the large file, {base} KiB on 10 rows"
