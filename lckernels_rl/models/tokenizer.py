"""Tokenizers built locally with the ``tokenizers`` library (no downloads).

Two kinds, both returned as a ``transformers.PreTrainedTokenizerFast`` so they save with ``save_pretrained``
beside the model and load back with ``AutoTokenizer`` (which is what vLLM does):

* :func:`build_char_tokenizer` -- every character of ``alphabet`` is one token.
* :func:`build_bpe_tokenizer` -- a byte-level BPE trained on a local corpus.  Every byte is in its base
  alphabet, so any text is representable and ``<unk>`` never occurs.

Both put the same four special tokens first: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2 (EOS), ``<unk>`` = 3,
optionally followed by ``extra_special_tokens`` (e.g. the chat role markers :data:`CHAT_SPECIAL_TOKENS`), each
one atomic id, never split by the model.

Byte-level BPE is *not* canonical on id sequences: ``decode(encode(text)) == text`` for every text, but
``encode(decode(ids))`` need not give ``ids`` back (the ids of ``"a"`` then ``"b"`` sampled one at a time decode
to ``"ab"``, which re-encodes to the single merged id when ``"ab"`` is a merge).  Code that generates tokens must
therefore keep the sampled ids and never re-tokenize decoded text; :func:`non_canonical_pair` gives a concrete
counter-example for tests.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHAT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")
TOKENIZER_KINDS = ("char", "bpe")
BYTE_ALPHABET_SIZE = 256  # byte-level BPE's base alphabet: one symbol per byte

__all__ = ["SPECIAL_TOKENS", "CHAT_SPECIAL_TOKENS", "TOKENIZER_KINDS", "build_char_tokenizer",
           "build_bpe_tokenizer", "build_tokenizer", "non_canonical_pair"]


def _check_extra_special_tokens(fn: str, extra_special_tokens, *, name: str = "extra_special_tokens",
                                reserved=SPECIAL_TOKENS) -> list[str]:
    """The token list ``name`` as a list, or ``ValueError``: a bare str, non-str / empty entries, entries in
    ``reserved``, duplicates."""
    if isinstance(extra_special_tokens, str):
        raise ValueError(f"{fn}: `{name}` must be a sequence of str, not a str; got {extra_special_tokens!r}")
    try:
        extras = list(extra_special_tokens)
    except TypeError:
        raise ValueError(f"{fn}: `{name}` must be a sequence of str; got {extra_special_tokens!r}") from None
    bad = [t for t in extras if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"{fn}: `{name}` must be non-empty str; got {bad!r}")
    clash = [t for t in extras if t in reserved]
    if clash:
        raise ValueError(f"{fn}: `{name}` repeats the built-in or earlier special tokens {clash!r}")
    dups = sorted({t for t in extras if extras.count(t) > 1})
    if dups:
        raise ValueError(f"{fn}: `{name}` has duplicates {dups!r}")
    return extras


def _wrap(tok, extras: list[str]):
    from transformers import PreTrainedTokenizerFast

    kwargs = {"extra_special_tokens": extras} if extras else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False,
                                   **kwargs)


def build_char_tokenizer(alphabet: str, *, extra_special_tokens: Sequence[str] = ()):
    """A character-level ``PreTrainedTokenizerFast`` over ``alphabet`` (duplicates ignored, order kept).

    Ids: the four :data:`SPECIAL_TOKENS` (0..3), then the alphabet's characters in order, then
    ``extra_special_tokens`` in order (one id each, matched atomically in text, dropped by
    ``decode(..., skip_special_tokens=True)``).  With no extras the ids are exactly those of earlier versions.

    Example:
        >>> tok = build_char_tokenizer("0123456789+=")
        >>> tok("12+3=")["input_ids"]
        [5, 6, 14, 7, 15]
        >>> tok.decode([5, 6, 2], skip_special_tokens=True)
        '12'
        >>> tok = build_char_tokenizer("ab", extra_special_tokens=("<|user|>",))
        >>> tok("<|user|>ab")["input_ids"]
        [6, 4, 5]
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"build_char_tokenizer: `alphabet` must be a non-empty str; got {alphabet!r}")
    extras = _check_extra_special_tokens("build_char_tokenizer", extra_special_tokens)
    chars = list(dict.fromkeys(alphabet))
    clash = [t for t in extras if t in chars]
    if clash:
        raise ValueError(f"build_char_tokenizer: `extra_special_tokens` {clash!r} are also characters of `alphabet`")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for t in extras:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # concatenate, no spaces between characters
    tok.add_special_tokens(list(SPECIAL_TOKENS) + extras)
    return _wrap(tok, extras)


