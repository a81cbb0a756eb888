"""What the memory environments' tokenizer corpora are made of: every text of one scripted episode."""

from __future__ import annotations

from lckernels_rl.agents.types import Message


def scripted_texts(env, seed: int, max_turns: int = 10_000) -> list[str]:
    """The opening context, every demonstrated turn and every rewritten context of ``env``'s scripted episode of
    ``seed`` (``env.demonstration()`` until it returns ``None`` or the episode terminates)."""
    msgs, _ = env.reset(seed=seed)
    out = [msgs[0].content]
    for _ in range(max_turns):
        demo = env.demonstration()
        if demo is None:
            break
        out.append(demo)
        res = env.step(Message("assistant", demo))
        out += [m.content for m in (res.rewrite or [])]
        if res.terminated:
            break
    return out
