"""TRUST-SQL: text-to-SQL over an unknown schema (arXiv 2603.16448) on generated SQLite databases.

* :mod:`.dbgen` -- seeded databases with noisy distractor tables and templated questions (gold SQL + gold schema),
  split by database;
* :mod:`.sandbox` -- the read-only SQL sandbox (``mode=ro`` open, an authorizer that denies every write, step and
  wall-time limits);
* :mod:`.rewards` -- the public code's turn-format checks, format bonus, schema-linking and SQL scores;
* :mod:`.env` -- :class:`TrustSQLEnv`, the four-action multi-turn protocol (explore / propose / generate / confirm).
"""

from .env import INSTRUCTIONS, LIST_TABLES_SQL, TrustSQLEnv

__all__ = ["TrustSQLEnv", "INSTRUCTIONS", "LIST_TABLES_SQL"]
