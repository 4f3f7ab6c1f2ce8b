"""An in-memory stand-in for gcsfs, registered with fsspec as `gs`/`gcs`: `etils.epath.Path("gs://...")` offline.

It keeps GCS's semantics where they differ from a disk, so code that only works on a disk fails here too:
  - objects are flat keys (`bucket/a/b.txt`); a "folder" exists only while some object is under it, and mkdir is a
    no-op (as gcsfs does below the bucket level);
  - an upload becomes visible only when its file is closed, whole (so a reader never sees half an object);
  - appends are refused (GCS objects are immutable), and rename is copy + delete (fsspec's default `mv`).
Every write is logged in `FakeGCS.uploads` (keys, in order) and `FakeGCS.upload_sizes` (their bytes), so tests can
count uploads and bytes uploaded.

`serve()` also puts the same objects behind a small HTTP server speaking the part of the GCS JSON API that
tensorstore's GCS driver uses (media download with ranges and generation conditions, media upload, list, delete);
with TENSORSTORE_GCS_HTTP_URL pointing at it, orbax's array writes land in the same fake bucket as epath's files.
`install_http(url, writer)` routes another process's gs:// (epath, fsspec) to that server, so several processes (a
multi-host job) share one fake bucket; their uploads carry `writer`, which the server logs in `FakeGCS.writers`.
"""

import http.server
import io
import itertools
import json
import threading
import time
import urllib.parse

import fsspec
from fsspec.spec import AbstractFileSystem

SCHEMES = ("gs", "gcs")


class FakeGCS(AbstractFileSystem):
    protocol = SCHEMES
    root_marker = ""
    objects: dict[str, tuple[bytes, float, int]] = {}  # key -> (data, mtime, generation); reset by `install`
    uploads: list[str] = []
    upload_sizes: list[int] = []
    writers: list[tuple[str, str]] = []  # (key, writer) of uploads through the JSON API (writer "" if untagged)
    generations = itertools.count(1)

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
            data, mtime, _ = self.objects[path]
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
        put(key, data)


def put(key: str, data: bytes) -> int:
    """Store an object (`bucket/name`); its new generation."""
    generation = next(FakeGCS.generations)
    FakeGCS.objects[key] = (bytes(data), time.time(), generation)
    FakeGCS.uploads.append(key)
    FakeGCS.upload_sizes.append(len(data))
    return generation


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
    FakeGCS.objects, FakeGCS.uploads, FakeGCS.upload_sizes, FakeGCS.writers = {}, [], [], []
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
    FakeGCS.objects, FakeGCS.uploads, FakeGCS.upload_sizes = {}, [], []


