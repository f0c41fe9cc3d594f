"""LocalStore: an object store in a local directory (the Lite default, $TRACE_HOME/objects).

Every object is written to a temp file under ``<root>/.trace-tmp/`` and renamed into place
(``os.replace``), so readers never see a partial object. Objects are immutable blobs and are
made read-only on disk (0444); replacing or deleting one is a directory operation and still
works. Directories left empty by a delete or move are pruned.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from trace_core.errors import InvalidObjectKey, ObjectNotFound, ObjectTooLarge, StorageError
from trace_core.storage.base import OCTET_STREAM, ObjectInfo, validate_key, validate_prefix

log = logging.getLogger(__name__)

TMP_DIR = ".trace-tmp"
OBJECT_MODE = 0o444
_INSTALL_TRIES = 3


class LocalStore:
    """Objects as files under ``root``; ``url`` is ``file:///abs/root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    # --- paths ---------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The file that holds ``key`` (validated; never outside ``root``)."""
        validate_key(key)
        if key.split("/", 1)[0] == TMP_DIR:
            raise InvalidObjectKey(
                f"object key {key!r} uses the reserved {TMP_DIR}/ prefix", key=key
            )
        return self.root / key

    def _tmp_path(self) -> Path:
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def _install(self, tmp: Path, key: str) -> None:
        """Make ``tmp`` read-only and rename it to ``key``'s path (racing prunes retried)."""
        dst = self.path(key)
        os.chmod(tmp, OBJECT_MODE)
        for attempt in range(_INSTALL_TRIES):
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, dst)
                return
            except FileNotFoundError:
                # a concurrent prune removed the fresh parent directory: create it again
                if attempt == _INSTALL_TRIES - 1:
                    raise

    def _prune(self, directory: Path) -> None:
        """Remove empty directories from ``directory`` up to (not including) ``root``."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    @contextlib.contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.url}", key=key) from exc
        except OSError as exc:
            raise StorageError(
                f"{what} {key!r} in {self.url} failed: {exc.strerror or exc}", key=key
            ) from exc

    # --- writes --------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        self.path(key)
        with self._errors("put", key):
            tmp = self._tmp_path()
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                self._install(tmp, key)
            finally:
                tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> None:
        self.path(key)
        with self._errors("put", key):
            tmp = self._tmp_path()
            try:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                self._install(tmp, key)
            finally:
                tmp.unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        src_path = self.path(src)
        self.path(dst)
        with self._errors("copy", src):
            tmp = self._tmp_path()
            try:
                shutil.copyfile(src_path, tmp)
                self._install(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> None:
        src_path = self.path(src)
        dst_path = self.path(dst)
        with self._errors("move", src):
            if not src_path.is_file():
                raise FileNotFoundError(errno.ENOENT, "no such object", str(src_path))
            for attempt in range(_INSTALL_TRIES):
                dst_path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(src_path, dst_path)
                    break
                except FileNotFoundError:
                    if not src_path.exists() or attempt == _INSTALL_TRIES - 1:
                        raise
            self._prune(src_path.parent)

    def delete(self, key: str) -> None:
        path = self.path(key)
        with self._errors("delete", key):
            path.unlink(missing_ok=True)
            self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        for info in objects:
            self.delete(info.key)
        return len(objects)

    # --- reads ---------------------------------------------------------------------------

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self.path(key)
        with self._errors("get", key), open(path, "rb") as fh:
            if max_bytes is None:
                return fh.read()
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLarge(
                f"object {key!r} is larger than {max_bytes} bytes", key=key, max_bytes=max_bytes
            )
        return data

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        path = self.path(key)
        with self._errors("stat", key):
            return path.stat().st_size

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        if prefix.split("/", 1)[0] == TMP_DIR:
            return []
        start = self.root / head if head else self.root
        if not start.is_dir():
            return []
        out: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            rel_dir = here.relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = (here / name).stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC)))
        out.sort(key=lambda info: info.key)
        return out

    def duckdb_uri(self, key: str) -> str:
        return str(self.path(key))

    def presign_get(self, key: str, expires_seconds: int = 3600) -> str | None:
        self.path(key)
        return None

    # --- maintenance ---------------------------------------------------------------------

    def remove_stale_tmp(self, older_than_seconds: float, now: float) -> builtins.list[str]:
        """Delete temp files of crashed writers older than the threshold; return their names."""
        tmp_root = self.root / TMP_DIR
        removed: builtins.list[str] = []
        if not tmp_root.is_dir():
            return removed
        for entry in tmp_root.iterdir():
            try:
                if now - entry.stat().st_mtime >= older_than_seconds:
                    entry.unlink()
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed
