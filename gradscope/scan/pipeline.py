"""The scan's pipeline over a source: read chunks, roles from the tokens, prefills, verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gradscope.data.chunks import Chunk
from gradscope.data.stream import Part, Source, chunks
from gradscope.scan.roles import with_prefills, with_token_roles
from gradscope.scan.stream_roles import ChunkRoles
from gradscope.scan.verdicts import Verdicts, verdicts


@dataclass(frozen=True)
class Job:
    """What reading and checking a source takes: its chunks read, rows without a role mask given the roles ``read``
    finds in their tokens, prefills marked, every chunk checked. One process runs it over the whole source;
    ``scan --num-proc`` runs it over each part (``gradscope.scan.parallel``)."""

    source: Source
    end_token_ids: frozenset[int]
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    bos_added: bool = False
    vocab_size: int | None = None
    read: ChunkRoles | None = None  # roles for rows without a role mask (its stream reader: whole chunks at once)
    prefills: tuple[tuple[int, ...], ...] = ()
    examples: int = 3  # the accumulator's: which rows it may show
    worst: int = 10

    def checked(self, part: Part | None = None) -> Iterator[tuple[Chunk, Verdicts]]:
        """The chunks of the source (or of one part of it) with their verdicts: the pipeline of one process."""
        read_chunks: Iterable[Chunk] = chunks(self.source, self.vocab_size, part)
        if self.read is not None and self.read.available:
            read_chunks = with_token_roles(read_chunks, self.read)
        for chunk in with_prefills(read_chunks, self.prefills):
            yield chunk, verdicts(chunk, self.end_token_ids, self.pad_token_id, self.bos_token_id, self.bos_added)
