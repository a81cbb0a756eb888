"""The child process that evaluates ``pc_state`` verifier programs (run as ``python -I <this file>``).

Standard library only, and it imports nothing of the package: the parent (:mod:`.sandbox`) starts it as a script in
an empty temporary directory.  Protocol, one JSON object per line:

* child -> parent at start: ``{"ready": true, "layers": {...}}`` (which confinement layers took effect);
* parent -> child, one job: ``{"id": n, "program": "...", "state": {...}, "answer": "...", "cpu_s": t}``;
* child -> parent, its verdict: ``{"id": n, "passed": bool | null, "error": str | null, "denied": [events]}``.

Confinement, set up once before the first job, each layer where the platform has it (INFERRED design, ours; DESIGN.md
asks for verifier code in a subprocess with a time limit and a write that is impossible, not merely rejected):

1. Linux Landlock (kernel >= 5.13; via ``ctypes`` syscalls): every filesystem access right the kernel's ABI knows
   (read, write, truncate, create, remove, rename ...), TCP bind/connect (ABI >= 4) and signals / abstract unix
   sockets to processes outside the child (ABI >= 6) are denied for the rest of the child's life.
2. Root: drop to ``nobody`` (no write to root-owned files even without Landlock).
3. ``resource.setrlimit``: address space (``memory_mb``), no file growth (``RLIMIT_FSIZE`` 0), no new file
   descriptors (``RLIMIT_NOFILE`` = the lowest free one), no core files, no new processes (``RLIMIT_NPROC`` 0;
   ignored by the kernel for root), and per job a CPU-seconds limit (``RLIMIT_CPU`` soft = used + ``cpu_s``;
   SIGXCPU ends the child).
4. A PEP 578 audit hook: while a job runs, every audited event except ``compile`` / ``exec`` is refused
   (``open``, ``import``, ``os.*``, ``subprocess.Popen``, ``socket.*``, ``ctypes.*``, and ``object.__getattr__``,
   which CPython raises on some introspection attributes such as a generator's frame).
5. The program is evaluated with only the pure builtins of :data:`SAFE_BUILTINS` and a read-only
   (``MappingProxyType``) state.

The parent adds the AST whitelist before a program is sent, and the wall-time limit (it kills the child).
"""

from __future__ import annotations

import json
import os
import sys
from types import MappingProxyType

SAFE_BUILTINS = {"len": len, "sorted": sorted, "any": any, "all": all, "set": set, "sum": sum, "min": min,
                 "max": max, "str": str, "int": int, "bool": bool, "True": True, "False": False, "None": None}
ALLOWED_EVENTS = frozenset({"compile", "exec"})

# Landlock (linux/landlock.h): x86_64 / aarch64 share the generic syscall numbers 444-446
_LL_CREATE, _LL_RESTRICT = 444, 446
_LL_FS_BITS = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16, 6: 16, 7: 16}  # ABI -> number of fs access bits it handles


def freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def _limits(memory_mb: int) -> dict:
    try:
        import resource
    except ImportError:  # not a POSIX platform
        return {"rlimits": "unavailable"}
    done = {}

    def cap(name, soft, hard=None):
        which = getattr(resource, name, None)
        if which is None:
            return
        try:
            resource.setrlimit(which, (soft, soft if hard is None else hard))
            done[name] = soft
        except (ValueError, OSError) as e:
            done[name] = f"failed: {e}"

    cap("RLIMIT_AS", memory_mb * 2**20)
    cap("RLIMIT_FSIZE", 0)
    cap("RLIMIT_CORE", 0)
    cap("RLIMIT_NPROC", 0)
    lowest_free = 0
    while lowest_free < 1024:  # a new descriptor would get the lowest free number: forbid that one and all above
        try:
            os.fstat(lowest_free)
        except OSError:
            break
        lowest_free += 1
    cap("RLIMIT_NOFILE", lowest_free)
    return {"rlimits": done}


def _nobody() -> tuple:
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _drop_root(uid: int, gid: int) -> dict:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return {"uid": "not root"}
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        return {"uid": f"dropped to {uid}"}
    except OSError as e:
        return {"uid": f"failed: {e}"}


