"""Run model-written Python in a separate, locked-down process: the `python` tool of GRPO rollouts.

Layers, outermost first, each meant to hold when the ones inside it fail:

* A child `sys.executable -I -B` (no PYTHON* variables, user site or cwd on sys.path), a fresh tiny
  environment (no inherited keys), stdin /dev/null, a fresh temporary cwd deleted afterwards, its own
  session. The parent enforces wall time and an output cap (it never reads more than output_bytes+1)
  and then kills the whole run. rlimits: CPU, address space, file size, files, processes, no core.
* As root (root ignores RLIMIT_NPROC and file modes): a fresh unused uid/gid per run (concurrent runs
  cannot signal, read or starve each other), no groups, no_new_privs, and new network (a down
  loopback), mount and PID namespaces. The end of the PID namespace kills and reaps all the run
  started, also what left its process group and even where PID 1 reaps no orphans. The cwd is a
  tmpfs of file_bytes; a private dir holding Python (/root for /root/.pyenv) is covered by an empty
  tmpfs with only the Python tree bound back. A refused namespace is skipped; if the uid then cannot
  start Python the run fails closed ("sandbox setup failed").
* An audit hook (PEP 578) refuses socket connect/bind/send and lookups, process creation other than
  fork, ctypes library loading and foreign calls (importing ctypes stays possible: sympy needs it),
  gc walks, and file access outside the cwd except reading Python's own tree and import paths.

Not covered (this is not a VM): kernel exploits, side channels, host load within the limits, and
world-readable files read by routes the hook misses: it is a tripwire, which code set on escaping
defeats (monkeypatching what it calls, ctypes pointer tricks, _posixsubprocess); uid, namespaces and
rlimits are the boundary. Without root only the process, rlimit and hook layers apply, and
RLIMIT_NPROC counts all that user's processes. Linux only; preexec_fn carries CPython's caveats
about forking a multi-threaded caller.
"""

from __future__ import annotations

import dataclasses
import os
import random
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512  # address space, so it bounds mmap and thread stacks too
    output_bytes: int = 65536  # stdout and stderr together
    max_processes: int = 16  # processes and threads of the run's uid
    file_bytes: int = 16 << 20  # one file; all files together when the workdir is a tmpfs


@dataclasses.dataclass
class SandboxResult:
    ok: bool
    output: str  # stdout with stderr interleaved (tracebacks included), at most output_bytes
    error: str | None
    seconds: float


_NEWNS, _NEWPID, _NEWNET = 0x00020000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 8192, 16384, 1 << 18
_PDEATHSIG, _NO_NEW_PRIVS = 1, 38  # prctl options
_UID_BASE = 0x70000000  # far above real users and the usual subuid ranges of rootless containers

# `python -I -B -u -c _BOOT cwd codefile`: read the code, arm the hook, run the code as __main__.
_BOOT = r'''
import os, sys, traceback
def _arm(work, code_file, real=os.path.realpath, paths=(str, bytes, os.PathLike)):
    rw = (real(work),)
    ro = rw + tuple({real(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                     code_file, "/dev/null", "/dev/urandom", "/usr/share/zoneinfo", *sys.path) if p})
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    deny = set("socket.connect socket.bind socket.sendto socket.sendmsg socket.getaddrinfo socket.gethostbyname "
               "socket.gethostbyaddr os.system os.exec os.posix_spawn os.spawn subprocess.Popen ctypes.dlsym "
               "ctypes.dlsym/handle ctypes.call_function ctypes.cdata ctypes.string_at ctypes.wstring_at "
               "gc.get_objects gc.get_referrers gc.get_referents".split())
    writes = set("os.mkdir os.remove os.rmdir os.rename os.symlink os.link os.chmod os.chown os.truncate "
                 "os.utime".split())
    def allowed(path, roots):
        p = real(os.fsdecode(path)) if isinstance(path, paths) else None  # an fd or a number: nothing to check
        return p is None or any(p == r or p.startswith(r + os.sep) for r in roots)
    def hook(event, args):
        if event == "open" and not allowed(args[0], rw if (args[2] or 0) & write else ro):
            raise PermissionError(f"sandbox: access to {args[0]!r} is not allowed")
        if event in writes or event in ("os.listdir", "os.scandir", "os.chdir"):
            for a in args:
                if not allowed(a, rw if event in writes else ro):
                    raise PermissionError(f"sandbox: {event} on {a!r} is not allowed")
        if event in deny or event == "ctypes.dlopen" and args[0] is not None:  # importing ctypes opens None
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(hook)
_src = open(sys.argv[2], encoding="utf-8").read()
_arm(*sys.argv[1:])
del _arm  # leave the code no path to the hook
sys.argv[:] = sys.argv[2:]
try:
    exec(compile(_src, sys.argv[0], "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    raise
except BaseException as e:
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without this bootstrap's frame
    sys.exit(1)
'''

