"""Skill environments and curricula (issue 14 §3): Skill1 (``skill1``) and SKILL0 (``skill0``).

Imported on first use through :data:`lckernels_rl.envs.ENVS`; nothing is imported here.
"""
