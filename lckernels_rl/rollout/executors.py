"""Where a :class:`~lckernels_rl.rollout.driver.RolloutDriver` runs its episodes' environments.

An executor runs whole episodes (``submit(fn) -> Future``) and hands out environments (``env(make_env)``) whose
``reset`` / ``step`` / ``verify`` calls carry a timeout: a call that does not return within ``env_timeout_s``
raises :class:`EnvTimeout` in the episode, which the agent loop turns into the stop reason ``error`` (that
episode only; the others go on).

* :class:`LocalExecutor` (the default; what the tests use): episodes on threads of this process.  With a timeout,
  each environment call runs on its own daemon thread, so a hung call is abandoned (the thread is left to finish or
  hang on its own; the environment is never reused).
* :class:`RayExecutor` (the ``ray`` extra, imported lazily): one environment actor per worker; an episode holds
  one worker for its lifetime and its environment lives in that actor.  Every remote call has the timeout; a worker
  that times out or dies (``RayActorError``) is killed and replaced by a fresh actor, and the episode it was running
  ends with ``error``.

The policy engine stays in the trainer process in both (the trainer's model *is* the HF engine's model): episodes
run their agent loop on local threads and only the environment calls travel to the actors.  INFERRED design: the
issue allows "the engine as an actor or in the trainer process"; verl / SkyRL put generation in actors because
their engines are separate servers, which ours (HF ``generate`` on the training weights) is not.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

__all__ = ["EnvTimeout", "EnvWorkerError", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")


class EnvTimeout(TimeoutError):
    """An environment call ran past the executor's ``env_timeout_s``."""


class EnvWorkerError(RuntimeError):
    """An environment worker (a Ray actor) died during a call."""


def _check_timeout(env_timeout_s) -> Optional[float]:
    if env_timeout_s is None:
        return None
    if isinstance(env_timeout_s, bool) or not isinstance(env_timeout_s, (int, float)) or not env_timeout_s > 0:
        raise ValueError(f"env_timeout_s must be a positive number of seconds or None; got {env_timeout_s!r}")
    return float(env_timeout_s)


class _TimedEnv:
    """A local environment whose ``reset`` / ``step`` / ``verify`` run on a daemon thread with a timeout; every other
    attribute is the environment's own."""

    _CALLS = ("reset", "step", "verify")

    def __init__(self, env, timeout_s: float):
        self._env, self._timeout = env, timeout_s

    def __getattr__(self, name):
        attr = getattr(self._env, name)
        if name not in self._CALLS:
            return attr

        def call(*args, **kwargs):
            box: dict[str, Any] = {}
            done = threading.Event()

            def target():
                try:
                    box["out"] = attr(*args, **kwargs)
                except BaseException as e:  # re-raised in the episode's thread
                    box["err"] = e
                finally:
                    done.set()

            threading.Thread(target=target, daemon=True, name=f"env-{name}").start()
            if not done.wait(self._timeout):
                raise EnvTimeout(f"{type(self._env).__name__}.{name} did not return within {self._timeout} s")
            if "err" in box:
                raise box["err"]
            return box["out"]

        return call


