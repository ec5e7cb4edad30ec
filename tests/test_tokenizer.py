"""Tokenizers against llama.cpp's own test vectors and reference outputs, round trips, special
tokens, the streaming decoder, and malformed metadata."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest

from fastllm.errors import FastLLMError, TokenizerError
from fastllm.tokenizer import StreamDecoder, Tokenizer

VOCABS = ["llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2", "deepseek-llm", "falcon",
          "starcoder"]
SEP = "\n__ggml_vocab_test__\n"

_loaded: dict[str, Tokenizer] = {}


def vocab_path(data_dir, name):
    from conftest import need

    return need(data_dir / "vocab" / f"ggml-vocab-{name}.gguf", f"vocab {name}")


def vocab(data_dir, name) -> Tokenizer:
    if name not in _loaded:
        _loaded[name] = Tokenizer.load(vocab_path(data_dir, name))
    return _loaded[name]


def read_vectors(path) -> list[tuple[str, list[int]]]:
    """Texts and ids the way llama.cpp's tests/test-tokenizer-0.cpp reads them: the .inp text is
    cut at each separator (the one ending the file closes the last text), the .out file has one
    line of ids per text."""
    raw = path.with_name(path.name + ".inp").read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = path.with_name(path.name + ".out").read_text().split("\n")
    assert len(lines) >= len(texts)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vectors(data_dir, name):
    """Every test text gives exactly llama.cpp's ids (its test encodes with add_special=false,
    parse_special=false)."""
    tok = vocab(data_dir, name)
    vectors = read_vectors(vocab_path(data_dir, name))
    assert len(vectors) == 46
    for i, (text, expected) in enumerate(vectors):
        got = tok.encode(text, add_bos=False, special=False)
        assert got == expected, f"text #{i} {text!r}"


# decode(encode(text)) == text fails only where a vocabulary cannot represent the text. None of
# the eight test vocabularies has such a gap (each has all 256 byte tokens or byte-level BPE), so
# the list is empty; an entry would be (vocab, text index): reason.
ROUND_TRIP_EXCEPTIONS: dict[tuple[str, int], str] = {}


@pytest.mark.parametrize("name", VOCABS)
def test_round_trip(data_dir, name):
    tok = vocab(data_dir, name)
    for i, (text, _) in enumerate(read_vectors(vocab_path(data_dir, name))):
        if (name, i) in ROUND_TRIP_EXCEPTIONS:
            continue
        ids = tok.encode(text, add_bos=False)
        # SPM vocabularies prefix the text with a space (add_space_prefix), which decoding keeps
        expected = " " + text if tok.model == "llama" and tok.add_space_prefix and text else text
        assert tok.decode(ids) == expected, f"text #{i} {text!r}"
        # streaming gives the same text, whatever the token boundaries inside characters
        sd = StreamDecoder(tok)
        parts = [sd.feed(t) for t in ids] + [sd.flush()]
        assert "".join(parts) == expected
        assert not any("\ufffd" in p for p in parts)


@pytest.mark.parametrize("name", VOCABS)
def test_add_special(data_dir, name):
    """add_bos=True adds exactly the tokens the metadata (or llama.cpp's default) asks for."""
    tok = vocab(data_dir, name)
    body = tok.encode("Hello world", add_bos=False)
    full = tok.encode("Hello world", add_bos=True)
    expected = ([tok.bos_id] if tok.add_bos else []) + body + ([tok.eos_id] if tok.add_eos else [])
    assert full == expected
    assert tok.encode("", add_bos=False) == []


def test_add_bos_flags(data_dir):
    # from metadata keys
    assert vocab(data_dir, "llama-spm").add_bos is True
    assert vocab(data_dir, "deepseek-llm").add_bos is True
    # llama.cpp's defaults when the key is absent: llama-bpe adds BOS, gpt-2 does not
    assert vocab(data_dir, "llama-bpe").add_bos is True
    assert vocab(data_dir, "gpt-2").add_bos is False
    assert not any(vocab(data_dir, n).add_eos for n in VOCABS)


def test_special_tokens_only_when_asked(data_dir):
    tok = vocab(data_dir, "llama-bpe")
    bot = tok.token_id("<|begin_of_text|>")
    assert bot == tok.bos_id
    text = "<|begin_of_text|>Hi<|eot_id|>"
    parsed = tok.encode(text, add_bos=False, special=True)
    assert parsed == [bot] + tok.encode("Hi", add_bos=False) + [tok.token_id("<|eot_id|>")]
    plain = tok.encode(text, add_bos=False, special=False)
    assert bot not in plain and tok.token_id("<|eot_id|>") not in plain
    assert tok.decode(plain) == text
    # control tokens render as nothing
    assert tok.token_to_piece(bot) == b""
    assert tok.decode(parsed) == "Hi"


def test_user_defined_tokens_always_match(data_dir):
    """User-defined tokens are cut out of the text even with special=False (llama.cpp, after
    Hugging Face): deepseek-llm lists single characters such as 'ø' as user-defined tokens."""
    tok = vocab(data_dir, "deepseek-llm")
    oe = tok.token_id("\u00f8")
    assert oe is not None and not tok.is_control(oe)
    ids = tok.encode("s\u00f8ster", add_bos=False)
    assert oe in ids
    assert tok.decode(ids) == "s\u00f8ster"


def test_phi3_strips_space_after_special(data_dir):
    """Phi-3's special tokens swallow the whitespace after them (llama.cpp's rstrip rule)."""
    tok = vocab(data_dir, "phi-3")
    end = tok.token_id("<|end|>")
    a = tok.encode("<|end|> \n Hi", add_bos=False, special=True)
    assert a == tok.encode("<|end|>Hi", add_bos=False, special=True)
    assert a[0] == end


def test_eog(data_dir, smollm2):
    tok = vocab(data_dir, "llama-bpe")
    for text in ("<|end_of_text|>", "<|eot_id|>"):
        assert tok.token_id(text) in tok.eog_ids
    assert tok.eos_id in tok.eog_ids
    sm = Tokenizer.load(smollm2)
    assert sm.token_id("<|im_end|>") in sm.eog_ids
    assert sm.token_id("<|im_start|>") not in sm.eog_ids
    assert sm.eos_id in sm.eog_ids


def test_smollm2(smollm2):
    tok = Tokenizer.load(smollm2)
    assert tok.model == "gpt2" and tok.pre == "starcoder"  # "smollm" shares starcoder's splitter
    assert tok.add_bos is False  # tokenizer.ggml.add_bos_token = false
    start = tok.token_id("<|im_start|>")
    ids = tok.encode("<|im_start|>user\nHi", add_bos=True, special=True)
    assert ids[0] == start
    assert ids[1:] == tok.encode("user\nHi", add_bos=True)
    assert start not in tok.encode("<|im_start|>user", special=False)
    text = "Numbers 12345 and caf\u00e9 \u2603 \U0001f600"
    assert tok.decode(tok.encode(text)) == text


def test_stories260k(stories260k, data_dir):
    tok = Tokenizer.load(stories260k)
    ids = tok.encode("Once upon a time", add_bos=True)
    assert ids[0] == 1 == tok.bos_id
    assert tok.decode(ids) == " Once upon a time"
    assert tok.encode("Once upon a time", add_bos=False) == ids[1:]
    # llama.cpp's greedy output for this model, detokenized by llama.cpp
    ref = json.loads((data_dir / "reference" / "stories260K.json").read_text())
    assert tok.decode(ref["llamacpp_0.3.36_greedy_ids"]) == ref["llamacpp_0.3.36_greedy_text"]
    assert tok.eog_ids == {tok.eos_id}


def test_stream_decoder_multibyte(data_dir):
    """A character split over byte tokens comes out whole, once its last byte arrives."""
    tok = vocab(data_dir, "llama-spm")
    ids = tok.encode("\U0001f999!", add_bos=False)  # the llama emoji has no token: 4 bytes
    pieces = [tok.token_to_piece(i) for i in ids]
    assert b"".join(pieces) == " \U0001f999!".encode()
    assert sum(len(p) == 1 and p[0] >= 0x80 for p in pieces) == 4
    sd = StreamDecoder(tok)
    out = [sd.feed(i) for i in ids]
    assert "".join(out) == " \U0001f999!"
    emoji_at = out.index("\U0001f999")
    assert all(o == "" for o in out[emoji_at - 3:emoji_at])  # held back, not broken
    assert sd.flush() == ""

    # byte-level BPE: one token may end in the middle of a character
    tok = vocab(data_dir, "gpt-2")
    ids = tok.encode("\u6211\u60f3\u5728", add_bos=False)
    assert len(ids) > 3
    sd = StreamDecoder(tok)
    out = [sd.feed(i) for i in ids] + [sd.flush()]
    assert "".join(out) == "\u6211\u60f3\u5728"
    assert all("\ufffd" not in o for o in out)


def test_stream_decoder_matches_decode_on_random_ids(data_dir):
    """feed()s + flush() == decode() for any id sequence, broken UTF-8 included."""
    for name in ("llama-spm", "qwen2"):
        tok = vocab(data_dir, name)
        rnd = random.Random(name)
        byte_ids = [i for i in range(tok.n_vocab) if len(tok.token_to_piece(i)) == 1][:300]
        for _ in range(200):
            ids = [rnd.choice(byte_ids) if rnd.random() < 0.7 else rnd.randrange(tok.n_vocab)
                   for _ in range(rnd.randrange(1, 12))]
            sd = StreamDecoder(tok)
            streamed = "".join(sd.feed(i) for i in ids) + sd.flush()
            assert streamed == tok.decode(ids)


def test_token_to_piece(data_dir):
    spm = vocab(data_dir, "llama-spm")
    assert spm.token_to_piece(spm.token_id("\u2581Hello")) == b" Hello"
    assert spm.token_to_piece(spm.token_id("<0x0A>")) == b"\n"
    assert spm.token_to_piece(spm.bos_id) == b""
    bpe = vocab(data_dir, "gpt-2")
    assert bpe.token_to_piece(bpe.token_id("\u0120world")) == b" world"
    with pytest.raises(TokenizerError):
        bpe.token_to_piece(bpe.n_vocab)
    with pytest.raises(TokenizerError):
        bpe.token_to_piece(-1)


def test_fast_paths_agree_with_plain_algorithm(data_dir):
    """Long SPM texts are cut where no token can span the cut and the stretches memoised; long
    words use a heap instead of a rescan. Both must give what the plain algorithm gives."""
    texts = [t for t, _ in read_vectors(vocab_path(data_dir, "llama-spm"))]
    text = "\n".join(texts) + "The quick brown fox.\n    indented\tline\n" * 40
    spm = Tokenizer.load(vocab_path(data_dir, "llama-spm"))  # fresh caches
    whole = list(spm._spm._encode_chunk((" " + text).replace(" ", "\u2581")))  # one pass
    assert spm.encode(text, add_bos=False) == whole
    assert spm.encode(text, add_bos=False) == whole  # again, from the memo
    rnd = random.Random(5)
    marked = text.replace(" ", "\u2581")
    for _ in range(500):
        i = rnd.randrange(len(marked))
        chunk = marked[i:i + rnd.randrange(1, 48)]
        assert spm._spm._merge_short(chunk) == spm._spm._merge_long(chunk)
    from fastllm.tokenizer.bpe import byte_encode

    for name in ("gpt-2", "qwen2"):
        bpe = vocab(data_dir, name)._bpe
        for _ in range(500):
            i = rnd.randrange(len(text))
            word = byte_encode(text[i:i + rnd.randrange(1, 48)])
            assert bpe._merge_short(word) == bpe._merge_long(word)


# --- malformed metadata -------------------------------------------------------------------------

def spm_md(n=8):
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "\u2581", "\u2581ab"][:n]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.arange(len(tokens), dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [1] * (len(tokens) - 3), np.int32),
    }


