"""Verifier programs run in a confined child process (issue 13 part 3; DESIGN.md "Sandboxes": Python/tool code in a
subprocess with a time limit, a write impossible rather than rejected by a string check).

:class:`VerifierSandbox` keeps **one long-lived worker** -- ``python -I`` running :mod:`._verifier_worker` in an
empty temporary directory, with an empty environment and no inherited descriptors -- and feeds it one job per
verification: the program, the state and the answer as a JSON line on its stdin, the verdict as a JSON line on its
stdout.  One worker rather than one child per verification because a fresh interpreter costs tens of
milliseconds per call, and the task generator validates up to nine programs per episode reset (three drafts x
reference / do-nothing / claim-only); ``reuse=False`` gives a fresh child per job (measured: see docs/pc_state.md).

Confinement inside the child: Landlock, dropped root, rlimits, an audit hook, pure builtins and a read-only state
(see :mod:`._verifier_worker`).  Here, in the parent:

* a wall-time limit per job (``timeout_s``): past it the child's process group is killed and the next job starts a
  new one;
* a reply that is not one JSON verdict line for this job (garbage, a wrong id, more than ``max_reply_bytes``), an
  exit of the child (a crash, SIGXCPU from its CPU limit, SIGKILL from the kernel) or a child that does not start:
  each ends as ``passed=False`` with the reason, and the child is replaced;
* a job in which the child refused an operation (``denied``) also replaces the child, so a program that probed the
  confinement never shares a process with a later one.

Nothing here raises on a bad program: :meth:`VerifierSandbox.run` returns a :class:`SandboxResult` whose ``kind``
is ``ok`` / ``raised`` / ``forbidden`` / ``timeout`` / ``crashed`` / ``garbage`` / ``unavailable``.  Thread-safe (one
job at a time per sandbox) and fork-aware (a forked process starts its own worker).  POSIX only (``select`` on
pipes); INFERRED design, ours -- STAGE-Claw (arXiv:2606.10394) runs its verification programs but its abstract says
nothing about how they are isolated.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["SandboxResult", "VerifierSandbox", "default_sandbox", "WORKER"]

WORKER = Path(__file__).with_name("_verifier_worker.py")


@dataclass
class SandboxResult:
    """``passed`` (False unless the program returned True), ``error`` (the reason, None when it ran to a bool),
    ``kind`` (``ok`` / ``raised`` / ``forbidden`` / ``timeout`` / ``crashed`` / ``garbage`` / ``unavailable``),
    ``seconds`` (wall time of the job, start-up excluded), ``denied`` (audited operations the child refused)."""

    passed: bool
    error: Optional[str] = None
    kind: str = "ok"
    seconds: float = 0.0
    denied: list = field(default_factory=list)


class VerifierSandbox:
    """A confined verifier worker process (see the module docstring).

    Args:
        timeout_s: wall-time limit of one job (the child is killed past it); its CPU limit is the same, rounded up.
        memory_mb: the child's address-space limit.
        start_timeout_s: how long a new child may take to report ready.
        reuse: keep the child for the next job (False: a fresh child per job).
        python: the interpreter (default: this one).
        worker_argv: the command that starts the worker instead of ``[python, "-I", WORKER, memory_mb]`` (tests: a
            misbehaving worker).
        audit_hook: install the child's audit hook (tests turn it off to show the kernel layers alone).
        max_reply_bytes: the longest verdict line accepted.
    """

    def __init__(self, *, timeout_s: float = 2.0, memory_mb: int = 256, start_timeout_s: float = 30.0,
                 reuse: bool = True, python: Optional[str] = None, worker_argv: Optional[Sequence[str]] = None,
                 audit_hook: bool = True, max_reply_bytes: int = 65536):
        for name, v in (("timeout_s", timeout_s), ("start_timeout_s", start_timeout_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"VerifierSandbox: `{name}` must be a positive number of seconds; got {v!r}")
        for name, v in (("memory_mb", memory_mb), ("max_reply_bytes", max_reply_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 16:
                raise ValueError(f"VerifierSandbox: `{name}` must be an int >= 16; got {v!r}")
        if os.name != "posix":
            raise RuntimeError("VerifierSandbox: POSIX only (select on pipes, process groups, rlimits)")
        self.timeout_s, self.memory_mb, self.start_timeout_s = float(timeout_s), memory_mb, float(start_timeout_s)
        self.reuse, self.max_reply_bytes = bool(reuse), max_reply_bytes
        self.python = python or sys.executable
        self.worker_argv = list(worker_argv) if worker_argv is not None else None
        self.audit_hook = bool(audit_hook)
        self.layers: dict = {}  # what the current child reported
        self.starts = 0  # children started
        self.jobs = 0
        self._proc: Optional[subprocess.Popen] = None
        self._dir: Optional[str] = None
        self._buf = b""
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- public
    def run(self, program: str, state: dict, answer: str = "") -> SandboxResult:
        """Evaluate ``program`` on ``state`` (a JSON-able dict) and ``answer`` in the child; never raises on what
        the program does."""
        job = {"program": program, "state": state, "answer": answer,
               "cpu_s": max(1, int(self.timeout_s + 0.999))}
        with self._lock:
            if os.getpid() != self._pid:  # forked: the pipes belong to the parent's worker
                self._proc, self._buf, self._dir, self._pid = None, b"", None, os.getpid()
            try:
                if self._proc is None or self._proc.poll() is not None:
                    err = self._start()
                    if err is not None:
                        return SandboxResult(False, f"verifier sandbox unavailable: {err}", "unavailable")
                res = self._job(job)
            finally:
                if not self.reuse:
                    self._stop()
            return res

    def close(self) -> None:
        """Stop the child and remove its directory."""
        with self._lock:
            self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._stop()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    # ---------------------------------------------------------------- internals
    def _start(self) -> Optional[str]:
        self._stop()
        self._dir = tempfile.mkdtemp(prefix="pc_state_verifier_")
        argv = self.worker_argv or [self.python, "-I", str(WORKER), str(self.memory_mb)] + \
            ([] if self.audit_hook else ["--no-audit-hook"])
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                          cwd=self._dir, env={}, close_fds=True, start_new_session=True)
        except OSError as e:
            self._proc = None
            return f"could not start {argv[0]!r}: {e}"
        self.starts += 1
        self._buf = b""
        line, err = self._read_line(self.start_timeout_s)
        if err is not None:
            self._stop()
            return f"the worker did not report ready ({err})"
        try:
            hello = json.loads(line)
            assert hello.get("ready") is True
        except (ValueError, AssertionError, AttributeError):
            self._stop()
            return f"the worker's first line is not a ready message: {line[:80]!r}"
        self.layers = hello.get("layers", {})
        return None

    def _job(self, job: dict) -> SandboxResult:
        self.jobs += 1
        job["id"] = self.jobs
        t0 = time.perf_counter()
        try:
            self._proc.stdin.write((json.dumps(job) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            return self._fail("crashed", f"verifier process gone before the job ({e}){self._exit_note()}", t0)
        line, err = self._read_line(self.timeout_s)
        if err == "timeout":
            return self._fail("timeout", f"verifier timed out after {self.timeout_s:g} s (wall-time limit); "
                                         "its process was killed", t0)
        if err == "eof":
            return self._fail("crashed", f"verifier process ended without a verdict{self._exit_note()}", t0)
        if err is not None:
            return self._fail("garbage", f"verifier process {err}", t0)
        try:
            reply = json.loads(line)
            ok = (isinstance(reply, dict) and reply.get("id") == job["id"]
                  and (reply.get("passed") in (True, False) or isinstance(reply.get("error"), str)))
        except ValueError:
            ok = False
        if not ok:
            return self._fail("garbage", f"verifier process replied garbage: {line[:80]!r}", t0)
        dt = time.perf_counter() - t0
        denied = [str(d) for d in reply.get("denied") or []]
        if denied:  # a probing program: its child is not reused
            self._stop()
            return SandboxResult(False, reply.get("error") or f"forbidden operation: {denied}", "forbidden", dt,
                                 denied)
        if reply.get("error") is not None:
            return SandboxResult(False, str(reply["error"]), "raised", dt)
        return SandboxResult(bool(reply["passed"]), None, "ok", dt)

    def _fail(self, kind: str, reason: str, t0: float) -> SandboxResult:
        self._stop()
        return SandboxResult(False, reason, kind, time.perf_counter() - t0)

    def _read_line(self, timeout: float) -> tuple[bytes, Optional[str]]:
        """One line from the child within ``timeout`` seconds: (line, None) or (b"", "timeout" / "eof" / why)."""
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if len(self._buf) > self.max_reply_bytes:
                return b"", f"replied more than {self.max_reply_bytes} bytes without a newline"
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", "timeout"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return b"", "timeout"
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"", "eof"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        if len(line) > self.max_reply_bytes:
            return b"", f"replied a line of more than {self.max_reply_bytes} bytes"
        return line, None

    def _exit_note(self) -> str:
        p = self._proc
        if p is None:
            return ""
        try:
            code = p.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return ""
        if code is not None and code < 0:
            try:
                return f" (killed by {signal.Signals(-code).name})"
            except ValueError:
                return f" (signal {-code})"
        return f" (exit code {code})"

    def _stop(self) -> None:
        p, self._proc = self._proc, None
        if p is not None:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
            try:
                p.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except (OSError, BrokenPipeError):
                    pass
        err = getattr(self, "_stderr", None)
        if err is not None:
            err.close()
            self._stderr = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._buf = b""


_DEFAULT: dict = {}
_DEFAULT_LOCK = threading.Lock()


def default_sandbox(timeout_s: float = 2.0, memory_mb: int = 256) -> VerifierSandbox:
    """The process-wide sandbox with these limits, shared by every :func:`~.tasks.run_verifier` call that asks for
    them (its child is started on first use and stopped at exit)."""
    key = (float(timeout_s), int(memory_mb))
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = sb = VerifierSandbox(timeout_s=timeout_s, memory_mb=memory_mb)
            atexit.register(sb.close)
        return _DEFAULT[key]
