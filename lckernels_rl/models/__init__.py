"""Tiny policies and tokenizers built locally (random init, no downloads)."""

from .policy import ARCHS, build_policy, list_archs, policy_config
from .tokenizer import (CHAT_SPECIAL_TOKENS, SPECIAL_TOKENS, TOKENIZER_KINDS, build_bpe_tokenizer, build_char_tokenizer,
                        build_tokenizer, non_canonical_pair)

__all__ = ["ARCHS", "build_policy", "list_archs", "policy_config", "SPECIAL_TOKENS", "build_char_tokenizer",
           "CHAT_SPECIAL_TOKENS", "TOKENIZER_KINDS", "build_bpe_tokenizer", "build_tokenizer", "non_canonical_pair"]
