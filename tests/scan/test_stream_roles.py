"""The token-stream role reader against the per-row reader it stands for (``TemplateMarkers.roles``,
``_ResponseTemplate``, ``RowRoles``), on random rows dense with markers, end tokens, glue, lead, tail and padding."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gradscope.constants import COMPLETION, PROMPT, UNKNOWN
from gradscope.data.batch import held_tokens
from gradscope.data.chunks import Chunk
from gradscope.data.templates import TemplateMarkers
from gradscope.data.token_roles import RoleSources, RowRoles, _ResponseTemplate
from gradscope.model.load import load_tokenizer
from gradscope.scan import stream_roles
from gradscope.scan.roles import held_mask, token_roles
from gradscope.scan.stream_roles import ChunkRoles, Stream, marker_roles, response_template_roles

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ALPHABET = 7  # few distinct ids: markers, ends and glue occur often, overlap, and sit at row edges


def _rows(rng: np.random.Generator, count: int = 60) -> list[list[int]]:
    return [rng.integers(0, ALPHABET, int(rng.integers(0, 28))).tolist() for _ in range(count)]


def _stream(rows: list[list[int]]) -> Stream:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.array([t for r in rows for t in r], dtype=np.int64)
    return Stream.of(ids, np.concatenate([[0], np.cumsum(lengths)[:-1]]), np.ones(len(ids), dtype=bool))


def _pattern(rng: np.random.Generator, longest: int) -> list[int]:
    return rng.integers(0, ALPHABET, int(rng.integers(1, longest + 1))).tolist()


def _markers(rng: np.random.Generator) -> TemplateMarkers:
    responses = [_pattern(rng, 3) for _ in range(int(rng.integers(1, 4)))]
    ends = frozenset(rng.choice(ALPHABET, int(rng.integers(0, 3)), replace=False).tolist())
    maybe = lambda longest: _pattern(rng, longest) if rng.random() < 0.6 else []  # noqa: E731
    return TemplateMarkers(responses, maybe(2), ends, tail=maybe(2), lead=maybe(2))


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("train_on", ["all-assistant", "last-assistant"])
def test_marker_roles_equal_the_per_row_reading(seed, train_on):
    rng = np.random.default_rng(seed)
    markers, rows = _markers(rng), _rows(rng)
    stream = _stream(rows)
    roles, holds = marker_roles(stream, markers, train_on)
    for r, ids in enumerate(rows):
        expected = markers.roles(ids, train_on)
        assert roles[stream.begin[r] : stream.end[r]].tolist() == expected, (markers, ids)
        assert holds[r] == (COMPLETION in expected)


class _Tokens:
    """Tokenizes the test's template texts: "a b" -> [a, b]."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


@pytest.mark.parametrize("seed", range(40))
def test_response_template_roles_equal_the_per_row_reading(seed):
    rng = np.random.default_rng(1000 + seed)
    response, instruction = _pattern(rng, 3), (_pattern(rng, 2) if rng.random() < 0.6 else [])
    ends = frozenset(rng.choice(ALPHABET, int(rng.integers(0, 3)), replace=False).tolist())
    text = lambda ids: " ".join(map(str, ids)) or None  # noqa: E731
    reader = _ResponseTemplate(_Tokens(), RoleSources(text(response), text(instruction)), ends)
    rows = _rows(rng)
    stream = _stream(rows)
    roles, holds = response_template_roles(stream, response, instruction, ends)
    for r, ids in enumerate(rows):
        expected, _ = reader(ids, r)
        assert holds[r] == (expected is not None), ids
        if expected is not None:
            assert roles[stream.begin[r] : stream.end[r]].tolist() == expected, (response, instruction, ids)


def _chunk(rng: np.random.Generator, pieces: list[int]) -> Chunk:
    """Rows of fixture-tokenizer ids drawn from ``pieces`` (the chat marker first, end, glue tokens), some padded."""
    rows = [rng.choice(pieces, int(rng.integers(1, 40))) for _ in range(80)]
    rows[0] = np.array([pieces[-1], *pieces[:3]])  # a row that ends with the chat marker: an empty turn
    ids = np.concatenate(rows).astype(np.int64)
    attention = (rng.random(len(ids)) > 0.1).astype(np.int8)
    starts = np.concatenate([[0], np.cumsum([len(r) for r in rows])[:-1]]).astype(np.int64)
    return Chunk(first_row=5, starts=starts, input_ids=ids, labels=ids.copy(), attention=attention)


