"""Local tokenizers: the char tokenizer (ids unchanged, optional extra special tokens), the byte-level BPE
(every text representable, no <unk>, deterministic, saves/loads, NOT canonical on id sequences), dispatch."""

from __future__ import annotations

import doctest
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers import AutoTokenizer  # noqa: E402

import lckernels_rl.models.tokenizer as tokenizer_module  # noqa: E402
from lckernels_rl.models import (CHAT_SPECIAL_TOKENS, SPECIAL_TOKENS, TOKENIZER_KINDS, build_bpe_tokenizer,  # noqa: E402
                                 build_char_tokenizer, build_tokenizer, non_canonical_pair)

CORPUS = (["the quick brown fox jumps over the lazy dog", "12+3=15", "hello world, hello tools"] * 10
          + ["<|user|>what is 7*6?<|end|><|assistant|>42<|end|>"] * 3)
UNSEEN = ["héllo wörld", "日本語のテキスト", "emoji 🙂🚀👩‍👩‍👧", "Ελληνικά και русский", "e\u0301 combining",
          "\x00\x01\x7f control\tand\r\nnewlines", "   leading and trailing   ", "", " ", "\n\n",
          "".join(map(chr, range(256))), "\U0010ffff\ufffe\uffff private \ue000", "zzzz qqqq xxxx"]


def random_texts(n=30, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cps = [rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0, 0x800), rng.randrange(0x800, 0xd800),
                           rng.randrange(0xe000, 0x110000)]) for _ in range(rng.randrange(1, 25))]
        out.append("".join(map(chr, cps)))
    out += [rng.randbytes(rng.randrange(1, 40)).decode("utf-8", errors="replace") for _ in range(n)]
    out += [rng.randbytes(rng.randrange(1, 40)).decode("latin-1") for _ in range(n)]
    return out


@pytest.fixture(scope="module")
def bpe():
    return build_bpe_tokenizer(CORPUS, 320, extra_special_tokens=CHAT_SPECIAL_TOKENS)


def vocab_and_merges(tok):
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    return model["vocab"], model["merges"]


# ----------------------------------------------------------------------------------------------- char tokenizer
def test_char_tokenizer_ids_unchanged():
    tok = build_char_tokenizer("0123456789+=")
    assert tok("12+3=")["input_ids"] == [5, 6, 14, 7, 15]
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 16 and tok.padding_side == "left"
    assert tok.decode([5, 6, 2], skip_special_tokens=True) == "12"
    assert tok("1x")["input_ids"] == [5, 3]  # outside the alphabet -> <unk>
    assert build_char_tokenizer("0123456789+=", extra_special_tokens=()).get_vocab() == tok.get_vocab()


def test_char_tokenizer_extra_special_tokens_follow_the_alphabet():
    tok = build_char_tokenizer("0123456789+=", extra_special_tokens=CHAT_SPECIAL_TOKENS)
    # alphabet: 4..15; extras: 16..20 in order
    assert [tok.convert_tokens_to_ids(t) for t in CHAT_SPECIAL_TOKENS] == [16, 17, 18, 19, 20]
    assert len(tok) == 21
    assert tok("12+3=")["input_ids"] == [5, 6, 14, 7, 15]
    ids = tok("<|user|>1+1=<|end|><|assistant|>2<|end|>")["input_ids"]
    assert ids == [17, 5, 14, 5, 15, 20, 18, 6, 20]
    assert tok.decode(ids) == "<|user|>1+1=<|end|><|assistant|>2<|end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "1+1=2"


def test_char_extras_are_atomic_even_over_their_own_characters():
    tok = build_char_tokenizer("<|>user", extra_special_tokens=("<|user|>",))
    # < | > u s e r -> 4..10, <|user|> -> 11
    assert tok("<|user|>")["input_ids"] == [11]
    assert tok("<|user")["input_ids"] == [4, 5, 7, 8, 9, 10]


