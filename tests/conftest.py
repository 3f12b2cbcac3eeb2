"""Shared fixtures: the committed fixture models, batches and tokenizers, small random models built in memory, and the
synthetic rows of the scan and stream tests.

Test modules take these as fixture arguments and never import this file or each other (tests/test_layout.py checks
that). A module that needs a fixture path while pytest collects it (a parametrize list, the catalogue) computes it from
its own ``Path(__file__)``. Factories are session-scoped and cache what is costly to load; what they build fresh (a
tiny model, a batch) is the caller's to change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import gradscope
from gradscope.data.load import load_batches
from gradscope.model.usercode import load_loss_fn

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# The test models are tiny: splitting a (57, 64) matmul across threads only adds waiting, and on a shared 2-core
# machine a second thread that is not scheduled makes every op wait for it (measured: 15-30 ms for a tiny linear
# with 2 threads under load, 0.03 ms with 1).
torch.set_num_threads(1)

# The tokenizers the role tests compare, by the name the tests use.
TOKENIZERS = {
    "chatml": FIXTURES / "models/tiny-llama-chat",
    "llama3": FIXTURES / "tokenizers/llama3-chat",
    "mistral": FIXTURES / "tokenizers/mistral-chat",
    "gpt2": FIXTURES / "models/tiny-gpt2",
}


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The committed fixtures folder (models, batches, raw rows, tokenizers, catalogues)."""
    return FIXTURES


def _tiny_llama(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=5,
        pad_token_id=0,
        attention_dropout=dropout,
    )
    return LlamaForCausalLM(config).eval()


def _tiny_gpt2(dropout: float = 0.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=97,
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=64,
        bos_token_id=5,
        eos_token_id=5,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config).eval()