def test_handmade_spm():
    tok = Tokenizer.from_metadata(spm_md())
    assert tok.encode("ab") == [1, 7]
    assert tok.encode("ab b", add_bos=False) == [7, 6, 4]
    assert tok.decode([1, 7, 6, 4]) == " ab b"
    # a character without a token or byte fallback becomes the unknown token
    assert tok.encode("c", add_bos=False) == [6, 0]


@pytest.mark.parametrize("change, key", [
    (lambda md: md.pop("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens"),
    (lambda md: md.update({"tokenizer.ggml.tokens": "abc"}), "tokenizer.ggml.tokens"),
    (lambda md: md.update({"tokenizer.ggml.tokens": ["a", 3]}), r"tokenizer.ggml.tokens\[1\]"),
    (lambda md: md.update({"tokenizer.ggml.tokens": ["a", "a", "b"],
                           "tokenizer.ggml.scores": [0.0] * 3,
                           "tokenizer.ggml.token_type": [1] * 3}), "tokenizer.ggml.tokens"),
    (lambda md: md.update({"tokenizer.ggml.scores": np.zeros(5, np.float32)}),
     "tokenizer.ggml.scores"),
    (lambda md: md.update({"tokenizer.ggml.scores": ["x"] * 8}), "tokenizer.ggml.scores"),
    (lambda md: md.update({"tokenizer.ggml.token_type": np.ones(9, np.int32)}),
     "tokenizer.ggml.token_type"),
    (lambda md: md.pop("tokenizer.ggml.model"), "tokenizer.ggml.model"),
    (lambda md: md.update({"tokenizer.ggml.model": "klingon"}), "tokenizer.ggml.model"),
    (lambda md: md.update({"tokenizer.ggml.bos_token_id": 8}), "tokenizer.ggml.bos_token_id"),
    (lambda md: md.update({"tokenizer.ggml.eos_token_id": -3}), "tokenizer.ggml.eos_token_id"),
    (lambda md: md.update({"tokenizer.ggml.eos_token_id": "2"}), "tokenizer.ggml.eos_token_id"),
    (lambda md: md.update({"tokenizer.ggml.model": "gpt2"}), "tokenizer.ggml.merges"),
    (lambda md: md.update({"tokenizer.ggml.tokens": [b"a", b"\xff\xfe", b"c"] + [b"d"] * 5}),
     r"tokenizer.ggml.tokens\[1\].*invalid UTF-8"),
])
def test_malformed_metadata(change, key):
    md = spm_md()
    change(md)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TokenizerError, match=key) as e:
            Tokenizer.from_metadata(md, "bad.gguf")
    assert "bad.gguf" in str(e.value)