def _row_reference(chunk: Chunk, read: RowRoles, ends: frozenset[int]) -> Chunk:
    """What ``check`` reads: each row alone, its held tokens from ``data.batch.held_tokens`` (torch), read by the
    per-row reader."""
    completion, known = np.zeros(len(chunk.input_ids), dtype=np.int8), np.zeros(chunk.rows, dtype=bool)
    reasons: dict[str, None] = {}
    bounds = [*chunk.starts.tolist(), len(chunk.input_ids)]
    for r, (begin, end) in enumerate(itertools.pairwise(bounds)):
        row = {
            "input_ids": torch.from_numpy(chunk.input_ids[begin:end])[None],
            "attention_mask": torch.from_numpy(chunk.attention[begin:end].astype(np.int64))[None],
        }
        positions = begin + np.flatnonzero(held_tokens(row, ends)[0].numpy())
        _, roles, reason = read(chunk.input_ids[positions].tolist(), chunk.first_row + r)
        if roles is None:
            reasons[reason or "no role source"] = None
            continue
        known[r] = True
        codes = np.asarray(roles)
        completion[positions] = np.where(codes == COMPLETION, 1, np.where(codes == PROMPT, 0, -1))
    return replace(chunk, completion=completion, known=known, role_reasons=tuple(reasons))


def test_held_mask_is_held_tokens_row_by_row():
    """The chunk's held tokens (real ones, and end tokens a mask hides between real ones) are what
    ``data.batch.held_tokens`` gives each row."""
    rng = np.random.default_rng(1)
    chunk = _chunk(rng, [5, 2, 2, 9, 11, 2])
    ends = frozenset({2})
    expected = np.concatenate(
        [
            held_tokens(
                {
                    "input_ids": torch.from_numpy(chunk.input_ids[a:b])[None],
                    "attention_mask": torch.from_numpy(chunk.attention[a:b].astype(np.int64))[None],
                },
                ends,
            )[0].numpy()
            for a, b in itertools.pairwise([*chunk.starts.tolist(), len(chunk.input_ids)])
        ]
    )
    got = held_mask(chunk, ends)
    assert np.array_equal(got, expected) and (got & (chunk.attention == 0)).any()  # hidden end tokens held


@pytest.mark.parametrize("lead", [False, True], ids=["", "lead"])
@pytest.mark.parametrize("response_template", [None, "Answer:"])
@pytest.mark.parametrize("train_on", ["all-assistant", "last-assistant"])
def test_a_chunk_reads_as_the_row_reader_reads_each_row(response_template, train_on, lead, monkeypatch):
    tokenizer = load_tokenizer(FIXTURES / "models/tiny-llama-chat")
    ends = frozenset({tokenizer.eos_token_id})
    sources = RoleSources(
        response_template=response_template,
        instruction_template="Question:" if response_template else None,
        train_on=train_on,
    )
    read = ChunkRoles(tokenizer, ends, sources)
    assert read.vectorized and read.markers is not None
    if lead:  # the markers both readers share (learnt once per tokenizer): the marker's last token not judged
        monkeypatch.setattr(read.markers, "lead", read.markers.responses[0][-1:])
    template = [
        read.markers.responses[0],
        read.markers.glue,
        [tokenizer.eos_token_id],
        read.response or [],
        read.instruction,
        [7, 8, 9],
    ]
    rng = np.random.default_rng(0)
    for _ in range(5):
        chunk = _chunk(rng, [t for piece in template for t in piece])
        fast, slow = token_roles(chunk, read), _row_reference(chunk, RowRoles(tokenizer, ends, sources), ends)
        assert 0 < fast.known.sum() < chunk.rows  # rows read and rows not read, both
        assert np.array_equal(fast.known, slow.known) and np.array_equal(fast.completion, slow.completion)
        assert fast.role_reasons == slow.role_reasons


