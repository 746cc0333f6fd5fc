"""Run model-written Python in a separate, locked-down process: the `python` tool of GRPO rollouts.

`grpo.python_sandbox=isolated` (the default) runs each call in namespaces of its own, built the same
way for root and for a normal user from unprivileged user namespaces (the child's side, step by step,
is sandbox_boot.py). What holds, as root and as a normal user alike:

* A fresh interpreter (`-I -S`: no PYTHON* variables, user site or cwd on sys.path; site-packages are
  added without running .pth import lines) with a fresh tiny environment (no inherited keys such as
  HF_TOKEN), stdin /dev/null, its own session. The caller never forks itself into running Python (no
  preexec_fn: a multi-threaded trainer is safe). It enforces wall time and an output cap (it never reads
  more than output_bytes+1), then has the namespace ended and returns only once all of it is gone.
  rlimits: CPU, address space, file size, open files, processes, no core.
* New user, mount, PID, network, IPC, UTS and cgroup namespaces. The code runs as uid/gid 1000 of its
  own user namespace with no capabilities and no_new_privs, and may not create a user namespace of its
  own. Other processes cannot be named, let alone signalled (another PID namespace; the caller's pid
  means nothing inside, /proc shows only the run's own processes), and the only network is a loopback
  that is down. RLIMIT_NPROC counts the run's own processes only (the kernel counts per namespace).
* Its root is a read-only tmpfs holding only the Python trees and /usr (/lib*, /bin where they are not
  symlinks to it) bound read-only, /etc/ld.so.cache, /dev/null, zero, random, urandom, /proc of its
  own PID namespace where the kernel allows one (not where the host's /proc is partly masked, as in
  many containers), and /tmp: a tmpfs of file_bytes that is its cwd and HOME. So the caller's files and
  /proc/<caller>/environ are out of reach, nothing outside /tmp is writable, and nothing written
  survives the call: the host's filesystem, its /tmp included, is never written.
* An audit hook (PEP 578), a tripwire rather than the boundary: it refuses socket connect/bind/send
  and lookups, process creation other than fork, signals to processes not its own, ctypes library
  loading and foreign calls (importing ctypes stays possible: sympy needs it), gc walks, and file
  access outside /tmp except reading Python's own tree and import paths; paths are resolved as the
  kernel resolves them, relative to dir_fd and symlink targets relative to their link included.

Root and a normal user differ in who the code is outside its namespace. As root (of the initial user
namespace) it is a fresh unused uid and gid per run with no groups: root's processes are exempt from
RLIMIT_NPROC, and a kernel escape should not land as root. As a normal user it is that user, with
the user's supplementary groups (which cannot be dropped without privilege; they matter only for the
read-only trees it sees). Root inside a user namespace that maps it to the host's root (`unshare -Ur`
run by root, not the usual container mapping) is the caller's uid 0 again: isolated, but without the
process limit.

Where user namespaces are not available (user.max_user_namespaces 0, Ubuntu's apparmor restriction,
a container's seccomp profile), a call is refused with an error that names `grpo.python_sandbox=unsafe`;
loading the tool checks this once, so a run fails at setup rather than at its first tool call. `unsafe`
(the environment variable ALIGNLAB_PYTHON_SANDBOX=unsafe outside GRPO) skips the namespaces: only the
process, rlimit and hook layers apply, in a temporary directory of the host removed afterwards. The
code then runs as the caller's uid (root, where the trainer is root): whatever gets past the hook can read what the caller
can read (/proc/<caller>/environ included), signal the caller, write where it can and leave processes
that left the process group; RLIMIT_NPROC counts all that user's processes.

Not covered in either mode (this is not a VM): kernel exploits, side channels, host load within the
limits (CPU time, memory and pids are not a cgroup's; tmpfs pages are not in the address-space
limit), and reading what the bound trees hold (/usr and the Python trees, as the caller's uid). Where
the host's /proc/sys is read-only, code that gets past the hook may create user namespaces of its own
(with capabilities only over them). Linux only.
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from alignlab.errors import ConfigError

MODES = ("isolated", "unsafe")
_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_boot.py")
_INNER_ID = 1000  # sandbox_boot.INNER_ID: the code's uid and gid inside its user namespace
_UID_BASE = 0x70000000  # as root: far above real users and the usual subuid ranges of rootless containers
_MAX_CODE_BYTES = 1 << 20
_TRIPWIRE = True  # tests switch the audit hook off to check what the kernel enforces on its own
_mode: str | None = None
_checked = False


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512  # address space, so it bounds mmap and thread stacks too
    output_bytes: int = 65536  # stdout and stderr together
    max_processes: int = 16  # processes and threads of the run
    file_bytes: int = 16 << 20  # one file; isolated, all files together (the size of /tmp)


@dataclasses.dataclass
class SandboxResult:
    ok: bool
    output: str  # stdout with stderr interleaved (tracebacks included), at most output_bytes
    error: str | None
    seconds: float


def set_python_sandbox(mode: str) -> None:
    """The mode of every later call in this process (the GRPO trainer sets grpo.python_sandbox)."""
    global _mode, _checked
    if mode not in MODES:
        raise ConfigError(f"grpo.python_sandbox must be one of {', '.join(MODES)}, got {mode!r}")
    _mode, _checked = mode, _checked and mode == _mode


def python_sandbox_mode() -> str:
    mode = _mode or os.environ.get("ALIGNLAB_PYTHON_SANDBOX") or "isolated"
    if mode not in MODES:
        raise ConfigError(f"ALIGNLAB_PYTHON_SANDBOX must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_python_sandbox() -> None:
    """Refuse at setup, not at the first tool call, where model-written code could not be isolated."""
    global _checked
    if _checked or python_sandbox_mode() == "unsafe":
        return
    result = run_python("pass", SandboxLimits(wall_seconds=30))
    if not result.ok:
        raise ConfigError(f"the python tool: {result.error}")
    _checked = True


def _refusal(why: str) -> str:
    return (f"sandbox: cannot isolate model-written code on this machine ({why}). Allow unprivileged user "
            "namespaces (sysctl user.max_user_namespaces > 0; on Ubuntu also "
            "kernel.apparmor_restrict_unprivileged_userns=0), or set grpo.python_sandbox=unsafe "
            "(ALIGNLAB_PYTHON_SANDBOX=unsafe outside GRPO) to run it with rlimits and an audit hook only")


def _host_root() -> bool:
    """Root of the initial user namespace, which may map a fresh uid (root of a rootless container may not)."""
    try:
        with open("/proc/self/uid_map") as f:
            return os.geteuid() == 0 and f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _write_maps(pid: int, fresh: int | None) -> None:
    """Map the child's uid/gid in its new user namespace: to a fresh id as root (only a process outside the
    namespace may map an id other than its own), else to the caller's own."""
    uid, gid = (fresh, fresh) if fresh is not None else (os.geteuid(), os.getegid())
    for name, text in (("setgroups", "deny"), ("uid_map", f"{_INNER_ID} {uid} 1"),
                       ("gid_map", f"{_INNER_ID} {gid} 1")):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


