"""Throughput and memory of ``gradscope scan`` on generated pre-tokenized datasets.

Generates SFT-style rows (a prompt masked with -100, a completion closed by EOS, 1% of the rows with their prompt
trained and 0.5% with no trained token) as a saved ``datasets`` directory, Parquet and JSON lines, then scans each
in a fresh process (with an empty datasets cache), --repeats times, and reports rows, tokens, the median seconds,
tokens/s and the highest peak resident set (VmHWM) of the runs; it stops if a scan finds other problems than those
generated. The
sizes scanned (--rows, default 100k, 300k and 1M) show whether memory stays flat as the dataset grows.

    python benchmarks/bench_scan.py --out /tmp/gradscope-scan-bench

``--raw`` measures raw rows instead: generated prompt/completion rows and multi-turn ``messages`` rows (JSON lines),
tokenized with the fixture tokenizer fixtures/models/tiny-llama-chat and its chat template. In one fresh process per
file it times, side by side, (i) the tokenizer's own batched work for the same token ids, as a trainer's
preprocessing pays it (loading the tokenizer and reading the JSON lines, then for prompt/completion the batched
encode of prompt + completion + EOS, the text check tokenizes; for messages ``apply_chat_template`` over every row,
then the batched encode of the rendered texts), and (ii) ``gradscope.scan(FILE, tokenizer=...)`` on the same file,
and prints the ratio (ii)/(i) for the 1.3x target (medians of --repeats runs, the two sides alternated); for
prompt/completion also the ratio with the encode that returns character offsets, as check tokenizes those rows.

    python benchmarks/bench_scan.py --raw --raw-rows 20000

``--roles`` scans the same chat rows (as the fixture tokenizer's chat template renders one exchange, written as
Parquet without and with a completion_mask column) five ways: from the labels alone, with roles from the column
(without and with the tokenizer), from the chat template and from a response template. Each scan runs in a fresh
process warmed by a scan of 1,000 rows; the modes alternate, each round starting one mode later. Per mode: the
median seconds and CPU seconds over the rounds, and label-only's time in the same round ÷ the mode's (the median
over the rounds, [lowest, highest]).

    python benchmarks/bench_scan.py --roles --roles-rows 300000 --repeats 7 --num-proc 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EOS, VOCAB = 2, 32000


def generate(rows: int, seed: int = 0):
    """A pyarrow Table of ``rows`` rows (input_ids int32, attention_mask int8, labels int64, completion_mask int8),
    and the rows that fail each check by construction."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    lengths = rng.integers(32, 225, rows)  # mean 128 tokens
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    ids = rng.integers(4, VOCAB, n, dtype=np.int32)
    ids[offsets[1:] - 1] = EOS
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(n) - offsets[:-1][row_of]
    completion = (position >= (lengths // 2)[row_of]).astype(np.int8)
    labels = np.where(completion == 1, ids, -100).astype(np.int64)
    leak = rng.random(rows) < 0.01
    labels = np.where(leak[row_of], ids, labels)
    no_loss = rng.random(rows) < 0.005
    labels[no_loss[row_of]] = -100
    lists = lambda values: pa.LargeListArray.from_arrays(offsets, values)  # noqa: E731
    table = pa.table(
        {
            "input_ids": lists(ids),
            "attention_mask": lists(np.ones(n, np.int8)),
            "labels": lists(labels),
            "completion_mask": lists(completion),
        }
    )
    return table, {"no_loss": int(no_loss.sum()), "prompt_leak": int((leak & ~no_loss).sum())}


def write_all(table, out: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    import datasets
    import pyarrow.parquet as pq

    paths = {}
    if "datasets" in formats:
        paths["datasets"] = out / f"rows{rows}"
        if not paths["datasets"].exists():
            datasets.Dataset(table).save_to_disk(str(paths["datasets"]), max_shard_size="500MB")
    if "parquet" in formats:
        paths["parquet"] = out / f"rows{rows}.parquet"
        if not paths["parquet"].exists():
            pq.write_table(table, paths["parquet"], row_group_size=65536)
    if "jsonl" in formats:
        paths["jsonl"] = out / f"rows{rows}.jsonl"
        if not paths["jsonl"].exists():
            with paths["jsonl"].open("w") as f:
                for batch in table.to_batches(max_chunksize=10000):
                    for row in batch.to_pylist():
                        f.write(json.dumps(row, separators=(",", ":")) + "\n")
    return paths


CHILD = """
import json, sys, time
from pathlib import Path
from gradscope.scan import scan
def status(key):
    lines = Path('/proc/self/status').read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(key))
before = status('VmRSS')
start = time.perf_counter()
report = scan(sys.argv[1], end_token_ids=[2], num_proc=int(sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"rows": report.rows, "tokens": report.tokens, "seconds": seconds, "peak_mib": status('VmHWM') / 1024,
                  "scan_mib": (status('VmHWM') - before) / 1024,
                  "failed": {k: v["rows"] for k, v in report.checks.items() if v["rows"]}}))
"""


def scan_in_child(path: Path, num_proc: int) -> dict:
    """Scan in a fresh process, with an empty datasets cache (so --num-proc pays datasets' conversion every time)."""
    with tempfile.TemporaryDirectory(prefix="gradscope-bench-cache-") as cache:
        env = dict(
            os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", HF_DATASETS_CACHE=cache
        )
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(num_proc)], env=env, check=True, capture_output=True, text=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


TOKENIZER = ROOT / "fixtures/models/tiny-llama-chat"
WORDS = (
    "the sky is blue and the capital of kenya is nairobi what colour is it reverse the word cat two plus three "
    "is five answer briefly please explain why water boils at one hundred degrees"
).split()


def generate_raw(rows: int, kind: str, seed: int = 0) -> list[dict]:
    """Raw rows: prompt/completion strings (mean 40 + 25 words) or chats of 2 or 4 turns (mean 20 words a turn)."""
    rng = np.random.default_rng(seed)
    say = lambda mean: " ".join(rng.choice(WORDS, int(rng.integers(mean // 2, mean * 3 // 2 + 1))))  # noqa: E731
    if kind == "prompt-completion":
        return [{"prompt": f"Question: {say(40)}\nAnswer:", "completion": " " + say(25)} for _ in range(rows)]
    out = []
    for _ in range(rows):
        turns = int(rng.choice([1, 2]))
        messages = [{"role": "system", "content": "Answer briefly."}] if rng.random() < 0.5 else []
        for _ in range(turns):
            messages += [{"role": "user", "content": say(20)}, {"role": "assistant", "content": say(20)}]
        out.append({"messages": messages})
    return out


RAW_CHILD = """
import json, statistics, sys, time
from pathlib import Path
import pyarrow, pyarrow.json  # imports are not the work measured (scan imports them lazily)
from gradscope.model.load import load_tokenizer
from gradscope.scan import scan
path, tokenizer_dir, kind, repeats = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
load_tokenizer(tokenizer_dir)  # warm: the first load imports the tokenizer classes

def tokenizer_time():
    times = {}
    start = time.perf_counter()
    tok = load_tokenizer(tokenizer_dir)
    rows = [json.loads(line) for line in path.open()]
    times["read"] = time.perf_counter() - start
    start = time.perf_counter()
    if kind == "prompt-completion":
        texts, special = [r["prompt"] + r["completion"] + tok.eos_token for r in rows], True
    else:
        texts, special = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows], False
    times["render"] = time.perf_counter() - start
    for offsets in (False, True) if kind == "prompt-completion" else (False,):  # check reads p/c offsets
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(texts), 1000):  # a trainer's map() batch
            enc = tok(texts[i:i + 1000], add_special_tokens=special, return_offsets_mapping=offsets)
            tokens += sum(map(len, enc["input_ids"]))
        times["offsets" if offsets else "encode"] = time.perf_counter() - start
    return times, tokens

runs = []
for _ in range(repeats):  # alternated, so that both sides see the same load on a shared machine
    times, tokens = tokenizer_time()
    start = time.perf_counter()
    report = scan(path, tokenizer=tokenizer_dir)
    times["scan"] = time.perf_counter() - start
    assert report.tokens == tokens, (report.tokens, tokens)
    runs.append(times)
median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
print(json.dumps({"rows": report.rows, "tokens": tokens, "offsets": None, **median, "failed": report.failed_checks}))
"""


def raw_main(rows: int, out: Path, repeats: int) -> None:
    """The raw-data table: the tokenizer's batched time against scan --tokenizer on the same file (medians)."""
    print(
        "| rows | kind | tokens | load + read JSON | render | batched encode | tokenizer total (i) "
        "| scan --tokenizer (ii) | (ii) / (i) | encode with offsets, as check | (ii) / (i) with it |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("prompt-completion", "messages"):
        path = out / f"raw-{kind}-{rows}.jsonl"
        if not path.exists():
            path.write_text("".join(json.dumps(r) + "\n" for r in generate_raw(rows, kind)))
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        done = subprocess.run(
            [sys.executable, "-c", RAW_CHILD, str(path), str(TOKENIZER), kind, str(repeats)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if r["failed"]:
            raise SystemExit(f"{kind}: the scan found {r['failed']} in generated rows")
        base = r["read"] + r["render"] + r["encode"]
        with_offsets = "–" if r["offsets"] is None else f"{r['offsets']:.2f} s"
        ratio_offsets = "–" if r["offsets"] is None else f"{r['scan'] / (base - r['encode'] + r['offsets']):.2f}"
        print(
            f"| {r['rows']:,} | {kind} | {r['tokens']:,} | {r['read']:.2f} s | "
            f"{r['render']:.2f} s | {r['encode']:.2f} s "
            f"| {base:.2f} s | {r['scan']:.2f} s | {r['scan'] / base:.2f} | {with_offsets} | {ratio_offsets} |",
            flush=True,
        )


CHAT_USER, CHAT_ASSISTANT, CHAT_END = [1, 296, 202], [1, 290, 202], [2, 202]
"""tiny-llama-chat's ChatML: ``<|im_start|>user\n``, ``<|im_start|>assistant\n``, ``<|im_end|>\n``."""
ROLE_MODES = {
    "label-only": {"end_token_ids": [2]},
    "roles-from-column": {"end_token_ids": [2], "column": True},
    "roles-from-column, --tokenizer": {"tokenizer": str(TOKENIZER), "column": True},
    "roles-from-template": {"tokenizer": str(TOKENIZER)},
    "roles-from-response-template": {"tokenizer": str(TOKENIZER), "response_template": "<|im_start|>assistant\n"},
}
"""The same chat rows scanned five ways: labels alone, roles from a completion_mask column (without and with the
tokenizer, whose pad id adds the trailing-padding rule), from the chat template's markers, from a response
template (these two need the tokenizer)."""


def generate_chat(rows: int, seed: int = 0):
    """Rows rendered as tiny-llama-chat's template renders one exchange (user turn, assistant turn; mean 128
    tokens), completion (assistant content + <|im_end|>) trained; 1% with the prompt trained, 0.5% with nothing
    trained. A pyarrow Table with a completion_mask column, and the failures expected with roles."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    prompt, answer = rng.integers(10, 110, rows), rng.integers(10, 110, rows)
    head, mid, tail = np.array(CHAT_USER), np.array(CHAT_END + CHAT_ASSISTANT), np.array(CHAT_END)
    lengths = len(head) + prompt + len(mid) + answer + len(tail)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(n) - offsets[:-1][row_of]
    ids = rng.integers(4, 200, n, dtype=np.int64)  # content: no marker, end or newline token
    cut = {"mid": len(head) + prompt, "answer": len(head) + prompt + len(mid), "tail": lengths - len(tail)}
    at = lambda name: position - cut[name][row_of]  # noqa: E731
    ids = np.where(position < len(head), head[np.minimum(position, len(head) - 1)], ids)
    in_mid = (at("mid") >= 0) & (at("answer") < 0)
    ids[in_mid] = mid[at("mid")[in_mid]]
    in_tail = at("tail") >= 0
    ids[in_tail] = tail[at("tail")[in_tail]]
    completion = ((at("answer") >= 0) & (at("tail") <= 0)).astype(np.int8)  # content and <|im_end|>
    labels = np.where(completion == 1, ids, -100)
    leak = rng.random(rows) < 0.01
    labels = np.where(leak[row_of] & (position > 0), ids, labels)
    no_loss = rng.random(rows) < 0.005
    labels[no_loss[row_of]] = -100
    lists = lambda values: pa.LargeListArray.from_arrays(offsets, values)  # noqa: E731
    table = pa.table(
        {
            "input_ids": lists(ids.astype(np.int32)),
            "attention_mask": lists(np.ones(n, np.int8)),
            "labels": lists(labels),
            "completion_mask": lists(completion),
        }
    )
    return table, {"no_loss": int(no_loss.sum()), "prompt_leak": int((leak & ~no_loss).sum())}


ROLES_CHILD = """
import json, sys, time
from gradscope.data.pipelines import DataOptions
from gradscope.scan import scan
path, small, num_proc, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
options = DataOptions(response_template=mode.pop("response_template", None))
scan(small, num_proc=num_proc, options=options, **mode)  # warm: imports and the tokenizer's first load are not timed
start, cpu = time.perf_counter(), time.process_time()
report = scan(path, num_proc=num_proc, options=options, **mode)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"rows": report.rows, "tokens": report.tokens, "seconds": seconds, "cpu": cpu, "notes": report.notes,
                  "failed": {k: v["rows"] for k, v in report.checks.items() if v["rows"]}}))
"""


def roles_main(rows: int, out: Path, repeats: int, procs: list[int]) -> None:
    """The roles table: the same chat rows scanned from labels alone and with roles from each source, each in a
    fresh process warmed by a scan of the first 1,000 rows (imports and the tokenizer's first load not timed)."""
    import pyarrow.parquet as pq

    table, expected = generate_chat(rows)
    paths = {True: out / f"chat{rows}-column.parquet", False: out / f"chat{rows}.parquet"}
    if not paths[True].exists():
        for column, path in paths.items():
            rows_of = table if column else table.drop(["completion_mask"])
            pq.write_table(rows_of, path, row_group_size=65536)
            pq.write_table(rows_of.slice(0, 1000), path.with_suffix(".warm.parquet"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    times: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}  # this process's CPU seconds: what a loaded machine does not stretch
    results: dict[tuple[str, int], dict] = {}
    names = list(ROLE_MODES)
    for round_ in range(repeats):  # the modes alternate, so that a change in the machine's load falls on all of them
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # each round starts one mode later
            for num_proc in procs:
                spec = dict(ROLE_MODES[name])
                path = paths[bool(spec.pop("column", False))]
                with tempfile.TemporaryDirectory(prefix="gradscope-bench-cache-") as cache:
                    warm = path.with_suffix(".warm.parquet")
                    done = subprocess.run(  # inside the block: the cache directory lives until the child is done
                        [sys.executable, "-c", ROLES_CHILD, str(path), str(warm), str(num_proc), json.dumps(spec)],
                        env=dict(env, HF_DATASETS_CACHE=cache),
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                r = json.loads(done.stdout.strip().splitlines()[-1])
                wanted = {"no_loss": expected["no_loss"]} if name == "label-only" else expected
                if {k: v for k, v in r["failed"].items() if k in ("no_loss", "prompt_leak")} != wanted:
                    raise SystemExit(f"{name}: found {r['failed']}, generated {expected}")
                times.setdefault((name, num_proc), []).append(r["seconds"])
                cpus.setdefault((name, num_proc), []).append(r["cpu"])
                results[(name, num_proc)] = r
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end; {repeats} rounds; seconds: the "
        "median of the rounds; × label-only: the median over the rounds of label-only's time in the same round ÷ the "
        "mode's, and [lowest, highest]; CPU: this process's CPU seconds (its worker processes with --num-proc > 1 "
        "not counted)"
    )
    print()
    print(
        "| mode | rows | tokens | --num-proc | wall s | tokens/s | × label-only | CPU s | tokens/CPU s | × label-only "
        "| roles read |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, num_proc), r in sorted(results.items(), key=lambda item: (names.index(item[0][0]), item[0][1])):
        seconds, cpu = statistics.median(times[(name, num_proc)]), statistics.median(cpus[(name, num_proc)])
        wall_x = _paired(times[("label-only", num_proc)], times[(name, num_proc)])
        cpu_x = _paired(cpus[("label-only", num_proc)], cpus[(name, num_proc)])
        unknown = r["failed"].get("roles_unknown", 0)
        read = "none" if name == "label-only" else f"{r['rows'] - unknown:,} rows"
        note = " (not used: roles read in this process)" if r["notes"] else ""
        print(
            f"| {name} | {r['rows']:,} | {r['tokens']:,} | {num_proc}{note} | {seconds:.2f} | "
            f"{r['tokens'] / seconds / 1e6:.1f}M | {wall_x} | {cpu:.2f} | "
            f"{r['tokens'] / cpu / 1e6:.1f}M | {cpu_x} | {read} |",
            flush=True,
        )


def _paired(base: list[float], mode: list[float]) -> str:
    """label-only's time ÷ the mode's, round by round: the median and [lowest, highest]."""
    ratios = [b / m for b, m in zip(base, mode, strict=True)]
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}"
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gradscope-scan-bench"))
    parser.add_argument("--rows", default="100000,300000,1000000")
    parser.add_argument("--formats", default="datasets,parquet", help="datasets, parquet, jsonl (comma-separated)")
    parser.add_argument("--jsonl-rows", default="100000,300000", help="sizes for the JSON lines files (slow to write)")
    parser.add_argument("--num-proc", default="1,2", help="process counts to try (comma-separated)")
    parser.add_argument("--raw", action="store_true", help="measure raw rows (scan --tokenizer) instead")
    parser.add_argument("--raw-rows", type=int, default=20000, help="rows of each raw file")
    parser.add_argument(
        "--roles",
        action="store_true",
        help="scan the same chat rows from labels alone and with roles from a column, the chat "
        "template and a response template, side by side",
    )
    parser.add_argument("--roles-rows", type=int, default=200000, help="rows of the --roles dataset")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="fresh-process runs of each scan (median time, highest peak); raw: alternated repeats of each side",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.raw:
        raw_main(args.raw_rows, args.out, args.repeats)
        return
    if args.roles:
        roles_main(args.roles_rows, args.out, args.repeats, [int(p) for p in args.num_proc.split(",")])
        return
    formats = args.formats.split(",")
    print("| format | rows | tokens | --num-proc | seconds | tokens/s | peak RSS | peak RSS above the imports |")
    print("|---|---|---|---|---|---|---|---|")
    jobs: dict[int, list[str]] = {int(r): [f for f in formats if f != "jsonl"] for r in args.rows.split(",")}
    if "jsonl" in formats:
        for rows in args.jsonl_rows.split(","):
            jobs.setdefault(int(rows), []).append("jsonl")
    for rows, wanted in sorted(jobs.items()):
        start = time.perf_counter()
        table, expected = generate(rows)
        paths = write_all(table, args.out, rows, wanted)
        print(f"generated {rows} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for fmt, path in paths.items():
            for num_proc in [int(p) for p in args.num_proc.split(",")]:
                runs = [scan_in_child(path, num_proc) for _ in range(args.repeats)]
                for r in runs:
                    if r["failed"] != expected:
                        raise SystemExit(
                            f"{fmt} {rows} rows, --num-proc {num_proc}: found {r['failed']}, generated {expected}"
                        )
                r, seconds = runs[0], statistics.median(r["seconds"] for r in runs)
                peak, above = max(r["peak_mib"] for r in runs), max(r["scan_mib"] for r in runs)
                print(
                    f"| {fmt} | {r['rows']:,} | {r['tokens']:,} | {num_proc} | {seconds:.2f} | "
                    f"{r['tokens'] / seconds / 1e6:.1f}M | {peak:.0f} MiB | {above:.0f} MiB |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
