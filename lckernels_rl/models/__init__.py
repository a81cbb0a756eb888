"""Tiny policies and tokenizers built locally (random init, no downloads)."""

from .policy import ARCHS, build_policy, list_archs, policy_config
from .tokenizer import SPECIAL_TOKENS, build_char_tokenizer

__all__ = ["ARCHS", "build_policy", "list_archs", "policy_config", "SPECIAL_TOKENS", "build_char_tokenizer"]