class _Report:
    """The child's setup messages, one a line, until it closes the pipe (the code is about to run)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def line(self, deadline: float) -> str | None:
        """The next line; None at EOF; "timeout" when the deadline passes first."""
        while b"\n" not in self.buf:
            if not select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return "timeout"
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return self.buf.decode(errors="replace") or None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


def _start(proc: subprocess.Popen, report: _Report, data: bytes, fresh: int | None, isolated: bool,
           deadline: float) -> str | None:
    """The setup handshake; returns why it failed ("timeout" for the deadline), or None once the code runs."""
    if isolated:
        line = report.line(deadline)
        if line != "ready":
            return _failure(line)
        try:
            _write_maps(proc.pid, fresh)
        except OSError as e:
            return _refusal(f"writing its uid/gid maps: {e}")
    try:
        proc.stdin.write(data)  # the child reads it whole, then sets up the rest
        proc.stdin.close()
    except BrokenPipeError:
        pass
    line = report.line(deadline)
    return None if line is None else _failure(line)


def _failure(line: str | None) -> str:
    if line in (None, "timeout"):
        return line or "sandbox setup failed: the child exited during setup"
    kind, _, why = line.partition(" ")
    return _refusal(why) if kind == "noiso" else f"sandbox setup failed: {why}"


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


def _spawn(isolated: bool, work: str | None, fresh: int | None, report_w: int, limits: SandboxLimits):
    home = "/tmp" if isolated else work
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # threads are processes
    args = {"mode": "isolated" if isolated else "unsafe", "report": report_w, "ppid": os.getpid(),
            "gid": fresh, "work": work, "tripwire": int(_TRIPWIRE), "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_mb << 20, "file_bytes": limits.file_bytes,
            "max_processes": limits.max_processes}
    # No preexec_fn: the caller may be a multi-threaded trainer, and this way it is never forked
    # into running Python; every step happens in the fresh interpreter.
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", "-u", "-X", "utf8", _BOOT, *(f"{k}={v}" for k, v in args.items())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=work or "/",
        start_new_session=True, pass_fds=(report_w,))


def _stop(proc: subprocess.Popen, isolated: bool) -> None:
    """End whatever the run left. Isolated: the child kills the namespace's init and exits once the kernel
    has reaped everything in it. Unsafe: the process group (whose id stays reserved: not reaped yet)."""
    if isolated and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # already gone
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # stuck in the kernel: do not hang the caller on it
        return
    for _ in range(100):  # processes forked while the kill went round: until the group is empty
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            return
        time.sleep(0.01)


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in a fresh sandboxed interpreter; nothing the code does makes this raise."""
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    isolated = python_sandbox_mode() == "isolated"
    data = code.encode("utf-8", errors="replace")  # lone surrogates would fail in the child
    if len(data) > _MAX_CODE_BYTES:
        return SandboxResult(False, "", f"the code is over {_MAX_CODE_BYTES} bytes", 0.0)
    fresh = _UID_BASE + random.randrange(1 << 24) if _host_root() else None
    work = None if isolated else tempfile.mkdtemp(prefix="alignlab-sandbox-")
    proc = None
    report_r, report_w = os.pipe()
    try:
        try:
            proc = _spawn(isolated, work, fresh, report_w, limits)
        except OSError as e:
            return SandboxResult(False, "", f"sandbox setup failed: {e}", time.monotonic() - start)
        finally:
            os.close(report_w)
        failure = _start(proc, _Report(report_r), data, fresh, isolated, deadline)
        out, reason = b"", "wall" if failure == "timeout" else None
        if failure is None:
            out, reason = _read_capped(proc.stdout, deadline, limits.output_bytes)
            if reason is None:  # EOF: wait for the exit without reaping, so the group id stays reserved
                pidfd = os.pidfd_open(proc.pid)
                if not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    reason = "wall"
                os.close(pidfd)
        _stop(proc, isolated)
        if failure not in (None, "timeout"):  # with what the child printed (a crash's traceback)
            out = _read_capped(proc.stdout, time.monotonic() + 1, limits.output_bytes)[0]
            return SandboxResult(False, out.decode(errors="replace"), failure, time.monotonic() - start)
        return SandboxResult(*_verdict(out, reason, proc.returncode, isolated, limits),
                             seconds=time.monotonic() - start)
    finally:
        os.close(report_r)
        if proc is not None:
            proc.stdout.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


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