_TINY = {"llama": _tiny_llama, "gpt2": _tiny_gpt2}


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Factory ``tiny_model(arch, dropout=0.0)``: a new small random model in eval mode, ``arch`` "llama" or "gpt2"
    (GPT-2: tied embeddings, other module names). Seeded: every call gives the same weights; vocabulary 97, EOS 5."""

    def build(arch: str, dropout: float = 0.0) -> torch.nn.Module:
        return _TINY[arch](dropout)

    return build


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def random_model(request):
    """A small random model of each architecture, shared by the session: a test must leave it as it found it."""
    return _TINY[request.param]()


def _make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 97, (3, 12), generator=g)
    ids[:, 6] = 5
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0
    attention[2, 7:] = 0
    ids[attention == 0] = 0
    completion = torch.zeros_like(ids)
    completion[:, 4:7] = 1
    labels = torch.where(completion.bool(), ids, -100)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "completion_mask": completion}


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """Factory ``make_batch(seed=0)``: a new batch of three rows for the tiny models: prompt 0-3, completion 4-6
    closed by EOS (id 5) at 6, rows 1 and 2 right-padded."""
    return _make_batch


@pytest.fixture(scope="session")
def catalogue() -> list[dict]:
    return json.loads((FIXTURES / "catalogue.json").read_text())


@pytest.fixture(scope="session")
def fixture_model() -> Callable[[str], tuple]:
    """Factory ``fixture_model(name, trust_remote_code=False) -> (model, tokenizer)``: a committed fixture model (or
    adapter on its base) by its path under fixtures/, e.g. "models/tiny-llama-chat", loaded once per session (a
    model with its own code, such as "models/tiny-mixtral-unmasked-aux", only with ``trust_remote_code``).

    Shared: a test must leave it as it found it (which is what every gradscope pass promises).
    """
    from gradscope.model.load import load_model_and_tokenizer

    loaded: dict[tuple[str, bool], tuple] = {}

    def load(name: str, trust_remote_code: bool = False) -> tuple:
        key = (name, trust_remote_code)
        if key not in loaded:
            loaded[key] = load_model_and_tokenizer(FIXTURES / name, trust_remote_code=trust_remote_code)
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def fixture_batch() -> Callable[[str], dict[str, torch.Tensor]]:
    """Factory ``fixture_batch(name)``: a committed fixture batch read afresh, e.g. "llama_clean"."""
    from gradscope.data.load import read_safetensors

    def read(name: str) -> dict[str, torch.Tensor]:
        return read_safetensors(FIXTURES / "batches" / f"{name}.safetensors")

    return read


@pytest.fixture(scope="session")
def fixture_tokenizer_dirs() -> dict[str, Path]:
    """The directory of each tokenizer ``fixture_tokenizer`` loads, by name: chatml, gpt2, llama3, mistral."""
    return dict(TOKENIZERS)


@pytest.fixture(scope="session")
def fixture_tokenizer() -> Callable[[str], object]:
    """Factory ``fixture_tokenizer(name)``: the fixture tokenizer "chatml", "llama3", "mistral" or "gpt2", loaded once
    per session (shared: do not change it)."""
    from transformers import AutoTokenizer

    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            loaded[name] = AutoTokenizer.from_pretrained(TOKENIZERS[name])
        return loaded[name]

    return load


# The synthetic token rows of the scan and stream tests.
EOS, PAD_ID = 2, 0


def _random_rows(n: int, seed: int, roles: bool) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [_random_row(rng, roles) for _ in range(n)]


def _random_row(rng: np.random.Generator, roles: bool) -> dict[str, np.ndarray]:
    t = int(rng.integers(2, 24))
    ids = rng.integers(3, 12, t)  # a small vocabulary: tokens repeat, so shifted labels sometimes match
    completion = np.zeros(t, dtype=np.int64)
    for _ in range(int(rng.integers(0, 3))):
        start = int(rng.integers(0, t))
        stop = min(t, start + int(rng.integers(1, 6)))
        completion[start:stop] = 1
        if rng.random() < 0.7:  # the span's closing token: inside the span or right after it
            ids[min(t - 1, stop - int(rng.integers(0, 2)))] = EOS
    ids[rng.random(t) < 0.05] = EOS
    attention = np.ones(t, dtype=np.int64)
    pads = int(rng.integers(0, 4)) if t > 4 else 0
    if pads:
        attention[-pads:] = 0
        ids[-pads:] = EOS if rng.random() < 0.5 else PAD_ID
        completion[-pads:] = 0
    if rng.random() < 0.05:  # left padding that the mask calls real (or, rarely, masked)
        lead = int(rng.integers(1, 4))
        ids = np.concatenate([np.full(lead, PAD_ID), ids])
        attention = np.concatenate([np.full(lead, int(rng.random() < 0.8)), attention])
        completion = np.concatenate([np.zeros(lead, dtype=np.int64), completion])
    labels = np.where(completion == 1, ids, -100)
    labels = _corrupt(rng, labels, ids, attention)
    row = {"input_ids": ids, "labels": labels, "attention_mask": attention}
    if roles:
        row["completion_mask"] = completion
        row["completion_cut"] = np.array([int(rng.integers(1, 9)) if rng.random() < 0.2 else 0])  # raw rows truncated
    return row


def _corrupt(rng: np.random.Generator, labels: np.ndarray, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
    kind = rng.integers(0, 7)
    labels = labels.copy()
    if kind == 0:
        labels = np.where(attention == 1, ids, -100)  # prompt trained
    elif kind == 1:
        labels[attention == 0] = ids[attention == 0]  # padding trained
    elif kind == 2:
        labels[:-1] = labels[1:].copy()  # pre-shifted
    elif kind == 3:
        labels[:] = -100
    elif kind == 4:
        labels[rng.random(len(labels)) < 0.3] = -100  # holes, the end token among them sometimes
    elif kind == 5:
        flip = rng.random(len(labels)) < 0.2
        labels[flip] = ids[flip]
    return labels


@pytest.fixture(scope="session")
def random_rows() -> Callable[..., list[dict[str, np.ndarray]]]:
    """Factory ``random_rows(n, seed, roles)``: rows built to hit every rule of the scan (EOS 2, pad 0): completion
    spans closed (or not) by EOS, padding that is EOS or not, and labels corrupted in every way a pipeline corrupts
    them. With ``roles`` each row has a completion_mask and a completion_cut. Seeded; new arrays each call."""
    return _random_rows


STREAM_COLUMNS = ("input_ids", "labels", "attention_mask", "completion_mask")


@pytest.fixture(scope="session")
def stream_rows(random_rows) -> list[dict[str, np.ndarray]]:
    """The 300 rows (``random_rows(300, seed=5, roles=True)``) that ``write_stream_rows`` writes in every format."""
    return random_rows(300, seed=5, roles=True)


@pytest.fixture(scope="session")
def write_stream_rows(stream_rows) -> Callable[[Path, str], Path]:
    """Factory ``write_stream_rows(folder, fmt) -> path``: ``stream_rows`` (their input_ids, labels, attention_mask and
    completion_mask) written in a format scan reads: "jsonl", "json array", "parquet", "arrow" or "datasets"."""

    def table():
        import pyarrow as pa

        return pa.table(
            {k: pa.array([r[k].tolist() for r in stream_rows], pa.list_(pa.int32())) for k in STREAM_COLUMNS}
        )

    def write(tmp: Path, fmt: str) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if fmt == "jsonl":
            path = tmp / "rows.jsonl"
            path.write_text("".join(json.dumps({k: r[k].tolist() for k in STREAM_COLUMNS}) + "\n" for r in stream_rows))
        elif fmt == "json array":  # as check reads .json
            path = tmp / "rows.json"
            path.write_text(json.dumps([{k: r[k].tolist() for k in STREAM_COLUMNS} for r in stream_rows], indent=1))
        elif fmt == "parquet":
            path = tmp / "rows.parquet"
            pq.write_table(table(), path, row_group_size=128)
        elif fmt == "arrow":
            path = tmp / "rows.arrow"
            with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table().schema) as writer:
                writer.write_table(table(), max_chunksize=100)
        else:
            import datasets

            path = tmp / "saved"
            datasets.Dataset(table()).save_to_disk(str(path), num_shards=2)
        return path

    return write


def _scan_summary(report) -> tuple:
    return (
        report.rows,
        report.tokens,
        report.trained_tokens,
        report.checks,
        report.distributions,
        report.worst_rows,
        [vars(f) for f in report.findings],
    )


@pytest.fixture(scope="session")
def scan_summary() -> Callable[[object], tuple]:
    """Function ``scan_summary(report) -> tuple``: what two scans of the same rows must agree on (counts, checks,
    distributions, worst rows, findings), whatever format or chunking they read."""
    return _scan_summary


@pytest.fixture(scope="session")
def stream_reference(tmp_path_factory, write_stream_rows) -> tuple:
    """``scan_summary`` of one plain scan of ``stream_rows`` from JSON lines (end token 2): what every other way of
    reading them must give."""
    from gradscope.scan.dataset import scan

    return _scan_summary(scan(write_stream_rows(tmp_path_factory.mktemp("ref"), "jsonl"), end_token_ids=[2]))


@pytest.fixture(scope="session")
def run_case(fixture_model, fixtures_dir):
    """``run_case(case, **options)``: a catalogue case as the CLI runs it: every probe on, with the case's --loss and
    --accumulate; ``options`` go to ``check_batches`` (e.g. ``depth``)."""

    def run(case: dict, **options) -> gradscope.Report:
        model, tokenizer = fixture_model(case["model"], case.get("trust_remote_code", False))
        batches = load_batches(
            fixtures_dir / case["data"], pad_token_id=tokenizer.pad_token_id, batch_size=case.get("batch_size", 1)
        )
        loss_fn = load_loss_fn(str(fixtures_dir / case["loss"])) if "loss" in case else None
        roles_from = fixtures_dir / case["roles_from"] if "roles_from" in case else None
        return gradscope.check_batches(
            model,
            batches,
            tokenizer=tokenizer,
            loss_fn=loss_fn,
            accumulate=case.get("accumulate"),
            response_template=case.get("response_template"),
            roles_from=roles_from,
            **options,
        )

    return run


@pytest.fixture(scope="session")
def catalogue_reports(run_case, catalogue):
    """Reports of the catalogue's cases by name, each run once and shared (leave them as you found them)."""
    cases = {c["name"]: c for c in catalogue}

    class Reports(dict):
        def __missing__(self, name: str):
            self[name] = run_case(cases[name])
            return self[name]

    return Reports()


