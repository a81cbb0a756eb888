"""``formal_proof``: a toy formal language, a compile-only checker with the LongCat-Flash-Prover loopholes, the
AST-level legality and consistency checks that close them, and the environment (reward ``compile_only`` or
``legal``).  See docs/reward_hacking.md."""

from .checker import CompileResult, compile_check
from .env import REWARDS, FormalProofEnv, score_proof
from .lang import Decl, ParseError, generate_task, parse
from .legality import LOOPHOLES, check_consistency, check_legality

__all__ = ["FormalProofEnv", "REWARDS", "score_proof", "compile_check", "CompileResult", "check_legality",
           "check_consistency", "LOOPHOLES", "parse", "ParseError", "Decl", "generate_task"]
