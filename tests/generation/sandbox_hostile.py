"""Hostile code against the python sandbox, run as a script by tests/generation/test_sandbox.py.

`python sandbox_hostile.py MARK SECRET_FILE [tripwire|no-tripwire]` plays the trainer: a process with
secrets in its environment (the test sets them) that runs each case through `run_python` and prints
one JSON object: each case's result, what the host looked like after it, and that it is still alive
(a case that kills it leaves no JSON). The test runs it as root and as a normal user; `no-tripwire`
switches the audit hook off, so what is checked is what the kernel enforces on its own.
"""

import json
import os
import socket
import sys

from alignlab.generation import sandbox

MARK, SECRET_FILE = sys.argv[1], sys.argv[2]
sandbox._TRIPWIRE = len(sys.argv) < 4 or sys.argv[3] != "no-tripwire"
ME = os.getpid()
SMALL = sandbox.SandboxLimits(cpu_seconds=2, wall_seconds=4, memory_mb=256)

# The dir_fd and symlink route out of the working directory (FIELD_NOTES): `a/L` is made to point at
# "/" through a link in `a`, while every path the old audit hook checked resolved inside the cwd.
DIR_FD_ROUTE = """
import os
k = os.getcwd().rstrip("/").count("/") + 1  # '..' steps from cwd/a up to /
deep = "/".join(["d"] * (k + 1))
os.makedirs(deep)
os.symlink(deep, "q")
os.mkdir("a")
d = os.open("a", os.O_RDONLY)
os.symlink(".", "q", dir_fd=d)
os.symlink("q" + "/.." * k, "L", dir_fd=d)
"""

CASES = {
    "environ": f"""
import os
seen = [dict(os.environ)]
pids = ["{ME}", str(os.getppid()), "1", "self"]
if os.path.isdir("/proc"):
    pids += [p for p in os.listdir("/proc") if p.isdigit()]
for pid in pids:
    try:
        with open(f"/proc/{{pid}}/environ", "rb") as f:
            seen.append(f.read().decode(errors="replace"))
    except OSError as e:
        seen.append(f"{{pid}}: {{type(e).__name__}}")
print(seen)
""",
    "kill": f"""
import os, signal
for pid in ({ME}, os.getppid()):
    try:
        os.kill(pid, signal.SIGKILL)
        print("sent", pid)
    except OSError as e:
        print("refused", pid, type(e).__name__)
visible = []
for pid in range(1, {ME} + 1000):
    try:
        os.kill(pid, 0)
        visible.append(pid)
    except OSError:
        pass
print("visible", visible)
""",
    "write_out": DIR_FD_ROUTE + f"""
import sys
for path, dir_fd in (("L/tmp/{MARK}-dirfd", d), ("/tmp/{MARK}-direct", None), (sys.prefix + "/{MARK}-prefix", None),
                     ("/usr/{MARK}-usr", None)):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dir_fd))
        print("wrote", path)
    except OSError as e:
        print("refused", path, type(e).__name__)
""",
    "read_out": DIR_FD_ROUTE + f"""
for path, dir_fd in (("L{SECRET_FILE}", d), ("{SECRET_FILE}", None)):
    try:
        print(open(os.open(path, os.O_RDONLY, dir_fd=dir_fd)).read())
    except OSError as e:
        print("refused", path, type(e).__name__)
""",
    "leave": f"""
import os, sys
open("/tmp/{MARK}-left", "w").write("x")
open("{MARK}-cwd", "w").write("x")
if os.fork() == 0:  # a process that leaves the group and outlives the code, if it can
    os.setsid()
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{MARK}-sleeper"])
print("forked")
""",
    "find_left": f"""
import os
print(sorted(os.listdir("/tmp")), sorted(os.listdir(".")), os.path.exists("/tmp/{MARK}-left"))
""",
    "nested_userns": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                     "print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))",  # CLONE_NEWUSER
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "memory": "x = bytearray(10 * 1024**3)\nprint('allocated')",
}


def leftovers() -> list[str]:
    """Command lines of processes this script's sandbox runs left behind (their arguments carry ppid=ME)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if f"ppid={ME}" in cmd or f"{MARK}-sleeper" in cmd:
            found.append(cmd.replace("\0", " ")[-200:])
    return found


def main() -> None:
    report = {}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        CASES["network"] = (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                            "print('CONNECTED')")
        for name, code in CASES.items():
            r = sandbox.run_python(code, SMALL)
            report[name] = {"ok": r.ok, "output": r.output[-4000:], "error": r.error, "seconds": r.seconds,
                            "leftovers": leftovers(), "host_tmp": sorted(n for n in os.listdir("/tmp") if MARK in n)}
        server.setblocking(False)
        try:
            server.accept()
            report["network"]["accepted"] = True
        except BlockingIOError:
            report["network"]["accepted"] = False
    report["uid"] = os.getuid()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