class _JsonApi(http.server.BaseHTTPRequestHandler):
    """GET/POST/DELETE of /storage/v1/b/BUCKET/o[/NAME] and /upload/storage/v1/b/BUCKET/o over FakeGCS.objects."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value) -> None:
        self._reply(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _route(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = url.path.split("/")  # ['', ('upload',) 'storage', 'v1', 'b', BUCKET, 'o', NAME?]
        if parts[1] == "upload":
            parts = parts[1:]
        bucket = parts[4]
        name = urllib.parse.unquote(parts[6]) if len(parts) > 6 else query.get("name")
        return bucket, name, query

    @staticmethod
    def _resource(key: str) -> dict:
        data, mtime, generation = FakeGCS.objects[key]
        bucket, name = key.split("/", 1)
        return {"bucket": bucket, "name": name, "size": str(len(data)), "generation": str(generation),
                "metageneration": "1", "updated": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(mtime))}

    def _precondition_fails(self, key: str, query: dict) -> bool:
        current = FakeGCS.objects[key][2] if key in FakeGCS.objects else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != current:
            return True
        return False

    def do_GET(self):
        bucket, name, query = self._route()
        if name is None:  # list
            prefix = f"{bucket}/{query.get('prefix', '')}"
            keys = sorted(k for k in FakeGCS.objects if k.startswith(prefix))
            start, end = query.get("startOffset"), query.get("endOffset")
            keys = [k for k in keys if (start is None or k[len(bucket) + 1:] >= start)
                    and (end is None or k[len(bucket) + 1:] < end)]
            return self._json({"kind": "storage#objects", "items": [self._resource(k) for k in keys]})
        key = f"{bucket}/{name}"
        if key not in FakeGCS.objects:
            return self._reply(404)
        if self._precondition_fails(key, query):
            return self._reply(412)
        data, _, generation = FakeGCS.objects[key]
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            return self._reply(304, headers={"x-goog-generation": str(generation)})
        if query.get("alt") != "media":
            return self._json(self._resource(key))
        headers = {"x-goog-generation": str(generation), "Content-Type": "application/octet-stream"}
        ranged = self.headers.get("Range")
        if ranged:
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            if not first:  # "bytes=-N": the last N bytes
                first, last = max(0, len(data) - int(last)), len(data) - 1
            else:
                first, last = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return self._reply(206, data[first:last + 1], headers)
        return self._reply(200, data, headers)

    def do_POST(self):
        bucket, name, query = self._route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = f"{bucket}/{name}"
        if self._precondition_fails(key, query):
            return self._reply(412)
        put(key, body)
        FakeGCS.writers.append((key, self.headers.get("X-Fake-Writer", "")))
        return self._json(self._resource(key))

    def do_DELETE(self):
        bucket, name, query = self._route()
        key = f"{bucket}/{name}"
        if key not in FakeGCS.objects:
            return self._reply(404)
        if self._precondition_fails(key, query):
            return self._reply(412)
        del FakeGCS.objects[key]
        return self._reply(204)


def serve() -> http.server.ThreadingHTTPServer:
    """Start the JSON API over FakeGCS on a free local port (daemon thread); `.shutdown()` stops it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class HttpGCS(FakeGCS):
    """FakeGCS whose objects live behind `serve()` in another process: the same semantics, over the JSON API."""

    url = ""
    writer = ""

    def _request(self, method: str, path: str, query: dict | None = None, body: bytes | None = None):
        import urllib.request
        full = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(full, data=body, method=method, headers={"X-Fake-Writer": self.writer})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, b""

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        bucket, _, name = key.partition("/")
        return bucket, urllib.parse.quote(name, safe="")

    def _listing(self, path: str) -> dict[str, int]:
        """{key: size} of the objects of `path`'s bucket under `path`."""
        bucket, _, prefix = path.partition("/")
        status, body = self._request("GET", f"/storage/v1/b/{bucket}/o", {"prefix": prefix})
        return {f"{bucket}/{item['name']}": int(item["size"]) for item in json.loads(body)["items"]}

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        found = self._listing(path)
        if path in found:
            return {"name": path, "size": found[path], "type": "file", "mtime": 0.0}
        if any(key.startswith(path + "/") for key in found):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        found = self._listing(path)
        if path in found:
            entries = [{"name": path, "size": found[path], "type": "file", "mtime": 0.0}]
        else:
            children = {}
            for key, size in found.items():
                if key.startswith(path + "/"):
                    child, _, rest = key[len(path) + 1:].partition("/")
                    name = f"{path}/{child}"
                    children[name] = ({"name": name, "size": 0, "type": "directory"} if rest else
                                      {"name": name, "size": size, "type": "file", "mtime": 0.0})
            if not children:
                raise FileNotFoundError(path)
            entries = [children[name] for name in sorted(children)]
        return entries if detail else [entry["name"] for entry in entries]

    def _open(self, path, mode="rb", **kwargs):
        path = self._strip_protocol(path)
        if mode == "rb":
            bucket, name = self._split(path)
            status, body = self._request("GET", f"/storage/v1/b/{bucket}/o/{name}", {"alt": "media"})
            if status == 404:
                raise FileNotFoundError(path)
            return io.BytesIO(body)
        return super()._open(path, mode, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        with self._open(path1) as f:
            self._put(self._strip_protocol(path2), f.read())

    def _rm(self, path):
        bucket, name = self._split(self._strip_protocol(path))
        self._request("DELETE", f"/storage/v1/b/{bucket}/o/{name}")

    def _put(self, key: str, data: bytes) -> None:
        bucket, name = key.split("/", 1)
        self._request("POST", f"/upload/storage/v1/b/{bucket}/o", {"uploadType": "media", "name": name}, data)


def install_http(url: str, writer: str) -> None:
    """Route this process's gs:// (fsspec, etils.epath) to the `serve()` at `url`, tagging uploads with `writer`."""
    from etils.epath import backend
    HttpGCS.url, HttpGCS.writer = url, writer
    for scheme in SCHEMES:
        fsspec.register_implementation(scheme, HttpGCS, clobber=True)
    HttpGCS.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
