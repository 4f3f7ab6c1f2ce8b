"""An in-memory stand-in for gcsfs, registered with fsspec as `gs`/`gcs`, so `etils.epath.Path("gs://...")` runs offline.

It keeps GCS's semantics where they differ from a disk, so code that only works on a disk fails here too:
  - objects are flat keys (`bucket/a/b.txt`); a "folder" exists only while some object is under it, and mkdir is a
    no-op (as gcsfs does below the bucket level);
  - an upload becomes visible only when its file is closed, whole (so a reader never sees half an object);
  - appends are refused (GCS objects are immutable), and rename is copy + delete (fsspec's default `mv`).
Every write is logged in `FakeGCS.uploads` (keys, in order), so tests can count uploads.
"""

import io
import time

import fsspec
from fsspec.spec import AbstractFileSystem

SCHEMES = ("gs", "gcs")


class FakeGCS(AbstractFileSystem):
    protocol = SCHEMES
    root_marker = ""
    objects: dict[str, tuple[bytes, float]] = {}  # key -> (data, mtime); reset per test by `install`
    uploads: list[str] = []

    @classmethod
    def _strip_protocol(cls, path) -> str:
        path = str(path)
        for scheme in SCHEMES:
            path = path.removeprefix(f"{scheme}://")
        return path.strip("/")

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path in self.objects:
            entries = [self.info(path)]
        else:
            children = {}
            for key in self.objects:
                if key.startswith(path + "/"):
                    child, _, rest = key[len(path) + 1:].partition("/")
                    name = f"{path}/{child}"
                    children[name] = self.info(name)
            if not children:
                raise FileNotFoundError(path)
            entries = [children[name] for name in sorted(children)]
        return entries if detail else [entry["name"] for entry in entries]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if path in self.objects:
            data, mtime = self.objects[path]
            return {"name": path, "size": len(data), "type": "file", "mtime": mtime}
        if any(key.startswith(path + "/") for key in self.objects):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if mode == "rb":
            if path not in self.objects:
                raise FileNotFoundError(path)
            return io.BytesIO(self.objects[path][0])
        if mode == "wb":
            return _Upload(self, path)
        raise NotImplementedError(f"GCS objects cannot be opened with mode {mode!r} (no appends, no updates): {path}")

    def cp_file(self, path1, path2, **kwargs):
        data = self.objects[self._strip_protocol(path1)][0]
        self._put(self._strip_protocol(path2), data)

    def _rm(self, path):
        self.objects.pop(self._strip_protocol(path), None)

    def rm_file(self, path):
        self._rm(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # below a bucket, GCS has no folders to create

    def makedirs(self, path, exist_ok=False):
        pass

    def rmdir(self, path):
        pass

    def _put(self, key: str, data: bytes) -> None:
        type(self).objects[key] = (bytes(data), time.time())
        type(self).uploads.append(key)


class _Upload(io.BytesIO):
    """A write that lands as one object on close (GCS uploads are all-or-nothing)."""

    def __init__(self, fs: FakeGCS, key: str):
        super().__init__()
        self._fs, self._key = fs, key

    def close(self):
        if not self.closed:
            self._fs._put(self._key, self.getvalue())
        super().close()


def install() -> type[FakeGCS]:
    """Route gs:// (fsspec and etils.epath) to an empty FakeGCS; `uninstall` undoes it."""
    from etils.epath import backend
    FakeGCS.objects, FakeGCS.uploads = {}, []
    for scheme in SCHEMES:
        fsspec.register_implementation(scheme, FakeGCS, clobber=True)
    FakeGCS.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the filesystem per scheme
    return FakeGCS


def uninstall() -> None:
    from etils.epath import backend
    from fsspec.registry import _registry  # fsspec's public `registry` is a read-only view of it
    for scheme in SCHEMES:
        _registry.pop(scheme, None)  # back to fsspec's known implementations (gcsfs, if installed)
    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.objects, FakeGCS.uploads = {}, []
