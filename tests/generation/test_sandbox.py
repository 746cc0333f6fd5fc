"""The sandboxed `python` tool: ordinary code runs, hostile code fails within its limits and the caller goes on.

Hostile code runs twice more through sandbox_hostile.py, as root and as a normal user (uid 65534),
with the audit hook off: what must hold there is what the kernel enforces.
"""

import functools
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.generation import sandbox
from alignlab.generation.sandbox import SandboxLimits, python, run_python

SMALL = SandboxLimits(cpu_seconds=2, wall_seconds=3, memory_mb=256)
ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
HOSTILE = Path(__file__).with_name("sandbox_hostile.py")


@functools.cache
def isolation_unavailable() -> str | None:
    """Why this machine cannot run the isolated mode (user namespaces refused), or None."""
    result = run_python("pass", SandboxLimits(wall_seconds=30)) if sandbox.python_sandbox_mode() == "isolated" else None
    return None if result is None or result.ok else result.error


@pytest.fixture(autouse=True)
def default_mode(monkeypatch):
    """Where the machine allows no isolation, the tests of limits and refusals run in unsafe mode."""
    monkeypatch.setattr(sandbox, "_mode", None)
    monkeypatch.delenv("ALIGNLAB_PYTHON_SANDBOX", raising=False)
    if isolation_unavailable():
        monkeypatch.setattr(sandbox, "_mode", "unsafe")


@pytest.fixture
def isolated(monkeypatch):
    """For tests of what only the isolated mode promises."""
    if isolation_unavailable():
        pytest.skip(isolation_unavailable())
    monkeypatch.setattr(sandbox, "_mode", "isolated")


