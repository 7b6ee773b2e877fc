"""Tokenizers behind one small interface: our ChatGLM3 SentencePiece adapter, or any HF tokenizer.

It lives in ``dataprep`` because both sides need it: dataprep measures token lengths, and the
trainer (which may import dataprep, never the other way round) builds ids and labels with it.
The trainer's encoder needs only a handful of things from a tokenizer:
``encode(text)`` without special tokens, ``token_id(name)`` for the special/role tokens,
``eos_id``, ``pad_id``, ``vocab_size``, ``decode`` and ``convert_ids_to_tokens`` for humans.
:class:`Tokenizer` spells that out; :func:`load_tokenizer` picks an implementation.

Why our own ChatGLM3 adapter instead of THUDM's ``tokenization_chatglm.py``: that file is remote
code (``trust_remote_code=True`` runs arbitrary Python from a model folder) and not a fast
tokenizer. What it does for training is small and fully pinned by the golden files in
``../shared/golden/chatglm3``: a raw SentencePiece encode per call, plus nine special ids appended
after the 64,789 pieces.

>>> tok = load_tokenizer("../shared/corpora/chatglm3-6b-tokenizer")  # doctest: +SKIP
>>> tok.encode("\\n"), tok.token_id("<|user|>"), tok.eos_id, tok.pad_id  # doctest: +SKIP
([30910, 13], 64795, 2, 0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import sentencepiece as spm

__all__ = [
    "CHATGLM3_SPECIAL_TOKENS",
    "ChatGLM3Tokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
]

#: ChatGLM3's special tokens, in the order their ids follow the SentencePiece pieces
#: (``[MASK]`` = 64789 … ``<|observation|>`` = 64797 for the real model).
CHATGLM3_SPECIAL_TOKENS: tuple[str, ...] = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)

# The same token is spelled differently across the GLM family (ChatGLM3 ``sop``, GLM-4 ``<sop>``).
# Callers ask by either spelling; each implementation tries the other one if the first is unknown.
_ALIASES: dict[str, tuple[str, ...]] = {
    "sop": ("<sop>",),
    "<sop>": ("sop",),
    "eop": ("<eop>",),
    "<eop>": ("eop",),
}


class TokenizerError(ValueError):
    """A tokenizer could not be loaded, or a token name/id is not known to it."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the encoder and the trainer need from a tokenizer."""

    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_id(self, name: str) -> int:
        """Id of a (special) token given its text, e.g. ``"<|user|>"``; raises TokenizerError."""
        ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...


