"""Tokenizers: a built-in byte-level one (no files, for models trained from scratch) and HF's."""

from __future__ import annotations

import os
from typing import Protocol

from silentstar_jax.errors import UserError


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids) -> str: ...
    def token_str(self, token_id: int) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; then <|endoftext|> (256) and <|pad|> (257). Vocab padded to 260."""

    name = "byte"
    eos_id = 256
    pad_id = 257
    vocab_size = 260
    _special = {256: "<|endoftext|>", 257: "<|pad|>"}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id < 256:
            return bytes([token_id]).decode("utf-8", errors="backslashreplace")
        return self._special.get(token_id, f"<|{token_id}|>")


# Any one of these lets AutoTokenizer build a real vocabulary; without them it quietly returns a
# tokenizer that knows only its special tokens and encodes every prompt to nothing.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model")


class HFTokenizer:
    """transformers.AutoTokenizer from a local directory or a hub name."""

    def __init__(self, name_or_path: str):
        if os.path.isdir(name_or_path) and not any(
            os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES
        ):
            raise UserError(
                f"{name_or_path}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
                "copy them from the model's original directory"
            )
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(name_or_path)
        except Exception as e:  # noqa: BLE001 - HF raises many types; the user needs one line
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"could not load a tokenizer from {name_or_path!r}: {reason}") from None
        self.name = name_or_path
        self.vocab_size = len(self._tok)
        eos = self._tok.eos_token_id
        self.eos_id = int(eos) if eos is not None else 0
        pad = self._tok.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_str(self, token_id: int) -> str:
        return self._tok.decode([int(token_id)])


def load_tokenizer(spec: str) -> Tokenizer:
    """'byte' -> ByteTokenizer; anything else -> HF tokenizer (directory or hub name)."""
    if spec == "byte":
        return ByteTokenizer()
    if os.path.isdir(spec) or not os.path.exists(spec):
        return HFTokenizer(spec)
    raise UserError(f"tokenizer {spec!r} is neither 'byte' nor a tokenizer directory or hub name")


def tokenizer_for(cfg) -> Tokenizer:
    """The tokenizer a Config names (data.tokenizer; `auto`: the one beside model.init_from)."""
    spec = cfg.data.tokenizer
    if spec == "auto":
        if not cfg.model.init_from:
            raise UserError("data.tokenizer=auto needs model.init_from")
        from silentstar_jax.hf import resolve

        spec = resolve(cfg.model.init_from)
    return load_tokenizer(spec)
