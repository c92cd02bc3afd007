"""Incremental detokenization with stop sequences, for token-by-token streaming."""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalText", "StreamedText"]

_REPLACEMENT = "\ufffd"


class IncrementalText:
    """Turns a growing list of token ids into text deltas.

    Text is held back while it ends in an incomplete UTF-8 sequence, and while its tail could
    still become a stop sequence, so a stop string is never streamed before it is cut.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tok = tokenizer
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self._text = ""  # all text decoded so far (before any stop cut)
        self._emitted = 0  # characters of _text already returned
        self.stopped = False

    def _decode(self) -> str:
        return self._tok.decode(self.token_ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to show (maybe empty)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        text = self._decode()
        if text.endswith(_REPLACEMENT):
            return ""  # wait for the rest of a multi-byte character
        self._text = text
        if self._stop:
            search_from = max(0, self._emitted - self._holdback)
            cut = min(
                (i for i in (text.find(s, search_from) for s in self._stop) if i >= 0),
                default=-1,
            )
            if cut >= 0:
                self.stopped = True
                delta = text[self._emitted : cut]
                self._emitted = cut
                self._text = text[:cut]
                return delta
            safe = max(self._emitted, len(text) - self._holdback)
        else:
            safe = len(text)
        delta = text[self._emitted : safe]
        self._emitted = safe
        return delta

    def flush(self) -> str:
        """At the end: return whatever was held back."""
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta

    @property
    def text(self) -> str:
        return self._text


class StreamedText:
    """Text pieces (an upstream's deltas) to safe deltas: like `IncrementalText`, a tail that
    could still become a stop sequence is held back, and the text ends before a stop string."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._text = self._text + piece
        if not self._stop:
            delta, self._emitted = text[self._emitted :], len(text)
            return delta
        search_from = max(0, self._emitted - self._holdback)
        cut = min(
            (i for i in (text.find(s, search_from) for s in self._stop) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            delta, self._emitted, self._text = text[self._emitted : cut], cut, text[:cut]
            return delta
        safe = max(self._emitted, len(text) - self._holdback)
        delta, self._emitted = text[self._emitted : safe], safe
        return delta

    def flush(self) -> str:
        delta, self._emitted = self._text[self._emitted :], len(self._text)
        return delta