def sandbox_processes() -> list[str]:
    """Processes of this test process's sandbox runs still alive: their command line names it (ppid=)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"sandbox_boot.py" in cmd and f"ppid={os.getpid()}".encode() in cmd:
            found.append(pid)
    return found


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.MULTILINE).group(1))


def test_ordinary_code_prints_its_output():
    result = run_python("print(sum(range(10)))", SMALL)
    assert (result.ok, result.output, result.error) == (True, "45\n", None)
    code = ("import math, itertools, json, tempfile\n"
            "open('notes.txt', 'w').write('a,b')\n"
            "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('t')\n"
            "print(math.comb(5, 2), len(list(itertools.permutations('abc'))), json.dumps({'k': 'v'.upper()}),\n"
            "      open('notes.txt').read().split(','), open(f.name).read())")
    result = run_python(code, SMALL)
    assert result.ok, result.output
    assert result.output == '10 6 {"k": "V"} [\'a\', \'b\'] t\n'


def test_sympy_imports_although_ctypes_is_fenced():
    pytest.importorskip("sympy")
    result = run_python("import sympy\nprint(sympy.factorint(360))", SandboxLimits(wall_seconds=20))
    assert result.ok and result.output == "{2: 3, 3: 2, 5: 1}\n", result.output


def test_an_exception_is_an_error_with_its_traceback():
    result = run_python("x = 1\nprint('before')\nx / 0", SMALL)
    assert not result.ok and result.error == "exit code 1"
    assert result.output.startswith("before\n") and "ZeroDivisionError" in result.output
    assert "<string>" not in result.output  # the bootstrap's own frame is left out


def test_python_tool_returns_stdout_or_an_error_message():
    assert python("print('hi')") == "hi\n"
    failed = python("import sys\nprint('partial')\nsys.exit(2)")
    assert failed.startswith("Error: exit code 2") and "partial" in failed
    assert python("1/0").startswith("Error:") and "ZeroDivisionError" in python("1/0")
    assert python("def (").startswith("Error:")


def test_json_schema_of_the_tool():
    from transformers.utils import get_json_schema
    function = get_json_schema(python)["function"]
    assert function["name"] == "python"
    assert function["parameters"]["properties"]["code"]["type"] == "string"
    assert function["parameters"]["required"] == ["code"]


def test_infinite_loop_stops_at_the_cpu_limit():
    result = run_python("while True: pass", SMALL)
    assert not result.ok and result.error.startswith("timeout"), result.error
    assert result.seconds < SMALL.wall_seconds + 2


def test_sleep_stops_at_the_wall_limit():
    result = run_python("import time\nprint('start')\ntime.sleep(100)", SMALL)
    assert (result.ok, result.error) == (False, "timeout: wall time limit 3 s")
    assert result.output == "start\n"  # what was printed before the kill comes back
    assert SMALL.wall_seconds <= result.seconds < SMALL.wall_seconds + 2


def test_fork_bomb_is_contained_and_leaves_no_process():
    result = run_python("import os\nprint(os.getuid(), flush=True)\nwhile True:\n    os.fork()", SMALL)
    assert not result.ok and result.seconds < SMALL.wall_seconds + 2
    assert "BlockingIOError" in result.output or result.error.startswith(("timeout", "output limit"))
    assert sandbox_processes() == []
    assert run_python("print('still fine')", SMALL).output == "still fine\n"


def test_a_process_that_leaves_the_group_is_killed_too(isolated):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    result = run_python(code, SMALL)
    assert result.ok and result.output == "parent done\n" and result.seconds < 2
    assert sandbox_processes() == []


def test_huge_allocation_is_a_memory_error_in_the_child_only():
    before = rss_kb()
    result = run_python("x = bytearray(10 * 1024**3)\nprint('allocated')", SMALL)
    assert (result.ok, result.error) == (False, "memory limit")
    assert "MemoryError" in result.output and "allocated" not in result.output
    assert rss_kb() - before < 50_000


def test_no_network_connection():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        local = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                           "print('CONNECTED')", SMALL)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listening socket
    assert not local.ok and "CONNECTED" not in local.output
    remote = run_python("import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)\nprint('CONNECTED')",
                        SMALL)
    assert not remote.ok and "CONNECTED" not in remote.output and remote.seconds < SMALL.wall_seconds + 1


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "pwned.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')", SMALL)
    assert not result.ok and not target.exists()


def test_cannot_read_the_callers_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-41c9")
    result = run_python(f"print(open({str(secret)!r}).read())", SMALL)
    assert not result.ok and "TOPSECRET-41c9" not in result.output
    # A world-readable file in a world-readable directory: file modes do not stop this one, the audit hook must.
    fd, path = tempfile.mkstemp(dir="/tmp")
    try:
        os.write(fd, b"WORLD-7d2e")
        os.close(fd)
        os.chmod(path, 0o644)
        result = run_python(f"print(open({path!r}).read())", SMALL)
        assert not result.ok and "WORLD-7d2e" not in result.output
    finally:
        os.remove(path)


def test_printing_100_mb_stops_at_the_output_limit():
    result = run_python('print("x" * 100_000_000)', SMALL)
    assert not result.ok and result.error.startswith("output limit"), result.error
    assert 0 < len(result.output) <= SMALL.output_bytes and set(result.output) == {"x"}
    assert result.seconds < 3


@pytest.mark.parametrize("code", [
    "import os\nos.system('echo MARK$((40+2))')",
    "import subprocess\nsubprocess.run(['sh', '-c', 'echo MARK$((40+2))'])",
    "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo MARK$((40+2))'])",
    "import ctypes\nctypes.CDLL(None).system(b'echo MARK$((40+2))')",
    "import ctypes\nctypes.CDLL('libc.so.6')",
])
def test_shells_subprocesses_and_libc_are_refused(code):
    result = run_python(code, SMALL)
    assert not result.ok and "MARK42" not in result.output
    assert "PermissionError: sandbox:" in result.output


def test_the_environment_is_fresh_and_nothing_is_left_on_the_host(isolated, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_SECRET", "s3cr3t-5a1f")
    mark = f"alignlab-test-{secrets.token_hex(4)}"
    result = run_python(f"import os\nprint(os.getcwd())\nprint(sorted(os.environ.items()))\n"
                        f"open('{mark}', 'w').write('x')", SMALL)
    assert result.ok, result.output
    cwd, env = result.output.splitlines()
    assert "s3cr3t-5a1f" not in env and "ALIGNLAB_SECRET" not in env
    assert cwd == "/tmp" and "('HOME', '/tmp')" in env  # its own /tmp, not the host's
    assert not os.path.exists(f"/tmp/{mark}")
    assert run_python(f"import os\nprint(os.path.exists('{mark}'), os.listdir('.'))", SMALL).output == "False []\n"


def test_unsafe_mode_runs_in_a_host_directory_that_is_removed(monkeypatch):
    monkeypatch.setattr(sandbox, "_mode", "unsafe")
    monkeypatch.setenv("ALIGNLAB_SECRET", "s3cr3t-5a1f")
    result = run_python("import os\nprint(os.getcwd())\nprint(sorted(os.environ.items()))", SMALL)
    assert result.ok, result.output
    cwd, env = result.output.splitlines()
    assert "s3cr3t-5a1f" not in env
    assert cwd.startswith(tempfile.gettempdir() + "/alignlab-sandbox-") and not os.path.exists(cwd)


# --- hostile code as root and as a normal user (the kernel's layers alone: the audit hook is off) ---

def exposure_script() -> list[str]:
    """Shell lines that, in a private mount namespace of root's, make the Python tree reachable by another
    uid without changing the host: a dir closed to others on the way to it (/root for /root/.pyenv) is
    covered by a tmpfs and the tree bound back."""
    plan: dict[str, set[str]] = {}
    for tree in {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}:
        cur = "/"
        for part in tree.strip("/").split("/"):
            nxt = os.path.join(cur, part)
            if not os.stat(cur).st_mode & 0o001:
                plan.setdefault(cur, set()).add(nxt)
                break
            cur = nxt
    lines = ["set -e", 'stage=$(mktemp -d)']
    for closed, keeps in plan.items():
        for i, keep in enumerate(sorted(keeps)):
            lines += [f"mkdir $stage/{i}", f"mount --bind {shlex.quote(keep)} $stage/{i}"]
        lines.append(f"mount -t tmpfs -o mode=0755,size=64k tmpfs {shlex.quote(closed)}")
        for i, keep in enumerate(sorted(keeps)):
            lines += [f"mkdir -p {shlex.quote(keep)}", f"mount --move $stage/{i} {shlex.quote(keep)}"]
    return lines + ["rm -r $stage"]


MASKED_PROC = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs none /proc/sys/fs && exec "$@"', "-"]


def run_hostile(tmp_path, as_nobody: bool = False, wrap: list[str] = ()) -> tuple[dict, str, str]:
    """sandbox_hostile.py's report, run as this uid or as nobody (65534, no groups, no capabilities), or
    under `wrap`, a command that runs the rest of its arguments."""
    mark, token = f"alignlab-hostile-{secrets.token_hex(4)}", f"hf_{secrets.token_hex(8)}"
    secret = Path(tempfile.mkdtemp(prefix="alignlab-test-")) / "secret.txt"  # world-readable, in the host's /tmp
    secret.write_text(f"SECRET-{token}")
    secret.parent.chmod(0o755)
    secret.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "HOME": "/", "PYTHONPATH": str(REPO), "HF_TOKEN": token,
           "WANDB_API_KEY": token, "LANG": "C.UTF-8"}
    cmd = [*wrap, sys.executable, str(HOSTILE), mark, str(secret), "no-tripwire"]
    if as_nobody:
        drop = "exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all -- " + shlex.join(cmd)
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(exposure_script() + [drop])]
    try:
        done = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=240, cwd="/")
        assert done.returncode == 0, f"the driver died (killed by its sandbox?): {done.returncode}\n{done.stderr[-3000:]}"
        return json.loads(done.stdout.splitlines()[-1]), mark, token
    finally:
        leaked = [n for n in os.listdir("/tmp") if n.startswith(mark)]
        shutil.rmtree(secret.parent)
        for name in leaked:
            os.remove(os.path.join("/tmp", name))
        assert leaked == [], f"left in the host's /tmp: {leaked}"


def check_hostile(report: dict, mark: str, token: str) -> None:
    for name, r in report.items():
        if isinstance(r, dict):
            assert r["leftovers"] == [] and r["host_tmp"] == [], (name, r)
            assert token not in r["output"], (name, r["output"])
    assert "'HOME': '/tmp'" in report["environ"]["output"]  # it ran, with an environment of its own
    visible = [int(p) for p in re.search(r"visible \[(.*)\]", report["kill"]["output"]).group(1).split(", ") if p]
    assert len(visible) <= 3 and all(p < 100 for p in visible), visible  # only its own PID namespace
    write = report["write_out"]["output"]
    assert f"wrote L/tmp/{mark}-dirfd" in write and f"wrote /tmp/{mark}-direct" in write  # into its own /tmp
    assert "refused" in write and "prefix" in write.split("refused")[1] and "wrote /usr" not in write
    assert "SECRET-" not in report["read_out"]["output"] and "refused" in report["read_out"]["output"]
    assert report["leave"]["ok"] and report["leave"]["output"] == "forked\n"
    assert report["find_left"]["output"] == "[] [] False\n", report["find_left"]  # the next call starts empty
    assert not report["fork_bomb"]["ok"] and report["fork_bomb"]["seconds"] < 8
    assert report["nested_userns"]["output"].startswith("-1 ")  # no user namespace (and capabilities) of its own
    assert report["memory"]["error"] == "memory limit"
    assert not report["network"]["ok"] and "CONNECTED" not in report["network"]["output"]
    assert not report["network"]["accepted"]


def test_hostile_code_as_this_user(isolated, tmp_path):
    report, mark, token = run_hostile(tmp_path, as_nobody=False)
    assert report["uid"] == os.getuid()
    check_hostile(report, mark, token)


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv") or not shutil.which("unshare"),
                    reason="simulating a normal user takes root, setpriv and unshare (as a normal user the test above is it)")
def test_hostile_code_as_a_normal_user(isolated, tmp_path):
    report, mark, token = run_hostile(tmp_path, as_nobody=True)
    assert report["uid"] == 65534
    check_hostile(report, mark, token)


# --- the audit hook resolves paths as the kernel does: dir_fd and symlink targets included ---

def test_hostile_code_where_the_host_proc_is_partly_masked(isolated, tmp_path):
    """As in many containers: the kernel then refuses the sandbox a /proc of its own."""
    if subprocess.run([*MASKED_PROC, "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("unshare -Urm is not available here")
    # As nobody when root: a user namespace of root's maps to uid 0, which RLIMIT_NPROC does not bind.
    report, mark, token = run_hostile(tmp_path, as_nobody=ROOT, wrap=MASKED_PROC)
    check_hostile(report, mark, token)
    code = ("import os, tempfile\nprint(os.path.exists('/proc/self'))\nwith tempfile.TemporaryDirectory() as t:\n"
            "    d = os.open(t, os.O_RDONLY)\n    os.mkdir('sub', dir_fd=d)\n    print(os.listdir(t))\n"
            "os.mkdir('x', dir_fd=os.dup(d))")
    probe = f"from alignlab.generation.sandbox import run_python\nprint(run_python({code!r}).output)"
    done = subprocess.run([*MASKED_PROC, sys.executable, "-c", probe], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.startswith("False\n['sub']\n"), done.stdout + done.stderr  # the hook still follows dir_fd
    assert "PermissionError: sandbox: cannot tell which directory dir_fd" in done.stdout


@pytest.mark.parametrize("mode", ["isolated", "unsafe"])
def test_the_hook_follows_dir_fd_and_symlink_targets(request, monkeypatch, mode):
    if mode == "isolated":
        request.getfixturevalue("isolated")
    monkeypatch.setattr(sandbox, "_mode", mode)
    mark = f"alignlab-test-{secrets.token_hex(4)}"
    route = HOSTILE.read_text().split('DIR_FD_ROUTE = """')[1].split('"""')[0]
    code = route + f"os.close(os.open('L/tmp/{mark}', os.O_CREAT | os.O_WRONLY, dir_fd=d))\nprint('WROTE')"
    result = run_python(code, SMALL)
    assert not os.path.exists(f"/tmp/{mark}")
    assert not result.ok and "WROTE" not in result.output
    assert "PermissionError: sandbox: os.symlink on 'q/../.." in result.output, result.output
    # Relative to a directory descriptor: refused outside, allowed inside (shutil.rmtree works that way).
    code = ("import os, sys, tempfile\nwith tempfile.TemporaryDirectory() as t:\n"
            "    open(t + '/f', 'w').write('x')\n    d = os.open(t, os.O_RDONLY)\n"
            "    os.mkdir('sub', dir_fd=d)\n    print(sorted(os.listdir(t)))\nprint(os.path.exists(t))\n"
            "p = os.open(sys.prefix, os.O_RDONLY)\n"
            "os.open('x', os.O_CREAT | os.O_WRONLY, dir_fd=p)")
    result = run_python(code, SMALL)
    assert result.output.startswith("['f', 'sub']\nFalse\n"), result.output
    assert "PermissionError: sandbox: open on 'x' is not allowed" in result.output


def test_signals_to_processes_not_its_own_are_refused():
    result = run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)", SMALL)
    assert "PermissionError: sandbox: os.kill" in result.output
    code = "import os, signal, time\npid = os.fork()\nif pid == 0:\n    time.sleep(30)\nos.kill(pid, signal.SIGKILL)\n" \
           "print(os.waitpid(pid, 0)[1])"
    assert run_python(code, SMALL).output == "9\n"  # its own child it may signal


# --- where no isolation is available: refused unless the user opts in ---

def test_without_user_namespaces_model_code_is_refused_unless_unsafe():
    if subprocess.run(["unshare", "-Ur", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("unshare -Ur is not available here")
    probe = (
        "import json\nfrom alignlab.errors import ConfigError\nfrom alignlab.generation import sandbox, tools\n"
        "out = {'refused': sandbox.run_python('print(41 + 1)').error}\n"
        "try:\n    tools.load_tools(['python'])\nexcept ConfigError as e:\n    out['load'] = str(e)\n"
        "sandbox.set_python_sandbox('unsafe')\nout['unsafe'] = sandbox.run_python('print(41 + 1)').output\n"
        "out['loaded'] = list(tools.load_tools(['python']))\nprint(json.dumps(out))")
    # A user namespace of this test's own in which no further user namespace may be made.
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    done = subprocess.run(["unshare", "-Ur", "sh", "-c", script], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["refused"].startswith("sandbox: cannot isolate") and "grpo.python_sandbox=unsafe" in out["refused"]
    assert "grpo.python_sandbox=unsafe" in out["load"]
    assert out["unsafe"] == "42\n" and out["loaded"] == ["python"]


def test_the_mode_is_checked():
    with pytest.raises(ConfigError, match="grpo.python_sandbox must be one of isolated, unsafe"):
        sandbox.set_python_sandbox("off")


def test_a_grpo_run_with_the_python_tool_is_refused_at_setup_unless_unsafe(tmp_path, tiny_model_dir, prompts,
                                                                            monkeypatch, capsys):
    from conftest import base_args, run_cli

    import alignlab.trainers.grpo as grpo_module

    monkeypatch.setattr(sandbox, "_checked", False)
    monkeypatch.setattr(sandbox, "run_python", lambda code, limits=None: sandbox.SandboxResult(
        False, "", sandbox._refusal("[Errno 28] unshare: No space left on device"), 0.0))  # a machine without them
    result = run_cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "a", "grpo.tools=[python]"), capsys)
    assert result.code == 2 and "grpo.python_sandbox=unsafe" in result.err and "Traceback" not in result.err

    def stop(*_, **__):  # the mode the trainer set, just before the tools load
        raise ConfigError(f"stopped in mode {sandbox.python_sandbox_mode()}")

    monkeypatch.setattr(grpo_module, "turn_settings", stop)
    args = base_args("grpo", tiny_model_dir, prompts, tmp_path / "b", "grpo.tools=[python]", "grpo.python_sandbox=unsafe")
    assert "stopped in mode unsafe" in run_cli(args, capsys).err
    bad = run_cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "c", "grpo.python_sandbox=strict"), capsys)
    assert bad.code == 2 and "grpo.python_sandbox must be isolated or unsafe" in bad.err
