"""A response or instruction template found as tokens in one tokenized text row (``text`` rows with
``response_template``), or a precise error saying why it is not there."""

from __future__ import annotations

from collections.abc import Sequence

from gradscope.data.encoding import Encoder
from gradscope.data.rows import find_subsequence
from gradscope.errors import DataError
from gradscope.tokenizer import Tokenizer


def show_tokens(ids: Sequence[int], tokenizer: Tokenizer) -> str:
    """Token ids with their texts, for an error message: ``[12 'Answer', 25 ':']``."""
    return "[" + ", ".join(f"{i} {tokenizer.decode([i])!r}" for i in ids) + "]"


class TemplateFinder:
    """Finds a template string as tokens in one tokenized text, or says precisely why it is not there."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        encoder: Encoder,
        ids: list[int],
        offsets: list[tuple[int, int]],
        text: str,
        where: dict,
    ):
        self.tok, self.encoder, self.ids, self.offsets, self.text, self.where = (
            tokenizer,
            encoder,
            ids,
            offsets,
            text,
            where,
        )

    def __call__(self, template: str, name: str) -> list[int]:
        """Token positions where the template starts; every occurrence in the text must be found as tokens."""
        alone = self.encoder.ids(template)
        found = find_subsequence(self.ids, alone)
        spans = [(self.offsets[p][0], self.offsets[p + len(alone) - 1][1]) for p in found]
        chars = occurrences(self.text, template)
        if not chars and name == "response":
            raise DataError(
                f"the response template {template!r} does not occur in the text {self.text[:80]!r}",
                **self.where,
                hint="check `response_template` against the data",
            )
        missed = [c for c in chars if not any(a < c + len(template) and b > c for a, b in spans)]
        if missed:
            raise self._not_in_tokens(template, alone, missed[0], name)
        return found

    def _not_in_tokens(self, template: str, alone: list[int], begin: int, name: str) -> DataError:
        end = begin + len(template)
        context = [i for i, (a, b) in zip(self.ids, self.offsets, strict=True) if a < end and b > begin]
        return DataError(
            f"the {name} template {template!r} is in the text but not in its tokens: alone it tokenizes as "
            f"{show_tokens(alone, self.tok)}, in context as {show_tokens(context, self.tok)} "
            f"(text {self.text[max(0, begin - 30) : end + 30]!r})",
            **self.where,
            hint=f"give --{name}-template with the text that precedes it (e.g. a leading newline or space) so that "
            "it tokenizes as in context",
        )


def occurrences(text: str, pattern: str) -> list[int]:
    out, at = [], text.find(pattern)
    while at >= 0:
        out.append(at)
        at = text.find(pattern, at + len(pattern))
    return out