class ChatGLM3Tokenizer:
    """The ChatGLM3-6B tokenizer: a SentencePiece model plus nine appended special ids.

    ``encode`` is a raw SentencePiece encode, exactly as the official ``SPTokenizer.encode``: each
    call adds its own dummy-prefix ``▁`` (so ``encode(a) + encode(b) != encode(a + b)``),
    ``encode("") == []``, and characters outside the vocabulary fall back to byte pieces
    ``<0xNN>``. Special-token text inside ``text`` is ordinary text (never a special id).

    >>> tok = ChatGLM3Tokenizer("chatglm3-6b-tokenizer/tokenizer.model")  # doctest: +SKIP
    >>> tok.encode("你好"), tok.token_id("[gMASK]"), tok.vocab_size  # doctest: +SKIP
    ([36474, 54591], 64790, 64798)
    """

    name = "chatglm3-sentencepiece"

    def __init__(
        self, model_file: str | Path, special_tokens: Sequence[str] = CHATGLM3_SPECIAL_TOKENS
    ) -> None:
        self.model_file = Path(model_file)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(
                f"{self.model_file}: not a SentencePiece model ({e}); for a Hugging Face tokenizer "
                "folder use load_tokenizer(path, backend='hf')"
            ) from e
        self._init_tables(tuple(special_tokens))

    def _init_tables(self, special_tokens: tuple[str, ...]) -> None:
        self.special_tokens = special_tokens
        n = self._sp.get_piece_size()
        self.sp_vocab_size: int = n
        self._special_to_id = {t: n + i for i, t in enumerate(special_tokens)}
        self._id_to_special = {i: t for t, i in self._special_to_id.items()}
        self.vocab_size: int = n + len(special_tokens)
        # The official tokenizer uses SentencePiece's eos (</s> = 2) and pads with <unk> (0).
        self.eos_id: int = self._sp.eos_id()
        self.bos_id: int = self._sp.bos_id()
        self.unk_id: int = self._sp.unk_id()
        self.pad_id: int = self.unk_id

    # Pickling: datasets.map(num_proc=...) ships the tokenizer to worker processes and hashes it for
    # its cache fingerprint. The serialized model bytes make both work and keep the hash
    # independent of where the file lies.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "model_proto": self._sp.serialized_model_proto(),
            "special_tokens": self.special_tokens,
            "model_file": str(self.model_file),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model_file = Path(state["model_file"])
        self._sp = spm.SentencePieceProcessor(model_proto=state["model_proto"])
        self._init_tables(tuple(state["special_tokens"]))

    def encode(self, text: str) -> list[int]:
        """Raw SentencePiece ids of ``text`` (no specials, dummy prefix added per call)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """``[encode(t) for t in texts]`` in one call; SentencePiece runs it on C++ threads.

        >>> tok.encode_batch(["你好", ""]) == [tok.encode("你好"), []]  # doctest: +SKIP
        True
        """
        return self._sp.encode(list(texts), num_threads=num_threads)

    def token_id(self, name: str) -> int:
        """Id of a special token or SentencePiece piece, by its text.

        >>> tok.token_id("sop"), tok.token_id("<sop>"), tok.token_id("</s>")  # doctest: +SKIP
        (64792, 64792, 2)
        """
        for candidate in (name, *_ALIASES.get(name, ())):
            if candidate in self._special_to_id:
                return self._special_to_id[candidate]
            piece_id = self._sp.piece_to_id(candidate)
            # piece_to_id answers unk (0) for unknown pieces; only "<unk>" itself may map to it.
            if piece_id != self.unk_id or candidate == self._sp.id_to_piece(self.unk_id):
                return piece_id
        raise TokenizerError(
            f"unknown token {name!r}; special tokens are: {', '.join(self.special_tokens)}"
        )

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(
                f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})"
            )

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """SentencePiece pieces (``▁``, ``<0x0A>``…) and special-token names for ``ids``."""
        out = []
        for i in ids:
            i = int(i)
            self._check_id(i)
            out.append(self._id_to_special.get(i) or self._sp.id_to_piece(i))
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special ids become their names unless ``skip_special_tokens``.

        Runs of ordinary ids are decoded together so that byte pieces re-join into characters;
        like SentencePiece, control pieces (``</s>``) decode to "" and a leading ``▁`` is dropped.
        Ids in the model's padded embedding rows (64798..65023) raise :class:`TokenizerError`.
        """
        text: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            self._check_id(i)
            if i in self._id_to_special:
                if run:
                    text.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    text.append(self._id_to_special[i])
            else:
                run.append(i)
        if run:
            text.append(self._sp.decode(run))
        return "".join(text)

    def __repr__(self) -> str:
        return f"ChatGLM3Tokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"


