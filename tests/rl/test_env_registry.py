"""Every registered environment builds with its defaults, opens a task deterministically per seed, and gives the
trainer what it needs (demonstrations for the warm-up, a tokenizer corpus); the registry imports lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import ENVS, Env, ToolEnv, list_envs, make_env, make_tool_env, register_env


def _contents(msgs):
    return [(m.role, m.content) for m in msgs]


@pytest.mark.parametrize("name", list_envs())
def test_registered_env_builds_resets_and_demonstrates(name):
    env, again = make_tool_env(name), make_tool_env(name)
    try:
        msgs, info = env.reset(seed=3)
        assert msgs and all(isinstance(m, Message) for m in msgs) and isinstance(info, dict)
        assert _contents(again.reset(seed=3)[0]) == _contents(msgs)  # the task is a function of the seed
        demo = env.demonstration(msgs)
        assert demo is None or (isinstance(demo, str) and demo)
        corpus = env.tokenizer_corpus(2)
        assert isinstance(corpus, list) and all(isinstance(t, str) for t in corpus)
        assert isinstance(env.state_digest(), str)
    finally:
        env.close()
        again.close()


def test_unknown_env_names_every_registered_one():
    with pytest.raises(ValueError, match="unknown environment 'chess'; available: " + ", ".join(list_envs())):
        make_env("chess")


def test_register_env_adds_a_class_and_checks_its_arguments():
    class Echo(Env):
        def reset(self, seed=None):
            return f"say {seed}", {}

        def step(self, action):
            return "", float(action == "hi"), True, False, {}

    register_env("echo_test", Echo)
    try:
        env = make_tool_env("echo_test")
        assert isinstance(env, ToolEnv) and _contents(env.reset(seed=1)[0]) == [("user", "say 1")]
        assert "echo_test" in list_envs()
    finally:
        dict.__delitem__(ENVS, "echo_test")
    with pytest.raises(ValueError, match="`name` must be a non-empty str"):
        register_env("", Echo)
    with pytest.raises(TypeError, match="`cls` must be a class"):
        register_env("x", Echo())


def test_importing_the_registry_imports_no_environment_module_beyond_the_builtin_ones():
    code = ("import sys, lckernels_rl.envs as e; "
            "print(sorted(m for m in sys.modules if m.startswith('lckernels_rl.envs.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))
    assert loaded <= {"lckernels_rl.envs.arithmetic", "lckernels_rl.envs.base", "lckernels_rl.envs.kv_lookup",
                      "lckernels_rl.envs.tool_env"}, loaded