def build_bpe_tokenizer(corpus: Iterable[str], vocab_size: int, *, extra_special_tokens: Sequence[str] = (),
                        min_frequency: int = 2, seed_alphabet: str | None = None, added_tokens: Sequence[str] = ()):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` (locally, deterministically).

    Ids: the four :data:`SPECIAL_TOKENS` (0..3), then ``extra_special_tokens`` in order (4, 5, ...), then the
    256 byte symbols, then the learned merges.  Every byte is in the base alphabet, so every text (any
    unicode, characters never seen in the corpus included) encodes without ``<unk>`` and
    ``decode(encode(text)) == text``.  The reverse does not hold (see :func:`non_canonical_pair`).

    Args:
        corpus: training texts (a non-empty iterable of str, not a bare str).
        vocab_size: the *target* vocabulary size given to the trainer, special tokens included; at least
            ``256 + 4 + len(extra_special_tokens)``.  The trained vocabulary may be smaller when the corpus
            has fewer merges than that to offer (check ``len(tokenizer)``); it is never larger.  A model's
            ``lm_head`` may be larger than ``len(tokenizer)`` -- e.g. sized by ``vocab_size`` so that the model
            shape does not depend on the corpus; the extra rows are simply never produced by the tokenizer.
        extra_special_tokens: further special tokens (e.g. :data:`CHAT_SPECIAL_TOKENS`), one atomic id each.
        min_frequency: a pair is merged only if it occurs at least this often.
        seed_alphabet: optional characters (e.g. an environment's alphabet) added to the training data, each
            as its own word, ``min_frequency`` times.  Byte-level BPE already represents every character, so
            this never changes what can be encoded; it only lets the trainer merge the bytes of the
            *multi-byte* characters in it into single tokens (when ``vocab_size`` leaves room after the
            corpus's more frequent merges).  ASCII characters in it change nothing.
        added_tokens: ordinary (not special) tokens added after training, one atomic id each after the learned
            vocabulary: matched in text before the BPE model runs and kept by ``decode(..., skip_special_tokens=True)``
            -- e.g. an environment's protocol tags (``<think>``, ``<tool_call>``), as real chat tokenizers have them.

    Example:
        >>> tok = build_bpe_tokenizer(["hello world"] * 4, vocab_size=300)
        >>> [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>")]
        [0, 1, 2, 3]
        >>> tok.decode(tok("héllo ✓ 🙂")["input_ids"])
        'héllo ✓ 🙂'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    fn = "build_bpe_tokenizer"
    extras = _check_extra_special_tokens(fn, extra_special_tokens)
    n_special = len(SPECIAL_TOKENS) + len(extras)
    min_vocab = BYTE_ALPHABET_SIZE + n_special
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise ValueError(f"{fn}: `vocab_size` must be an int >= {min_vocab} (256 bytes + {n_special} special "
                         f"tokens); got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"{fn}: `min_frequency` must be an int >= 1; got {min_frequency!r}")
    if seed_alphabet is not None and not isinstance(seed_alphabet, str):
        raise ValueError(f"{fn}: `seed_alphabet` must be a str or None; got {seed_alphabet!r}")
    if isinstance(corpus, str):
        raise ValueError(f"{fn}: `corpus` must be an iterable of str, not a single str (wrap it in a list)")
    try:
        texts = list(corpus)
    except TypeError:
        raise ValueError(f"{fn}: `corpus` must be an iterable of str; got {corpus!r}") from None
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{fn}: `corpus` must contain only str; got {bad[:3]!r}")
    if not any(texts):
        raise ValueError(f"{fn}: `corpus` must contain at least one non-empty str")
    if seed_alphabet:
        texts += [c for c in dict.fromkeys(seed_alphabet) if not c.isspace()] * min_frequency

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # unk never produced: every byte is in the alphabet
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS) + extras,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS) + extras)  # ids already assigned by the trainer, in order
    added = _check_extra_special_tokens(fn, added_tokens, name="added_tokens",
                                        reserved=list(SPECIAL_TOKENS) + extras)
    if added:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return _wrap(tok, extras)


def build_tokenizer(kind: str, *, alphabet: str = "", corpus: Iterable[str] = (), vocab_size: int | None = None,
                    extra_special_tokens: Sequence[str] = (), added_tokens: Sequence[str] = ()):
    """Build a tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`).

    * ``"char"``: :func:`build_char_tokenizer` over ``alphabet``; ``corpus`` and ``vocab_size`` are ignored.
    * ``"bpe"``: :func:`build_bpe_tokenizer` trained on ``corpus`` with target ``vocab_size`` (required);
      a non-empty ``alphabet`` is passed as its ``seed_alphabet``; ``added_tokens`` as its ``added_tokens``
      (ignored for ``"char"``, where every tag is spelled with the alphabet anyway).
    """
    if kind == "char":
        return build_char_tokenizer(alphabet, extra_special_tokens=extra_special_tokens)
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("build_tokenizer: `vocab_size` is required for kind='bpe'")
        return build_bpe_tokenizer(corpus, vocab_size, extra_special_tokens=extra_special_tokens,
                                   seed_alphabet=alphabet or None, added_tokens=added_tokens)
    raise ValueError(f"build_tokenizer: unknown `kind` {kind!r}; expected one of {list(TOKENIZER_KINDS)}")


def non_canonical_pair(tokenizer, *, max_merges: int = 64) -> tuple[list[int], list[int]]:
    """``(ids, reencoded)``: two single-token ids whose decoded text re-encodes to different ids.

    Searches the first ``max_merges`` merges ``(left, right)`` of a BPE ``tokenizer`` for one where
    ``encode(decode([id(left), id(right)])) != [id(left), id(right)]`` (typically the merged id alone) and the
    decoded text is clean (no partial UTF-8).  This proves the tokenizer is not canonical on id sequences, so
    a generation loop that re-tokenizes decoded text would change the sampled ids.

    Raises:
        ValueError: if the tokenizer is not BPE, or no such pair is found among the first merges.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"non_canonical_pair: `tokenizer` must be a BPE tokenizer; got model {model.get('type')!r}")
    vocab = model["vocab"]
    for merge in model["merges"][:max_merges]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ids = [vocab[left], vocab[right]]
        text = tokenizer.decode(ids)
        if "\ufffd" in text:
            continue
        reencoded = tokenizer.encode(text, add_special_tokens=False)
        if reencoded != ids:
            return ids, list(reencoded)
    raise ValueError(f"non_canonical_pair: no non-canonical pair among the first {max_merges} merges")
