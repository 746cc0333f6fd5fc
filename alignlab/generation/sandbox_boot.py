"""The program the python sandbox's child process runs (alignlab/generation/sandbox.py starts it).

`python -I -S -B -u -X utf8 sandbox_boot.py key=value ...`, the code on stdin. Standard library only
and never imported by alignlab: it runs in a fresh interpreter, by path.

Isolated mode, three processes (what each layer guards against: sandbox.py's docstring):
  boot   the process the caller started. As root it first drops its groups and takes a fresh gid. It
         enters new user, mount, PID, network, IPC, UTS and cgroup namespaces, says "ready" and reads
         the code to EOF while the caller writes its uid/gid maps (only a process outside the namespace
         may map a fresh uid). It opens the trees to expose while it still has the caller's uid (a
         root-only dir such as /root/.pyenv is reachable only then), takes the mapped uid, forks the
         namespace's init and waits for it; SIGTERM from the caller makes it kill init first.
  init   PID 1 of the new PID namespace, with the namespace's capabilities: builds the new root (below),
         forks the code's process and reaps until that one ends. Its exit ends the namespace: the
         kernel kills and reaps what is left before init is gone.
  code   drops every capability, sets no_new_privs and the rlimits, arms the audit hook, runs the code.
Unsafe mode: the boot process only sets the rlimits, arms the hook and runs the code in the caller's
temporary directory.

The new root is a read-only tmpfs holding: the Python trees and /usr (plus /lib*, /bin, /sbin where
they are not symlinks into /usr) bound read-only, /etc/ld.so.cache, /dev/null, zero, random and
urandom, /tmp (a tmpfs of file_bytes: cwd and HOME), and /proc of the new PID namespace where the
kernel allows one (on hosts whose /proc is partly masked, as in many containers, there is none).
Setup messages go to the caller on the `report` pipe, one a line: "ready", "noiso <why>" (the kernel
refused a step of the isolation), "error <why>"; the pipe closes as the code starts.
"""

import ctypes
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MNT_DETACH = 16384, 1 << 18, 2
# statvfs f_flag bits a read-only remount of a bind must keep (the kernel locks them in a user namespace)
KEPT_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: 1024,
              os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
INNER_ID = 1000  # the uid and gid the code has inside its user namespace
STAGE = "/tmp"  # where init assembles the new root (in its own mount namespace: the host never sees it)
LIBC = ctypes.CDLL(None, use_errno=True)