# ------------------------------------------------------------------------------------------------ BPE tokenizer
def test_bpe_special_token_ids(bpe):
    assert [bpe.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert [bpe.convert_tokens_to_ids(t) for t in CHAT_SPECIAL_TOKENS] == [4, 5, 6, 7, 8]
    assert (bpe.pad_token_id, bpe.bos_token_id, bpe.eos_token_id, bpe.unk_token_id) == (0, 1, 2, 3)
    assert bpe.padding_side == "left" and bpe.clean_up_tokenization_spaces is False
    assert sorted(bpe.all_special_ids) == list(range(9))
    # then the 256 byte symbols, then merges
    from tokenizers.pre_tokenizers import ByteLevel
    inv = {i: t for t, i in bpe.get_vocab().items()}
    assert {inv[i] for i in range(9, 9 + 256)} == set(ByteLevel.alphabet())
    assert bpe("<|user|>hi<|end|>")["input_ids"][0] == 5 and bpe("<|user|>hi<|end|>")["input_ids"][-1] == 8
    ids = bpe("<|assistant|>the fox<|end|>")["input_ids"]
    assert bpe.decode(ids, skip_special_tokens=True) == "the fox"


def test_bpe_hand_computed_tiny_corpus():
    # corpus "ab" x3: the only pair (a, b) occurs 3 times -> one merge. Byte symbols sort by character, so the
    # printable ASCII '!'..'~' come first: 'a' = 4 + (0x61 - 0x21) = 68, 'b' = 69; the merge "ab" is 4 + 256 = 260.
    tok = build_bpe_tokenizer(["ab"] * 3, 1000)
    assert len(tok) == 261  # far below the requested 1000: nothing left to merge
    assert tok("a")["input_ids"] == [68] and tok("b")["input_ids"] == [69] and tok("!")["input_ids"] == [4]
    assert tok("ab")["input_ids"] == [260]
    assert tok("ba")["input_ids"] == [69, 68]
    assert tok.decode([68, 69]) == "ab"
    assert non_canonical_pair(tok) == ([68, 69], [260])
    # min_frequency: a pair seen once is not merged, so there is no merge and no counter-example
    once = build_bpe_tokenizer(["ab"], 1000)
    assert len(once) == 260 and once("ab")["input_ids"] == [68, 69]
    with pytest.raises(ValueError, match="no non-canonical pair"):
        non_canonical_pair(once)
    assert build_bpe_tokenizer(["ab"], 1000, min_frequency=1)("ab")["input_ids"] == [260]


@pytest.mark.parametrize("text", UNSEEN + random_texts())
def test_bpe_round_trip_any_text_without_unk(bpe, text):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.unk_token_id not in ids
    assert all(0 <= i < len(bpe) for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_round_trip_each_byte_alone():
    tok = build_bpe_tokenizer(["ab"] * 3, 300)  # tiny corpus: almost every character is unseen
    for cp in list(range(256)) + [0x20ac, 0x1f642, 0x10ffff]:
        text = chr(cp)
        ids = tok(text)["input_ids"]
        assert 3 not in ids and len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text


def test_bpe_vocab_never_larger_than_requested():
    rich = random_texts(60, seed=1) + CORPUS
    for vocab_size in (260, 265, 300, 400):
        tok = build_bpe_tokenizer(rich, vocab_size)
        assert len(tok) <= vocab_size
    assert len(build_bpe_tokenizer(CORPUS, 300)) == 300  # reached when the corpus has enough merges
    assert len(build_bpe_tokenizer(CORPUS, 265, extra_special_tokens=CHAT_SPECIAL_TOKENS)) == 265  # no merges
    assert len(build_bpe_tokenizer(CORPUS, 100_000)) < 1000  # a small corpus gives a small vocabulary


def test_bpe_is_deterministic(bpe):
    again = build_bpe_tokenizer(list(CORPUS), 320, extra_special_tokens=CHAT_SPECIAL_TOKENS)
    assert vocab_and_merges(again) == vocab_and_merges(bpe)
    assert again.backend_tokenizer.to_str() == bpe.backend_tokenizer.to_str()
    assert build_bpe_tokenizer(iter(CORPUS), 320, extra_special_tokens=CHAT_SPECIAL_TOKENS).get_vocab() \
        == bpe.get_vocab()  # a one-shot iterator works too


def test_bpe_is_deterministic_across_processes(bpe):
    code = ("import json, sys; from lckernels_rl.models import build_bpe_tokenizer, CHAT_SPECIAL_TOKENS; "
            "c = json.loads(sys.argv[1]); t = build_bpe_tokenizer(c, 320, extra_special_tokens=CHAT_SPECIAL_TOKENS); "
            "print(t.backend_tokenizer.to_str())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CORPUS)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout)["model"] == json.loads(bpe.backend_tokenizer.to_str())["model"]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load_with_auto_tokenizer(tmp_path, bpe, kind):
    tok = bpe if kind == "bpe" else build_char_tokenizer("0123456789+=<>|", extra_special_tokens=CHAT_SPECIAL_TOKENS)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(tok)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.padding_side == "left" and loaded.clean_up_tokenization_spaces is False
    assert sorted(loaded.all_special_ids) == sorted(tok.all_special_ids)
    for text in ["<|user|>12+3=<|end|><|assistant|>15<|end|>", "<|tool|>1<|end|>", *UNSEEN[:4]]:
        ids = tok(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids
        assert loaded.decode(ids) == tok.decode(ids)
        assert loaded.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    batch = loaded(["1", "12+3="], padding=True)["input_ids"]
    assert batch[0][:-1] == [0] * (len(batch[0]) - 1)  # left padding survives the round trip


def test_seed_alphabet_merges_multibyte_characters_only():
    plain = build_bpe_tokenizer(["xyz"], 300)
    seeded = build_bpe_tokenizer(["xyz"], 300, seed_alphabet="é€x")
    assert len(plain("é")["input_ids"]) == 2 and len(plain("€")["input_ids"]) == 3
    assert len(seeded("é")["input_ids"]) == 1 and len(seeded("€")["input_ids"]) == 1
    assert seeded("x")["input_ids"] == plain("x")["input_ids"]
    assert seeded.decode(seeded("é€xyz")["input_ids"]) == "é€xyz"
    assert build_bpe_tokenizer(["xyz"], 300, seed_alphabet="xyz ").get_vocab() == plain.get_vocab()  # ASCII: no-op


# ------------------------------------------------------------------------------------------ non-canonical pair
def test_non_canonical_pair_really_is_non_canonical(bpe):
    ids, reencoded = non_canonical_pair(bpe)
    assert len(ids) == 2 and all(4 + len(CHAT_SPECIAL_TOKENS) <= i < len(bpe) for i in ids)
    for i in ids:  # each id is what sampling one token at a time can produce: it re-encodes to itself alone
        assert bpe.encode(bpe.decode([i]), add_special_tokens=False) == [i]
    text = bpe.decode(ids)
    assert bpe.decode(reencoded) == text  # same text ...
    assert bpe.encode(text, add_special_tokens=False) == reencoded
    assert reencoded != ids  # ... different ids
    assert len(reencoded) < len(ids)
    assert reencoded == [bpe.convert_tokens_to_ids("".join(bpe.convert_ids_to_tokens(ids)))]


def test_non_canonical_pair_needs_bpe(tmp_path, bpe):
    with pytest.raises(ValueError, match="BPE"):
        non_canonical_pair(build_char_tokenizer("ab"))
    bpe.save_pretrained(tmp_path)
    assert non_canonical_pair(AutoTokenizer.from_pretrained(tmp_path)) == non_canonical_pair(bpe)


# -------------------------------------------------------------------------------------------------- dispatch
def test_build_tokenizer_dispatch(bpe):
    assert TOKENIZER_KINDS == ("char", "bpe")
    char = build_tokenizer("char", alphabet="0123456789+=", corpus=["ignored"], vocab_size=999)
    assert char("12+3=")["input_ids"] == [5, 6, 14, 7, 15]
    chat = build_tokenizer("char", alphabet="0123456789+=", extra_special_tokens=CHAT_SPECIAL_TOKENS)
    assert chat.convert_tokens_to_ids("<|end|>") == 20
    b = build_tokenizer("bpe", corpus=CORPUS, vocab_size=320, extra_special_tokens=CHAT_SPECIAL_TOKENS)
    assert vocab_and_merges(b) == vocab_and_merges(bpe)
    seeded = build_tokenizer("bpe", alphabet="é", corpus=["xyz"], vocab_size=300)
    assert len(seeded("é")["input_ids"]) == 1
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer("bpe", corpus=CORPUS)
    with pytest.raises(ValueError, match=r"kind.*'char'.*'bpe'"):
        build_tokenizer("wordpiece", alphabet="ab")


# ------------------------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("vocab_size", [259, 0, -1, 300.0, "300", None, True])
def test_bpe_rejects_bad_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(CORPUS, vocab_size)


def test_bpe_vocab_size_floor_counts_special_tokens():
    assert len(build_bpe_tokenizer(CORPUS, 260)) == 260
    with pytest.raises(ValueError, match=r"vocab_size.*265"):
        build_bpe_tokenizer(CORPUS, 264, extra_special_tokens=CHAT_SPECIAL_TOKENS)


@pytest.mark.parametrize("corpus", [[], [""], ["", ""], "a single string", None, 5, ["ok", 3], [b"bytes"]])
def test_bpe_rejects_bad_corpus(corpus):
    with pytest.raises(ValueError, match="corpus"):
        build_bpe_tokenizer(corpus, 300)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_frequency=0), "min_frequency"), (dict(min_frequency=1.5), "min_frequency"),
    (dict(seed_alphabet=["a"]), "seed_alphabet"),
    (dict(extra_special_tokens="<|user|>"), "extra_special_tokens"),
    (dict(extra_special_tokens=("<|user|>", "")), "extra_special_tokens"),
    (dict(extra_special_tokens=("<|user|>", "<|user|>")), "duplicates"),
    (dict(extra_special_tokens=("</s>",)), "built-in"),
    (dict(extra_special_tokens=(1,)), "extra_special_tokens"),
])
def test_bpe_rejects_bad_keywords(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_bpe_tokenizer(CORPUS, 300, **kwargs)


@pytest.mark.parametrize("alphabet, extras, match", [
    ("", (), "alphabet"), (None, (), "alphabet"),
    ("abc", ("b",), "alphabet"), ("abc", ("<pad>",), "built-in"), ("abc", ("<|x|>", "<|x|>"), "duplicates"),
    ("abc", "<|x|>", "extra_special_tokens"),
])
def test_char_rejects_bad_arguments(alphabet, extras, match):
    with pytest.raises(ValueError, match=match):
        build_char_tokenizer(alphabet, extra_special_tokens=extras)


def test_module_doctests():
    assert doctest.testmod(tokenizer_module).failed == 0


def test_bpe_added_tokens_are_atomic_ordinary_tokens():
    """Protocol tags added after training: one id each (after the learned vocabulary), matched inside words, kept by
    decode(skip_special_tokens=True) -- unlike the special tokens, which it drops."""
    corpus = ["<think>a b</think><tool_call>{}</tool_call>"] * 8 + ["hello world"] * 8
    plain = build_bpe_tokenizer(corpus, vocab_size=300)
    tok = build_bpe_tokenizer(corpus, vocab_size=300, added_tokens=("<think>", "</think>", "<tool_call>"))
    assert len(tok) == len(plain) + 3
    ids = tok("x<think>y</think>", add_special_tokens=False)["input_ids"]
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    assert think == len(plain) and end == len(plain) + 1 and think in ids and end in ids
    assert len(plain("<think>", add_special_tokens=False)["input_ids"]) > 1  # without: several pieces
    text = tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True)
    assert text == "x<think>y</think>"
    with pytest.raises(ValueError, match="added_tokens"):
        build_bpe_tokenizer(corpus, vocab_size=300, added_tokens="<think>")
    with pytest.raises(ValueError, match="added_tokens"):
        build_bpe_tokenizer(corpus, vocab_size=300, added_tokens=("<s>",))