def _landlock() -> dict:
    try:
        import ctypes
        import struct

        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
        if abi < 1:
            return {"landlock": "unavailable"}
        fs = (1 << _LL_FS_BITS.get(abi, 16)) - 1
        net = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP
        scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
        attr = struct.pack("QQQ", fs, net, scoped) if abi >= 6 else (
            struct.pack("QQ", fs, net) if abi >= 4 else struct.pack("Q", fs))
        buf = ctypes.create_string_buffer(attr, len(attr))
        fd = libc.syscall(_LL_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
        if fd < 0:
            return {"landlock": f"failed: {os.strerror(ctypes.get_errno())}"}
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return {"landlock": f"failed: no_new_privs: {os.strerror(ctypes.get_errno())}"}
        if libc.syscall(_LL_RESTRICT, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            return {"landlock": f"failed: {os.strerror(ctypes.get_errno())}"}
        os.close(fd)
        return {"landlock": f"abi {abi}: filesystem{', network' if net else ''}{', signals' if scoped else ''} denied"}
    except Exception as e:  # noqa: BLE001 -- a missing layer is reported, not fatal
        return {"landlock": f"failed: {type(e).__name__}: {e}"}


class _Guard:
    """The audit hook's switch: refuse every event but :data:`ALLOWED_EVENTS` while a job runs."""

    def __init__(self):
        self.active = False
        self.denied: list = []

    def __call__(self, event, args):
        if self.active and event not in ALLOWED_EVENTS:
            self.denied.append(event)
            raise RuntimeError(f"forbidden operation in a verifier: {event}")


def run_job(job: dict, guard: _Guard) -> dict:
    program, answer = job.get("program"), job.get("answer", "")
    if not isinstance(program, str) or not isinstance(answer, str) or not isinstance(job.get("state"), dict):
        return {"passed": None, "error": "bad job: `program` / `answer` must be str and `state` a dict"}
    state = freeze(job["state"])
    env = {"__builtins__": dict(SAFE_BUILTINS), "s": state, "answer": answer}
    guard.denied = []
    try:
        code = compile(program, "<verifier>", "eval")
        guard.active = True
        try:
            out = eval(code, env)  # noqa: S307 -- confined: see the module docstring
        finally:
            guard.active = False
    except BaseException as e:  # noqa: BLE001 -- a raising verifier is a verdict, not the worker's end
        guard.active = False
        return {"passed": None, "error": f"verifier raised {type(e).__name__}: {e}"[:500]}
    if not isinstance(out, bool):
        return {"passed": None, "error": f"verifier returned {type(out).__name__}, expected bool"}
    return {"passed": out, "error": None}


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    audit = "--no-audit-hook" not in sys.argv[2:]  # tests: show that the kernel layers hold on their own
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        import resource
    except ImportError:
        resource = None
    # order matters: files are read (passwd) before Landlock denies reads, the ruleset descriptor is closed
    # before RLIMIT_NOFILE forbids new ones, and the uid is dropped before RLIMIT_NPROC is set
    uid, gid = _nobody()
    layers = _landlock()
    layers.update(_drop_root(uid, gid))
    layers.update(_limits(memory_mb))
    guard = _Guard()
    if audit:
        sys.addaudithook(guard)
    layers["audit_hook"] = "on" if audit else "off"
    stdout.write((json.dumps({"ready": True, "layers": layers}) + "\n").encode())
    stdout.flush()
    for line in stdin:
        try:
            job = json.loads(line)
            jid = job["id"]
        except (ValueError, KeyError, TypeError):
            stdout.write(b'{"id": null, "passed": null, "error": "unreadable job"}\n')
            stdout.flush()
            continue
        if resource is not None and isinstance(job.get("cpu_s"), (int, float)):
            used = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(used.ru_utime + used.ru_stime + float(job["cpu_s"])) + 1
            try:
                resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))
            except (ValueError, OSError):
                pass
        res = run_job(job, guard)
        res.update(id=jid, denied=sorted(set(guard.denied)))
        stdout.write((json.dumps(res) + "\n").encode())
        stdout.flush()


if __name__ == "__main__":
    main()