def c(name, *args):
    """A libc call that raises OSError on failure."""
    if getattr(LIBC, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    enc = (lambda s: None if s is None else os.fsencode(s))
    c("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def report(fd, line):
    os.write(fd, (line + "\n").encode())


def exposed():
    """([dirs to bind], [files and devices to bind], [(symlink, target)]), paths as on the host."""
    trees = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                           os.path.dirname(os.path.realpath(sys.executable)), "/usr")}
    dirs, links = [], []
    for tree in sorted(trees):  # parents first: a nested tree rides on its parent's bind
        if tree != "/" and not any(tree.startswith(d + "/") for d in dirs):
            dirs.append(tree)
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            dirs.append(top)
    files = [p for p in ("/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
             if os.path.exists(p)]
    return dirs, files, links


def build_root(dirs, files, links, opened, file_bytes):
    """In init, with the namespace's capabilities: assemble the new root at STAGE and pivot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1024")

    def new(path):
        return STAGE + path

    os.mkdir(new("/tmp"))
    mount("tmpfs", new("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"size={file_bytes},nr_inodes=4096,mode=0700,uid={INNER_ID},gid={INNER_ID}")
    for path in dirs + files:
        if path in dirs:
            os.makedirs(new(path), exist_ok=True)
        else:
            os.makedirs(os.path.dirname(new(path)), exist_ok=True)
            os.close(os.open(new(path), os.O_CREAT | os.O_WRONLY, 0o644))
        # Through the descriptor opened before the uid changed: the path itself may be unreachable now.
        mount(f"/proc/self/fd/{opened[path]}", new(path), None, MS_BIND | MS_REC)
        if not path.startswith("/dev/"):  # devices stay writable (/dev/null)
            kept = os.statvfs(new(path)).f_flag
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            mount(None, new(path), None, flags | sum(m for s, m in KEPT_FLAGS.items() if kept & s))
    for path, target in links:
        os.symlink(target, new(path))
    os.mkdir(new("/proc"))
    try:  # allowed only where the host's /proc is fully visible; the audit hook then resolves dir_fd
        mount("proc", new("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, new("/dev/" + name))
    except OSError:
        pass
    try:  # the code may not make user namespaces of its own (where it would hold capabilities again): the
        # limit set is the writer's namespace's, also through the host's /proc (read-only in some containers)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    except OSError:
        pass
    os.chdir(STAGE)
    c("pivot_root", b".", b".")  # the old root now sits on top of the new one: detach it
    c("umount2", b".", MNT_DETACH)
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def isolate(args, code_in):
    """boot and init; returns (in the code's process only) the code to run."""
    if args["gid"] != "None":  # root: drop its groups and gid while it still can; the uid changes below
        os.setgroups([])
        os.setgid(int(args["gid"]))
    c("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
      | CLONE_NEWCGROUP)
    report(int(args["report"]), "ready")
    code = code_in()  # EOF on stdin: the caller has written the uid/gid maps
    dirs, files, links = exposed()
    opened = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in dirs + files}
    os.setgid(INNER_ID)  # as root: the mapped fresh gid/uid; otherwise the caller's own, already current
    os.setuid(INNER_ID)
    init = os.fork()
    if init:
        os.closerange(0, 1 << 16)  # the output pipe closes when the namespace's processes are gone
        # The caller's stop: kill init, whose exit waits until the kernel has killed and reaped everything
        # in the namespace, so that when this process is gone, so is the run. Through a pidfd: once init
        # is reaped its pid may name another process.
        pidfd = os.pidfd_open(init)

        def stop(*_):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:  # already gone
                pass

        signal.signal(signal.SIGTERM, stop)
        os._exit(exit_status(os.waitpid(init, 0)[1]))
    c("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # boot killed: the namespace goes with it
    build_root(dirs, files, links, opened, int(args["file_bytes"]))
    child = os.fork()
    if child:
        os.closerange(0, 1 << 16)
        while True:  # orphans of the code are reparented here: reap them as well
            pid, status = os.wait()
            if pid == child:
                os._exit(exit_status(status))
    os.chdir("/tmp")
    drop_capabilities()
    return code


def exit_status(status):
    """A child's wait status as an exit code, a signal as 128 + its number (PID 1 cannot die of one it sends itself)."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def drop_capabilities():
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    c("capset", ctypes.byref(Header(0x20080522, 0)), ctypes.byref((ctypes.c_uint32 * 6)()))


def limit(args):
    cpu = max(1, int(float(args["cpu_seconds"]) + 0.999))
    mem, fsize, nproc = (int(args[k]) for k in ("memory_bytes", "file_bytes", "max_processes"))
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU, then SIGKILL a second later
                            (resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_FSIZE, fsize, fsize),
                            (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_NOFILE, 256, 256),
                            (resource.RLIMIT_CORE, 0, 0)):
        cap = resource.getrlimit(res)[1]  # a hard limit can only go down
        cap = hard if cap == resource.RLIM_INFINITY else min(hard, cap)
        resource.setrlimit(res, (min(soft, cap), cap))


def add_site_packages():
    """site-packages and the directory lines of its .pth files, as `site` would add them (its import lines
    are not run: editable-install finders and shims are the caller's business, and slow)."""
    import site  # under -S importing it runs nothing
    site.setquit()  # exit() and quit()
    site.venv(set())  # a venv's include-system-site-packages
    for sitedir in site.getsitepackages():
        if not os.path.isdir(sitedir) or sitedir in sys.path:
            continue
        sys.path.append(sitedir)
        for name in sorted(n for n in os.listdir(sitedir) if n.endswith(".pth")):
            try:
                with open(os.path.join(sitedir, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                path = os.path.join(sitedir, line.rstrip())
                if line and not line.startswith(("#", "import ", "import\t")) and os.path.isdir(path) \
                        and path not in sys.path:
                    sys.path.append(path)


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DENIED = set("socket.connect socket.bind socket.sendto socket.sendmsg socket.getaddrinfo socket.gethostbyname "
             "socket.gethostbyaddr os.system os.exec os.posix_spawn os.spawn subprocess.Popen os.unshare os.setns "
             "ctypes.dlsym ctypes.dlsym/handle ctypes.call_function ctypes.cdata ctypes.string_at ctypes.wstring_at "
             "gc.get_objects gc.get_referrers gc.get_referents".split())
# audit event -> (index of a path argument, index of its dir_fd argument or None), as CPython raises them
WRITES = {"os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
          "os.link": ((0, 2), (1, 3)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
          "os.truncate": ((0, None),), "os.symlink": ((1, 2),)}
READS = {"os.listdir": ((0, None),), "os.scandir": ((0, None),), "os.chdir": ((0, None),)}


class Tripwire:
    """An audit hook (PEP 578) that refuses what the code has no business doing: a tripwire that code set on
    escaping defeats, not the boundary. Paths are resolved as the kernel will resolve them: relative to
    dir_fd where one is given, and a symlink's target relative to the link's directory. os.open's audit
    event carries no dir_fd, so os.open itself is wrapped."""

    def __init__(self, work):
        import posix
        real = os.path.realpath
        self.rw = (real(work),)
        self.ro = self.rw + tuple({real(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                                     "/dev/null", "/dev/urandom", "/usr/share/zoneinfo", *sys.path) if p})
        self.dirs = {}  # fd -> (path, st_dev, st_ino): directories opened through os.open, for hosts without /proc
        self.posix_open = posix.open

        def checked_open(path, flags, mode=0o777, *, dir_fd=None):
            return self.open(path, flags, mode, dir_fd)

        checked_open.__doc__ = posix.open.__doc__
        os.open = posix.open = checked_open
        sys.addaudithook(self.hook)

    def dir_path(self, fd):
        """Where a directory descriptor points: /proc/self/fd, else what os.open recorded for it."""
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
        path, dev, ino = self.dirs.get(fd, (None, None, None))
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if path is None or st is None or (st.st_dev, st.st_ino) != (dev, ino):
            raise PermissionError(f"sandbox: cannot tell which directory dir_fd {fd} is")
        return path

    def resolve(self, path, dir_fd=None):
        """The absolute path the kernel will act on; None for a file descriptor (nothing to check)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None
        path = os.fsdecode(path)
        if not path.startswith("/") and dir_fd is not None and dir_fd >= 0:  # -1: none; AT_FDCWD is negative
            path = os.path.join(self.dir_path(dir_fd), path)
        return os.path.realpath(path)

    def check(self, event, path, dir_fd, roots, shown=None):
        p = self.resolve(path, dir_fd)
        if p is not None and not any(p == r or p.startswith(r + os.sep) for r in roots):
            raise PermissionError(f"sandbox: {event} on {path if shown is None else shown!r} is not allowed")

    def open(self, path, flags, mode, dir_fd):
        self.check("open", path, dir_fd, self.rw if flags & WRITE_FLAGS else self.ro)
        fd = self.posix_open(path, flags, mode, dir_fd=dir_fd)
        try:
            st, where = os.fstat(fd), self.resolve(path, dir_fd)
            if stat.S_ISDIR(st.st_mode) and os.path.samestat(st, os.stat(where)):  # the object checked: keep
                self.dirs[fd] = (where, st.st_dev, st.st_ino)                      # it for dir_fd
        except OSError:
            self.dirs.pop(fd, None)
        return fd

    def hook(self, event, args):
        if event == "open":
            self.check(event, args[0], None, self.rw if (args[2] or 0) & WRITE_FLAGS else self.ro)
        for table, roots in ((WRITES, self.rw), (READS, self.ro)):
            for path_at, dir_fd_at in table.get(event, ()):
                self.check(event, args[path_at], None if dir_fd_at is None else args[dir_fd_at], roots)
        if event == "os.symlink" and isinstance(args[0], (str, bytes, os.PathLike)):
            link_dir = os.path.dirname(self.resolve(args[1], args[2]))  # a relative target starts from the link
            self.check(event, os.path.join(link_dir, os.fsdecode(args[0])), None, self.rw, shown=args[0])
        if event in ("os.kill", "os.killpg") and not own_process(event, args[0]):
            raise PermissionError(f"sandbox: {event} of {args[0]} is not allowed")
        if event in DENIED or event == "ctypes.dlopen" and args[0] is not None:  # importing ctypes opens None
            raise PermissionError(f"sandbox: {event} is not allowed")


def own_process(event, pid):
    """The code itself, its process group, or a child of its own."""
    if event == "os.killpg" or pid < 0:
        return abs(pid) == os.getpgid(0) or pid == 0
    if pid in (0, os.getpid()):
        return True
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


def main():
    """Everything up to running the code; returns the code, in the process that is to run it."""
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    report_fd = int(args["report"])
    try:
        c("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a dead caller takes the run down
        if os.getppid() != int(args["ppid"]):
            os._exit(1)  # the caller died before the line above
        add_site_packages()

        def read_code():
            return sys.stdin.buffer.read().decode("utf-8", errors="replace")

        if args["mode"] == "isolated":
            try:
                code, work = isolate(args, read_code), "/tmp"
            except OSError as e:  # the kernel allows no isolation here (or not all of it)
                report(report_fd, f"noiso {e}")
                os._exit(1)
        else:
            code, work = read_code(), args["work"]
            os.chdir(work)
        c("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary hands privileges back
        limit(args)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if args["tripwire"] == "1":
            Tripwire(work)
    except BaseException as e:
        report(report_fd, f"error {type(e).__name__}: {e}")
        os._exit(1)
    os.closerange(3, 1 << 16)  # the report pipe and the trees' descriptors
    return code


def run(code):
    """Run the code as the __main__ script `snippet.py`; its tracebacks show its own lines only."""
    import builtins
    import linecache
    linecache.cache["snippet.py"] = (len(code), None, code.splitlines(True), "snippet.py")
    sys.argv[:] = ["snippet.py"]
    try:
        exec(compile(code, "snippet.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit:
        raise
    except BaseException as e:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without this frame
        sys.exit(1)


if __name__ == "__main__":
    run(main())  # at the top level, so that the code's SystemExit ends the interpreter as usual
