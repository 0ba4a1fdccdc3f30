"""Text out of tokens as they come: incremental detokenisation and OpenAI's ``stop`` strings.

Decoding one token alone loses what depends on its neighbours (SentencePiece's leading spaces, a character split
over several byte tokens), so each new token is decoded in a short window that starts a few tokens back (at first,
in the prompt's last tokens) and only what the window adds to the text already out is released; a window ending in
an incomplete character (U+FFFD) waits for the next token (the method of text-generation-inference and vLLM).
transformers' ``TextStreamer`` holds whole words back instead, which would leave a token's logprob without its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CONTEXT = 5  # prompt tokens before the first generated one, so that its leading space comes out right
_INCOMPLETE = "\ufffd"


class TextStream:
    """One generation's text, piece by piece; cut before the first ``stop`` string, which ends it (``stopped``)."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._ids = [int(i) for i in prompt_ids[-_CONTEXT:]]
        self._prefix, self._read = 0, len(self._ids)  # window start; tokens up to _read are in ``text``
        self.text = ""  # everything decoded so far, held-back text included
        self._sent = 0  # characters of ``text`` already released
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a generated token; return the text it releases ('' while held back or after a stop string)."""
        if self.stopped:
            return ""
        self._ids.append(int(token_id))
        before = self._decode(self._ids[self._prefix : self._read])
        window = self._decode(self._ids[self._prefix :])
        if len(window) > len(before) and not window.endswith(_INCOMPLETE):
            self.text += window[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended: the text still held back (an incomplete character comes out as U+FFFD)."""
        if not self.stopped and self._read < len(self._ids):
            before = self._decode(self._ids[self._prefix : self._read])
            self.text += self._decode(self._ids[self._prefix :])[len(before) :]
            self._read = len(self._ids)
        return self._release(final=True)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            # A stop string cannot start in released text: the text that could begin one is held back below.
            found = [at for s in self.stop if (at := self.text.find(s, self._sent)) >= 0]
            if found:
                self.text, self.stopped, final = self.text[: min(found)], True, True
        end = len(self.text) if final else len(self.text) - self._held()
        piece, self._sent = self.text[self._sent : end], max(self._sent, end)
        return piece

    def _held(self) -> int:
        """Characters at the end of the text that are the start of some stop string (they may become one)."""
        for size in range(min(max(map(len, self.stop), default=1) - 1, len(self.text) - self._sent), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0