# Waits for one child, reaping orphans meanwhile (it may be PID 1 of the namespace), and exits with
# the child's status, a signal as 128 + its number since PID 1 cannot kill itself with one.
_WAITER = r'''
import os, sys
os.closerange(0, 1 << 16)
while True:
    pid, status = os.wait()
    if pid == int(sys.argv[1]):
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
'''

_LIBC = None


def _c(name: str, *args, check: bool = True) -> bool:
    """A libc call (symbols resolved by the parent, so nothing is loaded in the forked child)."""
    import ctypes  # already imported by the parent
    if getattr(_LIBC, name)(*args) == 0:
        return True
    if check:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return False


def _exposure_plan(base: str) -> list:
    """[(private dir, [(python dir, stage dir)])] for the Python dirs a dropped uid cannot reach."""
    dirs = {os.path.realpath(d) for d in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                          os.path.dirname(os.path.realpath(sys.executable)))}
    plan: dict = {}
    for d in sorted(dirs):  # parents first, so a nested dir rides on its parent's bind
        cur = "/"
        for part in d.strip("/").split("/"):
            cur = os.path.join(cur, part)
            if not os.stat(cur).st_mode & 0o001:
                kept = plan.setdefault(cur, [])
                if cur != d and not any(d.startswith(k + "/") for k, _ in kept):
                    kept.append((d, os.path.join(base, f"stage{sum(map(len, plan.values()))}")))
                    os.mkdir(kept[-1][1])
                break
    return list(plan.items())


