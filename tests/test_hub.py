"""Downloads: interrupted transfers resume, nothing half-written under the final name.

A local HTTP server on 127.0.0.1 stands for the internet: it can drop the connection
halfway through a body, ignore or honour ``Range`` requests, or answer with a web page.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time

import pytest

from robust_transfer import hub
from robust_transfer.errors import CheckpointError
from robust_transfer.models import zoo

DATA = os.urandom(300_000)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        if srv.mode == "html":
            return self._send(200, b"<html>virus scan warning</html>", "text/html")
        start = int(rng.split("=")[1].rstrip("-")) if rng and srv.honour_range else 0
        body = DATA[start:]
        drop = srv.mode == "drop_all" or (srv.mode == "drop_first" and len(srv.ranges) == 1)
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if drop else body)
        if drop:  # the connection dies halfway
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    mode = "good"
    honour_range = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/models/file.pt"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.mode = "drop_first"
    target = hub.download(server.url, tmp_path / "file.pt", hashlib.sha256(DATA).hexdigest())
    assert target.read_bytes() == DATA
    assert server.ranges == [None, f"bytes={len(DATA) // 2}-"]  # the second request resumed
    assert _leftovers(tmp_path) == ["file.pt"]


def test_interrupted_download_leaves_no_file_and_resumes_later(server, tmp_path):
    server.mode, server.honour_range = "drop_all", False
    target = tmp_path / "file.pt"
    with pytest.raises(CheckpointError, match="interrupted at 150,000 of 300,000 bytes; run again") as err:
        hub.download(server.url, target)
    assert "\n" not in str(err.value)
    assert not target.exists() and _leftovers(tmp_path) == [".file.pt.part"]
    server.mode, server.honour_range = "good", True
    server.ranges.clear()
    zoo.download(server.url, target)  # the zoo's entry point, same signature as before
    assert target.read_bytes() == DATA and server.ranges == [f"bytes={len(DATA) // 2}-"]
    assert _leftovers(tmp_path) == ["file.pt"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / ".file.pt.part").write_bytes(b"x" * 1000)  # stale partial download
    server.honour_range = False
    target = hub.download(server.url, tmp_path / "file.pt")
    assert target.read_bytes() == DATA


def test_offline_gives_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match="cannot download .*(refused|Errno)") as err:
        hub.download(f"http://127.0.0.1:{port}/f.pt", tmp_path / "f.pt", timeout=5)
    assert "\n" not in str(err.value) and "by hand" in str(err.value)
    assert _leftovers(tmp_path) == []


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(CheckpointError, match="sha256"):
        hub.download(server.url, tmp_path / "file.pt", "0" * 64)
    assert _leftovers(tmp_path) == []


def test_web_page_instead_of_file(server, tmp_path):
    server.mode = "html"
    with pytest.raises(CheckpointError, match="web page"):
        hub.download(server.url, tmp_path / "file.pt")
    assert not (tmp_path / "file.pt").exists()


def test_hugging_face_urls_go_through_the_hub_client(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "_hf_download", lambda *a: calls.append(a[:3]))
    hub.download(zoo.get_published("resnet50-l2-eps3").url, tmp_path / "resnet50_l2_eps3.ckpt")
    assert calls == [("madrylab/robust-imagenet-models", "resnet50_l2_eps3.ckpt", "main")]


def test_hugging_face_offline_gives_one_line(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    # the hub client retries 5 times with backoff (24 s): skip its waits here
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="Hugging Face hub .*Connection refused") as err:
        hub._hf_download("madrylab/robust-imagenet-models", "x.ckpt", "main", tmp_path / "x.ckpt",
                         timeout=5, progress=False, endpoint=f"http://127.0.0.1:{port}")
    assert "\n" not in str(err.value) and time.perf_counter() - start < 60
    assert not (tmp_path / "x.ckpt").exists()
