"""The one base class of errors a user fixes from the message alone, and the answer to a path the OS refuses.

    class CheckpointError(MvragError, ValueError): ...     # each concept keeps its own error, beside it
    raise UsageError("--k=-1; it must be >= 0")            # bad input with no concept of its own
    ensure_writable_dir(out, "--out")                      # before any work: a read-only or full disk, or a file

`mvrag` (cli/main.py) prints an `MvragError` as one line and exits 2, and an `OSError` about a path the same way
(`os_error_line`); anything else is a bug in this code and keeps its traceback (exit 1). `--debug` shows the
traceback of every error. The subclasses also derive from the builtin they used to be (`ValueError`,
`FileNotFoundError`), so callers catching those still catch them.
"""

import errno
import os
import re
import uuid


class MvragError(Exception):
    """An error whose message names the cause, the value and the fix (the CLI prints it as one line, exit 2)."""


class UsageError(MvragError, ValueError):
    """A flag or config value that cannot work; the message says which value to give instead."""


class PathNotFoundError(MvragError, FileNotFoundError):
    """A file or folder the user named does not exist; the message says what to pass."""


class OutputPathError(MvragError, OSError):
    """A folder to write (--out, --workdir) cannot be written: read-only, a file, no space, no permission."""


# OSErrors caused by the machine or the paths given (not by this code): answered in one line naming path and cause.
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                         errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP,
                         errno.EIO})


# Libraries that wrap the OS error in their own (tensorstore, under orbax, raises ValueError) keep its code and path
# in the message: `... Failed writing: "/x/y": ... No space left on device [os_error_code='28']`.
_CODE_IN_MESSAGE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")
_PATH_IN_MESSAGE = re.compile(r"""["'](/[^"']+)["']""")


def _errno_and_path(e: BaseException) -> tuple[int, str | None, bool] | None:
    """(errno, path, whether the path came from a library's message) of the first disk error in e's chain."""
    seen = set()
    while e is not None and id(e) not in seen:  # the exception, then what caused it
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, MvragError) and e.errno in PATH_ERRNOS:
            return e.errno, None if e.filename is None else str(e.filename), False
        code = _CODE_IN_MESSAGE.search(str(e))
        if code and int(code[1] or code[2]) in PATH_ERRNOS:
            paths = _PATH_IN_MESSAGE.findall(str(e))
            return int(code[1] or code[2]), paths[-1] if paths else None, True
        e = e.__cause__ or e.__context__
    return None


def path_error_line(e: BaseException) -> str | None:
    """One line for an error the disk or a path caused (read-only, full, a file where a folder should be, no
    permission), also when a library wrapped it; None for any other error (a bug: keep its traceback).

    A path from a library's message that no longer exists (inside a temporary folder, removed on the error) is named
    by its nearest existing folder.
    """
    found = _errno_and_path(e)
    if found is None:
        return None
    code, path, wrapped = found
    if wrapped and path is not None and not os.path.lexists(path):
        parent = path
        while parent != os.path.dirname(parent) and not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        path = f"{parent} (writing {os.path.relpath(path, parent)})"
    name = errno.errorcode.get(code, str(code))
    return f"[{name}] {os.strerror(code)}{': ' + path if path else ''}; {_FIXES.get(code, 'check the path')}"


_FIXES = {errno.ENOSPC: "free space on that disk or write elsewhere",
          errno.EDQUOT: "free space on that disk or write elsewhere",
          errno.EROFS: "pass a folder on a writable disk", errno.EACCES: "pass a folder you may write",
          errno.EPERM: "pass a folder you may write", errno.ENOTDIR: "a file is in the way: pass a folder path",
          errno.EISDIR: "a folder is in the way: pass a file path"}


def os_error_line(e: OSError) -> str:
    """`[EROFS] Read-only file system: /data/run` (the path(s) when the error carries them)."""
    code = errno.errorcode.get(e.errno, str(e.errno))
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"[{code}] {e.strerror or e}{': ' + paths if paths else ''}"


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """Create `path` (a local folder) if absent and prove a file can be written in it; raises OutputPathError
    naming `flag`, the path and the cause. Nothing is left behind (a created folder stays: it was asked for)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    probe = os.path.join(path, f".mvrag-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise OSError(errno.ENOTDIR, "it is a file, not a folder", path)
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)  # a full disk refuses a block; an empty write could still succeed
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputPathError(f"{flag} {path} cannot be written ({os_error_line(e)}); pass a writable folder "
                              f"on a disk with free space") from e
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