class LocalExecutor:
    """Episodes on ``max_workers`` threads of this process.

    Args:
        max_workers: episode threads (the driver's ``max_inflight`` groups x group size is a good value).
        env_timeout_s: timeout of every environment call (``None``: no timeout; calls run on the episode's thread).
    """

    name = "local"

    def __init__(self, max_workers: int = 32, env_timeout_s: Optional[float] = None):
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"LocalExecutor: `max_workers` must be a positive int; got {max_workers!r}")
        self.env_timeout_s = _check_timeout(env_timeout_s)
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="episode")
        self.restarts = 0

    def env(self, make_env: Callable[[], Any]):
        env = make_env()
        return env if self.env_timeout_s is None else _TimedEnv(env, self.env_timeout_s)

    def release(self, env) -> None:
        """Called when the episode of ``env`` is over."""
        try:
            (env._env if isinstance(env, _TimedEnv) else env).close()
        except Exception:  # a failing close must not lose the episode
            pass

    def submit(self, fn: Callable[[], Any]) -> Future:
        return self._pool.submit(fn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------- Ray
class _EnvActorImpl:
    """The body of a Ray environment actor: holds one environment at a time."""

    def __init__(self):
        self.env = None

    def ping(self) -> bool:
        return True

    def prepare(self, make_env) -> bool:
        """Build (and close) one environment: the imports it needs happen now, not in a timed call."""
        env = make_env()
        try:
            env.close()
        except Exception:
            pass
        return True

    def call(self, make_env, method: str, args: tuple, kwargs: dict):
        if method == "reset" or self.env is None:
            if self.env is not None:
                try:
                    self.env.close()
                except Exception:
                    pass
            self.env = make_env()
        return getattr(self.env, method)(*args, **kwargs)


class _RayEnv:
    """An episode's environment inside a Ray worker; attributes other than the calls are read from a local copy
    (tool schemas, ``steps_cut_turns``, ``blocking``: static per environment class)."""

    def __init__(self, executor: "RayExecutor", make_env, slot: int):
        self._ex, self._make_env, self._slot = executor, make_env, slot
        self._local = make_env()

    def __getattr__(self, name):
        if name in ("reset", "step", "verify"):
            return lambda *a, **k: self._ex._call(self._slot, self._make_env, name, a, k)
        return getattr(self._local, name)


class RayExecutor:
    """One environment actor per worker, episodes' agent loops on local threads (see the module docstring).

    Args:
        num_workers: environment actors (at most this many episodes run at once).
        env_timeout_s: timeout of every remote call (required: a remote call without one can hang the run).
        init_kwargs: passed to ``ray.init`` when Ray is not initialized yet (default ``num_cpus=num_workers``,
            ``include_dashboard=False``); an initialized Ray session is reused, never shut down by :meth:`close`.
        actor_options: ``.options(...)`` of the actors (default ``num_cpus=0``: env steps are mostly waiting).
        start_timeout_s: how long a new actor may take to start (it imports the library in a fresh process).
    """

    name = "ray"

    def __init__(self, num_workers: int = 4, env_timeout_s: float = 30.0, init_kwargs: Optional[dict] = None,
                 actor_options: Optional[dict] = None, start_timeout_s: float = 120.0):
        import ray  # the `ray` extra; lazy so the library imports without it

        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RayExecutor: `num_workers` must be a positive int; got {num_workers!r}")
        self.env_timeout_s = _check_timeout(env_timeout_s)
        if self.env_timeout_s is None:
            raise ValueError("RayExecutor: `env_timeout_s` is required (a timeout on every remote call)")
        self.ray = ray
        if not ray.is_initialized():
            ray.init(**{"num_cpus": num_workers, "include_dashboard": False, "log_to_driver": False,
                        **(init_kwargs or {})})
        self._actor_cls = ray.remote(_EnvActorImpl).options(**{"num_cpus": 0, "max_restarts": 0,
                                                               **(actor_options or {})})
        self.num_workers = num_workers
        self._lock = threading.Lock()
        self.actors = [self._actor_cls.remote() for _ in range(num_workers)]
        self.start_timeout_s = max(float(start_timeout_s), self.env_timeout_s)
        ray.get([a.ping.remote() for a in self.actors], timeout=self.start_timeout_s)
        self._free: queue.Queue = queue.Queue()
        for i in range(num_workers):
            self._free.put(i)
        self._held: dict[int, int] = {}  # id(env) -> slot
        self._prepared: dict[int, Any] = {}  # slot -> the factory its worker has built an environment of
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="ray-episode")
        self.restarts = 0

    def env(self, make_env):
        """An environment in a free worker (waits for one); a worker found dead is replaced first."""
        slot = self._free.get()
        for _ in range(2):
            actor = self.actors[slot]
            prepared = self._prepared.get(slot) is make_env
            try:  # a first episode of this factory on the worker: its imports get the start-up timeout
                self.ray.get(actor.ping.remote() if prepared else actor.prepare.remote(make_env),
                             timeout=self.env_timeout_s if prepared else self.start_timeout_s)
                self._prepared[slot] = make_env
                break
            except Exception:  # dead or hung since its last episode
                self._restart(slot, actor)
        env = _RayEnv(self, make_env, slot)
        self._held[id(env)] = slot
        return env

    def release(self, env) -> None:
        slot = self._held.pop(id(env), None)
        if slot is not None:
            self._free.put(slot)

    def _restart(self, slot: int, actor) -> None:
        with self._lock:
            if self.actors[slot] is not actor:  # already replaced
                return
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
            new = self._actor_cls.remote()
            self.actors[slot] = new
            self._prepared.pop(slot, None)
            self.restarts += 1
            try:  # a fresh worker process imports the library: give it the start-up timeout, not a call's
                self.ray.get(new.ping.remote(), timeout=self.start_timeout_s)
            except Exception:
                pass  # its first call fails and replaces it again

    def _call(self, slot: int, make_env, method: str, args, kwargs):
        ray = self.ray
        actor = self.actors[slot]
        ref = actor.call.remote(make_env, method, args, kwargs)
        try:
            return ray.get(ref, timeout=self.env_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._restart(slot, actor)
            raise EnvTimeout(f"env worker {slot}: {method} did not return within {self.env_timeout_s} s; worker "
                             "restarted") from None
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
            self._restart(slot, actor)
            raise EnvWorkerError(f"env worker {slot} died during {method}: {type(e).__name__}; worker restarted") \
                from None

    def submit(self, fn: Callable[[], Any]) -> Future:
        return self._pool.submit(fn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:
                pass


def make_executor(name: str, **kwargs):
    """The executor ``name`` (``"local"`` or ``"ray"``)."""
    if name == "local":
        return LocalExecutor(**kwargs)
    if name == "ray":
        return RayExecutor(**kwargs)
    raise ValueError(f"unknown rollout executor {name!r}; available: {', '.join(EXECUTORS)}")
