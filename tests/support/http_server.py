"""A local HTTP file server for download tests: 127.0.0.1 only, HTTP Range support, injectable faults."""

from __future__ import annotations

import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer(ThreadingHTTPServer):
    """Serve the files under ``root`` at ``http://127.0.0.1:<port>/<relative path>``.

    * ``requests``: (path, headers) of every GET, in order;
    * ``cut_after[path] = n``: the next GET of ``path`` announces the full length but closes the
      connection after ``n`` body bytes (one shot);
    * ``ignore_range``: answer 200 with the whole file even when a Range header asks for less.
    """

    daemon_threads = True

    def __init__(self, root: str | Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def requests_for(self, path: str) -> list[dict[str, str]]:
        """Headers of the GETs of ``path`` (leading slash optional)."""
        path = "/" + path.lstrip("/")
        return [headers for requested, headers in self.requests if requested == path]

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        self.server.requests.append((path, dict(self.headers.items())))
        file = (self.server.root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if self.server.root.resolve() not in file.parents or not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        size = len(data)
        start, end = 0, size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and not self.server.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        body = data[start : end + 1]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.server.cut_after.pop(path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


# coco-mini's first 96 images (by id) play train2017 in the mirror, the other 32 val2017.
MIRROR_TRAIN_IMAGES = 96


def _split_instances(mini: dict, images: list[dict]) -> dict:
    ids = {image["id"] for image in images}
    return {
        **{key: mini[key] for key in ("info", "licenses", "categories")},
        "images": images,
        "annotations": [a for a in mini["annotations"] if a["image_id"] in ids],
    }


def write_annotations_zip(path: Path, instances: dict[str, dict]) -> None:
    """An annotations_trainval2017.zip holding annotations/instances_<coco split>.json."""
    import json
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for coco_split, data in instances.items():
            archive.writestr(f"annotations/instances_{coco_split}.json", json.dumps(data))


def build_coco_mirror(coco_mini_dir: Path, root: Path) -> dict:
    """Lay out ``root`` like images.cocodataset.org from coco-mini: zips/{train,val}2017.zip,
    annotations/annotations_trainval2017.zip and the loose images under {train,val}2017/.

    Returns {"root", "instances": {coco split: dict}, "sha1": {archive name: hex}}.
    """
    import hashlib
    import json
    import zipfile

    mini = json.loads((coco_mini_dir / "annotations" / "instances_mini.json").read_text())
    images = sorted(mini["images"], key=lambda image: image["id"])
    splits = {"train2017": images[:MIRROR_TRAIN_IMAGES], "val2017": images[MIRROR_TRAIN_IMAGES:]}
    for record in splits["val2017"]:  # as in the real val2017 records
        record["coco_url"] = record["coco_url"].replace("/train2017/", "/val2017/")
    instances = {coco_split: _split_instances(mini, records) for coco_split, records in splits.items()}
    archives = {
        "train2017": "zips/train2017.zip",
        "val2017": "zips/val2017.zip",
        "annotations_trainval2017": "annotations/annotations_trainval2017.zip",
    }
    for coco_split, records in splits.items():
        (root / coco_split).mkdir(parents=True)
        zip_path = root / archives[coco_split]
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{coco_split}/", "")
            for record in records:
                data = (coco_mini_dir / "images" / record["file_name"]).read_bytes()
                archive.writestr(f"{coco_split}/{record['file_name']}", data)
                (root / coco_split / record["file_name"]).write_bytes(data)
    write_annotations_zip(root / archives["annotations_trainval2017"], instances)
    sha1 = {name: hashlib.sha1((root / path).read_bytes()).hexdigest() for name, path in archives.items()}
    return {"root": root, "instances": instances, "sha1": sha1}
