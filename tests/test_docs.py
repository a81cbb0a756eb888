"""The README's examples and the public docstrings' examples run."""

from __future__ import annotations

import doctest
import pathlib
import re

import pytest

import lckernels.ops.gating
import lckernels.ops.logprobs
import lckernels.ops.policy_loss
import lckernels_rl.agents.parsers
import lckernels_rl.agents.tools
import lckernels_rl.envs.arithmetic
import lckernels_rl.envs.kv_lookup
import lckernels_rl.models.tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("module", [lckernels.ops.logprobs, lckernels.ops.policy_loss, lckernels.ops.gating,
                                    lckernels_rl.envs.arithmetic, lckernels_rl.envs.kv_lookup,
                                    lckernels_rl.agents.parsers, lckernels_rl.agents.tools,
                                    lckernels_rl.models.tokenizer],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