class HFTokenizer:
    """Any Hugging Face tokenizer behind the :class:`Tokenizer` interface.

    Special ids are looked up by name in the tokenizer's vocabulary (added tokens included), so a
    ChatGLM3 tokenizer (``sop``) and a GLM-4 style one (``<sop>``) both work with the same encoder.

    >>> tok = HFTokenizer(AutoTokenizer.from_pretrained("path/to/glm4"))  # doctest: +SKIP
    >>> tok.token_id("sop") == tok.token_id("<sop>")  # doctest: +SKIP
    True
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self.name = type(hf_tokenizer).__name__
        self._vocab: dict[str, int] = dict(hf_tokenizer.get_vocab())
        self.vocab_size: int = len(hf_tokenizer)
        eos = hf_tokenizer.eos_token_id
        if eos is None:
            raise TokenizerError(
                f"{self.name} has no eos token; set eos_token in its tokenizer_config.json"
            )
        self.eos_id: int = int(eos)
        # Padding positions are masked (attention 0, label -100), so the pad id's value only has
        # to be a valid id; fall back to eos for tokenizers that define no pad token.
        pad = hf_tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        # split_special_tokens: special-token text inside content stays ordinary text, as in
        # ChatGLM3 (golden case-21); otherwise a user could write "<|assistant|>" into a prompt
        # and forge a role boundary.
        return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True))

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Batch form of :meth:`encode` (fast tokenizers parallelise it in Rust)."""
        if not texts:
            return []
        out = self.hf(list(texts), add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in out["input_ids"]]

    def token_id(self, name: str) -> int:
        for candidate in (name, *_ALIASES.get(name, ())):
            if candidate in self._vocab:
                return self._vocab[candidate]
        raise TokenizerError(
            f"unknown token {name!r} in {self.name}; its special tokens are: "
            f"{', '.join(self.hf.all_special_tokens + list(self.hf.get_added_vocab()))}"
        )

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.hf.convert_ids_to_tokens([int(i) for i in ids]))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name}, vocab_size={self.vocab_size})"


Backend = Literal["auto", "sentencepiece", "hf"]


def load_tokenizer(
    path: str | Path, trust_remote_code: bool = False, backend: Backend = "auto"
) -> ChatGLM3Tokenizer | HFTokenizer:
    """Load a tokenizer from a folder (or a ``tokenizer.model`` file) behind one interface.

    ``backend="auto"`` uses our :class:`ChatGLM3Tokenizer` when the folder holds a SentencePiece
    ``tokenizer.model`` and no Hugging Face fast tokenizer (``tokenizer.json``), and otherwise
    ``AutoTokenizer`` (remote code only when ``trust_remote_code=True``). ``"sentencepiece"`` and
    ``"hf"`` force one of them.

    >>> load_tokenizer("../shared/corpora/chatglm3-6b-tokenizer")  # doctest: +SKIP
    ChatGLM3Tokenizer('../shared/corpora/chatglm3-6b-tokenizer/tokenizer.model', vocab_size=64798)
    """
    if backend not in ("auto", "sentencepiece", "hf"):
        raise TokenizerError(f"unknown backend {backend!r}; use auto, sentencepiece or hf")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    sp_file = path if path.is_file() else path / "tokenizer.model"

    if backend == "sentencepiece":
        if not sp_file.is_file():
            raise TokenizerError(f"{path}: no tokenizer.model (SentencePiece) there")
        return ChatGLM3Tokenizer(sp_file)
    if (
        backend == "auto"
        and sp_file.is_file()
        and not (sp_file.parent / "tokenizer.json").is_file()
    ):
        try:
            return ChatGLM3Tokenizer(sp_file)
        except TokenizerError:
            # GLM-4's remote-code tokenizer also ships a "tokenizer.model", but a tiktoken one:
            # not SentencePiece, so leave it to AutoTokenizer.
            pass
    if path.is_file():
        raise TokenizerError(
            f"{path}: a Hugging Face tokenizer is loaded from its folder, not a file"
        )
    return HFTokenizer(_auto_tokenizer(path, trust_remote_code))


def _auto_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer  # heavy import, only on this path

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types here; one clear message is the point
        hint = ""
        config = path / "tokenizer_config.json"
        if not trust_remote_code and config.is_file():
            try:
                auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map")
            except (OSError, ValueError):
                auto_map = None
            if auto_map:
                hint = (
                    " (its tokenizer_config.json asks for remote code: pass trust_remote_code=True)"
                )
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(
            f"{path}: could not load a Hugging Face tokenizer{hint}: {first_line}"
        ) from e
