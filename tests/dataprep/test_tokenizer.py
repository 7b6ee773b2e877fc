"""dataprep.tokenizer: the ChatGLM3 SentencePiece adapter, the HF wrapper and the loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dataprep.tokenizer import (
    CHATGLM3_SPECIAL_TOKENS,
    ChatGLM3Tokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)
from trainer_plugin.encoding import encode_conversation


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> ChatGLM3Tokenizer:
    return load_tokenizer(tokenizer_dir)


# --- the real ChatGLM3 model -----------------------------------------------------------------


def test_loader_picks_our_adapter_for_the_chatglm3_folder(tok, tokenizer_dir):
    # The folder has tokenizer.model + a remote-code tokenizer_config.json and no tokenizer.json.
    assert isinstance(tok, ChatGLM3Tokenizer)
    assert isinstance(tok, Tokenizer)
    assert isinstance(load_tokenizer(tokenizer_dir / "tokenizer.model"), ChatGLM3Tokenizer)


def test_special_ids_follow_the_pieces_in_documented_order(tok):
    assert tok.sp_vocab_size == 64789
    assert [tok.token_id(t) for t in CHATGLM3_SPECIAL_TOKENS] == list(range(64789, 64798))
    assert tok.vocab_size == 64798
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (2, 0, 1)


def test_token_id_accepts_glm4_spelling_and_plain_pieces(tok):
    assert tok.token_id("<sop>") == tok.token_id("sop") == 64792
    assert tok.token_id("<eop>") == 64793
    assert tok.token_id("</s>") == 2
    assert tok.token_id("<unk>") == 0
    with pytest.raises(TokenizerError, match="unknown token '<|function|>'"):
        tok.token_id("<|function|>")


def test_encode_is_raw_sentencepiece_with_a_dummy_prefix_per_call(tok):
    assert tok.encode("") == []
    assert tok.encode("\n") == [30910, 13]
    assert tok.convert_ids_to_tokens(tok.encode("\n")) == ["▁", "<0x0A>"]
    # Two calls give two dummy prefixes: this is why metadata and text are encoded separately.
    assert tok.encode("search_hotels\n") + tok.encode("hi") != tok.encode("search_hotels\nhi")
    assert tok.encode("你好") == [36474, 54591]


def test_byte_fallback_for_characters_outside_the_vocabulary(tok):
    ids = tok.encode("🎉")
    pieces = tok.convert_ids_to_tokens(ids)
    byte_ids = [i for i, p in zip(ids, pieces, strict=True) if p.startswith("<0x")]
    assert bytes(i - 3 for i in byte_ids) == "🎉".encode()
    assert tok.decode(ids) == "🎉"


def test_special_token_text_in_content_is_plain_text(tok):
    ids = tok.encode("<|user|> [gMASK] sop")
    assert not set(ids) & set(range(64789, 64798))


def test_decode_and_pieces(tok):
    text = "北京新世界酒店, price 303.0 元"
    assert tok.decode(tok.encode(text)) == text
    ids = [64790, 64792, 64796, *tok.encode("你好"), 2]
    assert tok.decode(ids) == "[gMASK]sop<|assistant|>你好"
    assert tok.decode(ids, skip_special_tokens=True) == "你好"
    assert tok.convert_ids_to_tokens([64797, 2, 0]) == ["<|observation|>", "</s>", "<unk>"]
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([64798])  # a padded embedding row, not a token
    with pytest.raises(TypeError):
        tok.encode(None)  # type: ignore[arg-type]


def test_pickle_round_trip_keeps_behaviour(tok):
    # datasets.map(num_proc>1) pickles the tokenizer into its workers.
    clone = pickle.loads(pickle.dumps(tok))
    text = "帮我找一家能打国际长途的经济型酒店 🎉"
    assert clone.encode(text) == tok.encode(text)
    assert clone.token_id("<|observation|>") == 64797


def test_loader_errors(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer.model"):
        load_tokenizer(tmp_path, backend="sentencepiece")
    with pytest.raises(TokenizerError, match="unknown backend"):
        load_tokenizer(tokenizer_dir, backend="tiktoken")  # type: ignore[arg-type]
    # Forcing Hugging Face on the ChatGLM3 folder needs THUDM's remote code, which we never run
    # unless asked: the error says so.
    with pytest.raises(TokenizerError, match="trust_remote_code=True"):
        load_tokenizer(tokenizer_dir, backend="hf")


def test_non_sentencepiece_tokenizer_model_is_left_to_auto_tokenizer(tmp_path):
    # GLM-4 ships a tiktoken file under the same name; it must not be read as SentencePiece.
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(TokenizerError, match="could not load a Hugging Face tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path, backend="sentencepiece")


# --- a tiny GLM-4 style Hugging Face tokenizer, built locally -------------------------------

GLM4_SPECIALS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
WORDS = ["hello", "world", "hi", "北京"]


@pytest.fixture(scope="module")
def glm4_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *GLM4_SPECIALS, *WORDS])}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()  # drops "\n": ids stay easy to work out
    raw.add_special_tokens(GLM4_SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    folder = tmp_path_factory.mktemp("glm4-tiny")
    fast.save_pretrained(folder)
    return folder


def test_hf_folder_is_wrapped_and_specials_are_found_by_name(glm4_dir):
    tok = load_tokenizer(glm4_dir)
    assert isinstance(tok, HFTokenizer)
    assert isinstance(tok, Tokenizer)
    # ids by hand: [UNK]=0, then the specials 1..10, then the words 11..14
    assert tok.token_id("sop") == tok.token_id("<sop>") == 5
    assert tok.token_id("[gMASK]") == 3
    assert tok.token_id("<|observation|>") == 10
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 1, 15)
    assert tok.encode("hello world") == [11, 12]
    assert tok.encode("") == []
    assert tok.decode([8, 13]) == "<|user|> hi"
    assert tok.convert_ids_to_tokens([3, 14]) == ["[gMASK]", "北京"]
    with pytest.raises(TokenizerError, match="unknown token"):
        tok.token_id("<|function|>")


def test_hf_special_text_in_content_is_not_a_special_id(glm4_dir):
    tok = load_tokenizer(glm4_dir)
    assert 8 not in tok.encode("<|user|> hi")


def test_encoder_runs_on_the_glm4_style_tokenizer(glm4_dir):
    tok = load_tokenizer(glm4_dir)
    sample = {
        "conversations": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello world"},
        ]
    }
    enc = encode_conversation(sample, tok)
    #                 [gMASK] <sop> <|user|> hi <|assistant|> hello world eos
    assert enc.input_ids == [3, 5, 8, 13, 9, 11, 12, 1]
    assert enc.labels == [-100, -100, -100, -100, -100, 11, 12, 1]