@pytest.fixture(scope="session")
def html_page():
    """``html_page(text)``: an HTML report parsed into what the tests read (tokens per sample, ids, findings)."""
    return Page


@pytest.fixture(scope="session")
def junit_schema(fixtures_dir):
    """The JUnit XML schema (fixtures/junit.xsd) the CI readers accept."""
    import xmlschema

    return xmlschema.XMLSchema(fixtures_dir / "junit.xsd")


_DEFERRED = re.compile(r'</div><script type="text/html" class="gs-strip">(.*?)</script>', re.S)
_VOID = {"br", "input", "meta", "img", "hr", "link", "source", "col", "wbr"}


class Page(HTMLParser):
    """What the tests read off a page: token spans per sample, ids, finding rows and their links, JSON blocks."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.tokens: dict[int, list[dict]] = {}
        self.ids: dict[str, dict[str, str | None]] = {}
        self.findings: list[dict] = []
        self.json: dict[int, dict] = {}
        self.details: dict[int, dict[str, str | None]] = {}
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._text: list[str] | None = None
        self.deferred = len(_DEFERRED.findall(text))
        self.feed(_DEFERRED.sub(r"\1</div>", text))  # a closed sample's spans, as the page's script inserts them
        self.close()
        assert not self.stack, f"unclosed elements: {[t for t, _ in self.stack]}"

    def _sample(self) -> int | None:
        for tag, attrs in reversed(self.stack):
            if tag == "details" and "data-sample" in attrs:
                return int(attrs["data-sample"])
        return None

    def _inside(self, tag: str, cls: str | None = None) -> dict | None:
        for t, attrs in reversed(self.stack):
            if t == tag and (cls is None or cls in (attrs.get("class") or "").split()):
                return attrs
        return None

    def handle_starttag(self, tag, attrs_list):
        attrs = dict(attrs_list)
        self.elements.append((tag, attrs))
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids[attrs["id"]] = attrs
        if tag == "details" and "data-sample" in attrs:
            self.details[int(attrs["data-sample"])] = attrs
        if tag == "tr" and "data-check" in attrs and self._inside("section", "findings"):
            self.findings.append({**attrs, "links": []})
        if tag == "a" and self.findings and self._inside("tr"):
            self.findings[-1]["links"].append(attrs)
        if tag == "span" and "data-pos" in attrs and self._inside("div", "strip"):
            self.tokens.setdefault(self._sample(), []).append({**attrs, "text": ""})
            self._text = []
        if tag == "script" and attrs.get("class") == "gs-sample":
            self._text = []
        if tag not in _VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1:] or 'nothing'}"
        _, attrs = self.stack.pop()
        if tag == "span" and "data-pos" in attrs and self._text is not None and self._inside("div", "strip"):
            self.tokens[self._sample()][-1]["text"] = "".join(self._text)
            self._text = None
        if tag == "script" and attrs.get("class") == "gs-sample":
            self.json[self._sample()] = json.loads("".join(self._text))
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