def _isolate(work: str, plan: list, limits: SandboxLimits, uid: int) -> bool:
    """Namespaces (in the child, as root); returns whether a PID namespace was made."""
    _c("unshare", _NEWNET, check=False)
    # Mounts only once nothing propagates back to the host.
    if _c("unshare", _NEWNS, check=False) and _c("mount", b"none", b"/", None, _MS_REC | _MS_PRIVATE, None,
                                                 check=False):
        for hidden, binds in plan:
            for d, stage in binds:
                _c("mount", d.encode(), stage.encode(), None, _MS_BIND | _MS_REC, None)
            _c("mount", b"tmpfs", hidden.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755")
            for d, stage in binds:
                os.makedirs(d, exist_ok=True)
                _c("mount", stage.encode(), d.encode(), None, _MS_MOVE, None)
        opts = f"size={limits.file_bytes},nr_inodes=4096,mode=0700,uid={uid},gid={uid}".encode()
        if _c("mount", b"tmpfs", work.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts, check=False):
            os.chdir(work)  # subprocess chdir'd before this mount: step onto the tmpfs
    return _c("unshare", _NEWPID, check=False)


def _prepare_child(limits: SandboxLimits, work: str, plan: list, uid: int | None, report: int) -> None:
    """preexec_fn: runs in the forked child, before exec."""
    try:
        if uid is not None:
            _c("prctl", _PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a dead caller takes the run down
            if _isolate(work, plan, limits, uid):
                for step in range(2):  # this process waits for the namespace's init, which waits for the code
                    pid = os.fork()
                    if pid:
                        if step == 0:
                            os.write(report, f"pid {pid}\n".encode())
                        os.close(report)
                        os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", _WAITER, str(pid)])
                    _c("prctl", _PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        cpu = max(1, int(limits.cpu_seconds + 0.999))
        for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU, then SIGKILL a second later
                                (resource.RLIMIT_AS, limits.memory_mb << 20, limits.memory_mb << 20),
                                (resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
                                (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
                                (resource.RLIMIT_NOFILE, 256, 256), (resource.RLIMIT_CORE, 0, 0)):
            cap = resource.getrlimit(res)[1]  # without root a hard limit can only go down
            cap = hard if cap == resource.RLIM_INFINITY else min(hard, cap)
            resource.setrlimit(res, (min(soft, cap), cap))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            _c("prctl", _NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary hands privileges back
        os.close(report)
    except BaseException as e:
        os.write(report, f"{type(e).__name__}: {e}\n".encode())
        raise


def _read_capped(stream, deadline: float, cap: int) -> tuple[bytes, str | None]:
    """Output until EOF, the deadline ("wall") or more than `cap` bytes ("output"); never more in memory."""
    buf = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                chunk = os.read(stream.fileno(), min(1 << 16, cap + 1 - len(buf)))
                if not chunk:
                    return bytes(buf), None
                buf += chunk
                if len(buf) > cap:
                    return bytes(buf[:cap]), "output"
    return bytes(buf), "wall"


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:  # already gone
        pass


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in a fresh sandboxed interpreter; nothing the code does makes this raise."""
    global _LIBC
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="alignlab-sandbox-")
    proc = ns_init = None
    try:
        work, code_file = os.path.join(base, "work"), os.path.join(base, "snippet.py")
        os.mkdir(work, 0o700)
        with open(code_file, "w", encoding="utf-8", errors="replace") as f:  # lone surrogates fail in the child
            f.write(code)
        uid, plan = None, []
        if os.geteuid() == 0:
            if _LIBC is None:
                import ctypes
                _LIBC = ctypes.CDLL(None, use_errno=True)
                _LIBC.unshare, _LIBC.mount, _LIBC.prctl  # look the symbols up here, not in the forked child
            uid = _UID_BASE + random.randrange(1 << 24)
            os.chmod(base, 0o711)
            os.chmod(code_file, 0o644)
            os.chown(work, uid, uid)
            plan = _exposure_plan(base)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # threads are processes
        report_r, report_w = os.pipe()  # the child's setup error, or the host pid of the namespace's init
        failure, report = None, ""
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", _BOOT, work, code_file], cwd=work, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=(report_w,), preexec_fn=lambda: _prepare_child(limits, work, plan, uid, report_w))
        except (OSError, subprocess.SubprocessError) as e:
            failure = e
        finally:
            os.close(report_w)
            os.set_blocking(report_r, False)
            try:
                report = os.read(report_r, 4096).decode(errors="replace").strip()
            except BlockingIOError:
                pass
            os.close(report_r)
        if proc is None:
            why = [line for line in report.splitlines() if not line.startswith("pid ")] or [failure]
            return SandboxResult(False, "", f"sandbox setup failed: {why[-1]}", time.monotonic() - start)
        if report.startswith("pid "):
            try:
                ns_init = os.pidfd_open(int(report.split()[1]))
            except OSError:
                ns_init = -1  # already exited: the namespace is gone
        deadline = start + limits.wall_seconds
        out, reason = _read_capped(proc.stdout, deadline, limits.output_bytes)
        if reason is None:  # EOF: wait for the exit without reaping, so the group id stays reserved for the kill
            pidfd = os.pidfd_open(proc.pid)
            if not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                reason = "wall"
            os.close(pidfd)
        # Kill what is left: the namespace through its init (the kernel kills and reaps the rest), else
        # the process group, whose id is still reserved because `proc` is not reaped yet.
        if ns_init is None:
            _quiet(os.killpg, proc.pid, signal.SIGKILL)
        elif ns_init >= 0:
            _quiet(signal.pidfd_send_signal, ns_init, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # stuck in the kernel: do not hang the caller on it
            _quiet(os.killpg, proc.pid, signal.SIGKILL)
        return SandboxResult(*_verdict(out, reason, proc.returncode, ns_init is not None, limits),
                             seconds=time.monotonic() - start)
    finally:
        if proc is not None:
            proc.stdout.close()
        if ns_init is not None and ns_init >= 0:
            os.close(ns_init)
        shutil.rmtree(base, ignore_errors=True)


def _verdict(out: bytes, reason: str | None, rc: int | None, waiters: bool, limits: SandboxLimits) -> tuple:
    text = out.decode("utf-8", errors="replace")
    sig = -rc if rc is not None and rc < 0 else rc - 128 if waiters and rc is not None and 128 < rc < 193 else None
    if reason == "wall":
        return False, text, f"timeout: wall time limit {limits.wall_seconds:g} s"
    if reason == "output":
        return False, text, f"output limit: more than {limits.output_bytes} bytes"
    if sig == signal.SIGXCPU:
        return False, text, f"timeout: cpu time limit {limits.cpu_seconds:g} s"
    if rc and "MemoryError" in text[-4000:]:
        return False, text, "memory limit"
    if sig is not None:
        return False, text, f"killed by signal {sig}"
    return rc == 0, text, None if rc == 0 else f"exit code {rc}"


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it prints.

    Each call is a fresh interpreter with no network, an empty private working directory and limits on
    CPU time, wall time, memory and output; nothing carries over between calls.

    Args:
        code: A complete Python script. Print the values you need: only printed output comes back.

    Returns:
        The printed output, or a message starting with "Error:" when the code failed or hit a limit.
    """
    try:
        result = run_python(code, SandboxLimits(wall_seconds=8))  # inside the default grpo.tool_timeout of 10 s
    except Exception as e:  # a tool call must never crash the rollout
        return f"Error: sandbox failure: {type(e).__name__}: {e}"
    if result.ok:
        return result.output
    return f"Error: {result.error}" + (f"\n{result.output}" if result.output else "")
