"""A minimal BERT WordPiece tokenizer (torch-only examples): vocab.txt of a NEZHA/BERT checkpoint dir.

Lower-cases (Chinese NEZHA vocabularies are uncased), splits on whitespace and punctuation, puts
spaces around CJK characters, then greedy longest-match WordPiece with "##" continuations.
"""

from __future__ import annotations

import os
import unicodedata

import torch


class WordPieceTokenizer:
    def __init__(self, vocab_file: str, lowercase: bool = True, max_chars_per_word: int = 100):
        with open(vocab_file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        self.vocab = {tok: i for i, tok in enumerate(tokens) if tok}
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.vocab:
                raise ValueError(f"{vocab_file} has no {special} token")
        self.lowercase = lowercase
        self.max_chars_per_word = max_chars_per_word

    @classmethod
    def from_directory(cls, directory: str) -> "WordPieceTokenizer":
        path = os.path.join(directory, "vocab.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no vocab.txt in {directory!r}: pass token ids instead (--ids)")
        return cls(path)

    @staticmethod
    def _is_cjk(ch: str) -> bool:
        cp = ord(ch)
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
                or 0x20000 <= cp <= 0x2FA1F)

    def _basic(self, text: str) -> list[str]:
        if self.lowercase:
            text = unicodedata.normalize("NFD", text.lower())
            text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        out = []
        for ch in text:
            if self._is_cjk(ch) or unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum()
                                                                               and not ch.isspace()):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        return "".join(out).split()

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        tokens = ["[CLS]"] + [p for w in self._basic(text) for p in self._wordpiece(w)] + ["[SEP]"]
        if max_length is not None and len(tokens) > max_length:
            tokens = tokens[: max_length - 1] + ["[SEP]"]
        return [self.vocab[t] for t in tokens]

    def batch(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, L], right-padded with [PAD]."""
        encoded = [self.encode(t, max_length) for t in texts]
        width = max(len(e) for e in encoded)
        pad = self.vocab["[PAD]"]
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        return ids, mask
