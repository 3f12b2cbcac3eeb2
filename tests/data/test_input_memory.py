"""Reading the first rows of a large Parquet file or .json array costs what reading a 10-row file costs: only the
rows needed are read (Parquet batch by batch, .json arrays with an incremental parser). Peak RSS of a fresh process
(VmHWM), so that pyarrow's allocations count too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
_PROBE = """
import sys
import pyarrow.parquet  # imported by both runs alike
from gradscope.data.files import read_rows
rows = read_rows(sys.argv[1], limit=1)
assert len(rows) == 1 and len(rows[0]["input_ids"]) > 0
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def _peak_kib(path: Path) -> int:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    return int(out.stdout.strip())


def _rows(n: int, width: int) -> list[dict]:
    return [{"input_ids": list(range(1000 + i % 7, 1000 + i % 7 + width)), "labels": [-100] * width} for i in range(n)]


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_reading_one_row_of_a_large_file_peaks_as_a_small_file_does(tmp_path, kind):
    if not Path("/proc/self/status").exists():
        pytest.fail("needs /proc (Linux) to read the peak resident set")
    small, large = tmp_path / f"small.{kind}", tmp_path / f"large.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(_rows(10, 1000)), small)
        big = pa.table({"input_ids": [list(range(1000))] * 4000, "labels": [[-100] * 1000] * 4000})
        pq.write_table(big, large, row_group_size=256)  # 8M tokens, 32 MB of int64 per column uncompressed
    else:
        small.write_text(json.dumps(_rows(10, 1000)))
        with large.open("w") as f:  # 3M tokens: about 30 MB of text, over 200 MB as Python objects
            f.write("[" + ",\n".join(json.dumps(r) for r in _rows(1500, 1000)) + "]")
    base, peak = _peak_kib(small), _peak_kib(large)
    assert peak <= 1.2 * base, f"{kind}: {peak} KiB reading 1 row of the large file vs {base} KiB for 10 rows"
