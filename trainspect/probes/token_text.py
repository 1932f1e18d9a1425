"""Turning token ids into text a person can read, without ever failing on odd bytes.

Model text is untrusted: it is kept as it is (escaping happens where it is
rendered), but a token that is only part of a UTF-8 character (common with
byte-level BPE) is shown as its bytes, `<0xE2><0x80>`, instead of a replacement
character or an exception. Ids without a tokenizer are shown as `#1234`; ids the
caller named (an audio stream's BOS, EOS, pad) are shown by their names.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("trainspect.samples")


@functools.lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character table used by byte-level BPE."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _as_bytes_text(raw: bytes) -> str:
    """Decode what is valid UTF-8 and show the rest as <0xNN>."""
    out, i = [], 0
    while i < len(raw):
        for width in (1, 2, 3, 4):
            try:
                out.append(raw[i:i + width].decode("utf-8"))
                i += width
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
    return "".join(out)


def _vocab_size(tokenizer: Any) -> float:
    try:
        return len(tokenizer)
    except TypeError:
        return float("inf")  # no size known: let decode decide


class TokenNamer:
    """Names token ids with a tokenizer (any HF-style object with `decode`) or plain ids."""

    def __init__(self, tokenizer: Any = None, names: dict[int, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.names = dict(names or {})
        self._cache: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id in self.names:
            return self.names[token_id]
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._decode_one(token_id)
        return cached

    def _decode_one(self, token_id: int) -> str:
        if self.tokenizer is None or not 0 <= token_id < _vocab_size(self.tokenizer):
            return f"#{token_id}"
        try:
            text = self.tokenizer.decode([token_id])
        except Exception as err:  # an id outside the tokenizer: show the id, do not fail
            log.debug("trainspect: cannot decode token %d: %s", token_id, err)
            return f"#{token_id}"
        if "\ufffd" not in text:
            return text
        raw = self._raw_bytes(token_id)
        return _as_bytes_text(raw) if raw is not None else text

    def _raw_bytes(self, token_id: int) -> bytes | None:
        """The bytes behind a byte-level BPE token, if the tokenizer is one."""
        convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        if convert is None:
            return None
        try:
            piece = convert(token_id)
        except Exception as err:
            log.debug("trainspect: no token string for %d: %s", token_id, err)
            return None
        if not isinstance(piece, str):
            return None
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        table = _byte_level_decoder()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        return None

    def text(self, token_ids: list[int], limit: int = 400) -> str:
        """Decode a sequence (a context), keeping its last whole tokens that fit in `limit`
        characters: the cut falls between tokens (and never inside a character), and "…"
        marks it."""
        if not token_ids:
            return ""
        ids = list(token_ids)
        whole = self._sequence(ids)
        if len(whole) <= limit:
            return whole
        # the first start whose decoded rest fits: the rest only shrinks as start grows
        lo, hi = 1, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._sequence(ids[mid:])) <= limit:
                hi = mid
            else:
                lo = mid + 1
        rest = self._sequence(ids[lo:])
        while rest.startswith("\ufffd") and lo < len(ids) - 1:  # a character's tail bytes
            lo += 1
            rest = self._sequence(ids[lo:])
        return "…" + rest

    def _sequence(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(self.token(t) for t in token_ids)
        try:
            return str(self.tokenizer.decode(token_ids))
        except Exception as err:  # an odd id: name the tokens one by one instead
            log.debug("trainspect: cannot decode a context: %s", err)
            return "".join(self.token(t) for t in token_ids)