def test_unknown_pre_tokenizer_warns():
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre",
          "tokenizer.ggml.tokens": ["a", "b", "ab", "\u0120"], "tokenizer.ggml.merges": ["a b"]}
    with pytest.warns(UserWarning, match="no-such-pre.*'default'"):
        tok = Tokenizer.from_metadata(md, "x.gguf")
    assert tok.pre == "default"
    assert tok.encode("ab ab", add_bos=False) == [2, 3, 2]


def write_gguf(path, tokens, **extra):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    for k, v in extra.items():
        w.add_array(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_file_errors(tmp_path):
    ok = write_gguf(tmp_path / "ok.gguf", ["<unk>", "<s>", "</s>", "a"],
                    **{"tokenizer.ggml.scores": [0.0, 0.0, 0.0, 1.0]})
    assert Tokenizer.load(ok).n_vocab == 4

    bad = write_gguf(tmp_path / "utf8.gguf", [b"<unk>", b"<s>", b"\xc3\x28", b"a"])
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens") as e:
        Tokenizer.load(bad)
    assert "utf8.gguf" in str(e.value) and "UTF-8" in str(e.value)

    short = write_gguf(tmp_path / "short.gguf", ["<unk>", "<s>", "</s>", "a"],
                       **{"tokenizer.ggml.scores": [0.0, 1.0]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.scores.*2 entries") as e:
        Tokenizer.load(short)
    assert "short.gguf" in str(e.value)

    assert issubclass(TokenizerError, FastLLMError)
