"""Character-level tokenizers built locally with the ``tokenizers`` library (no downloads).

Every character of ``alphabet`` is one token; four special tokens come first: ``<pad>`` = 0, ``<s>`` = 1,
``</s>`` = 2 (EOS), ``<unk>`` = 3.  The result is a ``transformers.PreTrainedTokenizerFast`` so it saves with
``save_pretrained`` beside the model and loads back with ``AutoTokenizer`` (which is what vLLM does).
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")

__all__ = ["SPECIAL_TOKENS", "build_char_tokenizer"]


def build_char_tokenizer(alphabet: str):
    """A character-level ``PreTrainedTokenizerFast`` over ``alphabet`` (duplicates ignored, order kept).

    Example:
        >>> tok = build_char_tokenizer("0123456789+=")
        >>> tok("12+3=")["input_ids"]
        [5, 6, 14, 7, 15]
        >>> tok.decode([5, 6, 2], skip_special_tokens=True)
        '12'
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"build_char_tokenizer: `alphabet` must be a non-empty str; got {alphabet!r}")
    chars = list(dict.fromkeys(alphabet))
    clash = [c for c in chars if c in "".join(SPECIAL_TOKENS) and len(c) > 1]
    if clash:  # pragma: no cover - single characters never equal a special token
        raise ValueError(f"alphabet clashes with special tokens: {clash}")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # concatenate, no spaces between characters
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)