def test_markers_with_a_field_it_does_not_read_go_row_by_row(monkeypatch):
    """A description the stream reader does not know is read by the per-row reader, with the same result."""
    tokenizer = load_tokenizer(FIXTURES / "models/tiny-llama-chat")
    ends = frozenset({tokenizer.eos_token_id})
    read = ChunkRoles(tokenizer, ends, RoleSources())
    monkeypatch.setattr(stream_roles, "MARKER_FIELDS", frozenset({"responses", "end_token_ids"}))
    unknown = ChunkRoles(tokenizer, ends, RoleSources())
    assert read.vectorized and not unknown.vectorized  # glue is set, and now not a field it reads
    chunk = _chunk(np.random.default_rng(1), [1, 290, 202, 2, 7, 8])
    assert np.array_equal(token_roles(chunk, unknown).completion, token_roles(chunk, read).completion)


# --- painting spans and their lead and glue: against the whole-stream key rule they replace -----------------------


def keyed_roles(n: int, begin: np.ndarray, stop: np.ndarray, writes: list) -> np.ndarray:
    """The reference: a key at every position, 3 * span + (1 completion, 2 lead, 3 glue), the highest wins."""
    keep = np.flatnonzero(stop > begin)
    marks = np.zeros(n + 1, np.int64)
    marks[begin[keep]] += keep + 1
    marks[stop[keep]] -= keep + 1
    key = 3 * np.cumsum(marks[:n]) - 2
    key[key < 0] = 0
    for pattern, at, ok, write in writes:
        for j in range(len(pattern)):
            np.maximum.at(key, at[ok] + j, 3 * np.flatnonzero(ok) + write)
    roles = np.where(key % 3 == 1, np.int8(COMPLETION), np.int8(UNKNOWN))
    roles[key == 0] = PROMPT
    return roles


def random_spans(rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, list]:
    """Disjoint sorted spans (some empty, some touching), a lead before and a glue after some of them, overlapping
    their neighbours."""
    n = int(rng.integers(1, 40))
    cuts = np.sort(rng.integers(0, n + 1, 2 * int(rng.integers(0, 8))))  # begin <= stop <= the next begin
    begin, stop = cuts[0::2], cuts[1::2]
    distinct = np.append(begin[1:] != begin[:-1], True)[: len(begin)]  # an empty span at the next one's begin: dropped
    begin, stop = begin[distinct], stop[distinct]
    writes = []
    for write, longest in ((2, 3), (3, 5)):  # lead, then glue, as _unjudged lists them
        k = int(rng.integers(1, longest + 1))
        at = begin - k if write == 2 else stop
        ok = (rng.random(len(begin)) < 0.7) & (at >= 0) & (at + k <= n)
        if rng.random() < 0.8:
            writes.append(([0] * k, at, ok, write))
    return n, begin, stop, writes


def test_painted_spans_and_their_lead_and_glue_equal_the_key_rule():
    rng = np.random.default_rng(3)
    for _ in range(5000):
        n, begin, stop, writes = random_spans(rng)
        roles = np.where(stream_roles._painted(n, begin, stop), np.int8(COMPLETION), np.int8(PROMPT))
        stream_roles._overwrite(roles, begin, stop, writes)
        assert roles.tolist() == keyed_roles(n, begin, stop, writes).tolist(), (n, begin, stop, writes)


def test_a_later_lead_wins_over_an_earlier_glue_inside_a_span():
    """Spans [0, 2), [3, 5), [7, 9); span 0's glue covers 2-4, span 2's lead 4-6: at 4 the lead is written last."""
    begin, stop = np.array([0, 3, 7]), np.array([2, 5, 9])
    writes = [([0] * 3, np.array([0, 0, 4]), np.array([False, False, True]), 2)]
    writes.append(([0] * 3, np.array([2, 0, 0]), np.array([True, False, False]), 3))
    roles = np.where(stream_roles._painted(10, begin, stop), np.int8(COMPLETION), np.int8(PROMPT))
    stream_roles._overwrite(roles, begin, stop, writes)
    c, u, p = COMPLETION, UNKNOWN, PROMPT
    assert roles.tolist() == [c, c, u, c, u, u, u, c, c, p]


def test_the_role_codes_are_the_completion_masks_values():
    """The stream reader hands its codes over as the completion mask (1 completion, 0 prompt, -1 neither) and paints
    spans as booleans read as int8: both rest on these values."""
    assert (COMPLETION, PROMPT, UNKNOWN) == (1, 0, -1)
    roles = stream_roles._span_codes(6, np.array([1, 4]), np.array([3, 5]))
    assert roles.dtype == np.int8 and roles.tolist() == [PROMPT, COMPLETION, COMPLETION, PROMPT, COMPLETION, PROMPT]
