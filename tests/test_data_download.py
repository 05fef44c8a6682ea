"""``download``: sha256 check, resume with an HTTP Range request, atomic rename and the offline
message, all against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latticerec.cli import main
from latticerec.datasets.download import DownloadError, RemoteFile, download, download_file, known_datasets

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A loopback server for one file; records each request's Range header; can ignore ranges."""

    def __init__(self, honour_range: bool = True):
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802 - the http.server API
                name = self.path.rsplit("/", 1)[-1]
                if name not in ("image_feat.npy", "audio_feat.npy"):
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                body, status = PAYLOAD, 200
                if rng and honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_error(416)
                        return
                    body, status = PAYLOAD[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {len(PAYLOAD) - len(body)}-"
                                                      f"{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _remote(url: str, sha: str | None = SHA) -> RemoteFile:
    return RemoteFile("image_feat.npy", url + "image_feat.npy", sha)


def test_fresh_download_checks_sha_and_renames(tmp_path):
    with Server() as srv:
        path = download_file(_remote(srv.url), tmp_path, progress=False, log=lambda m: None)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "image_feat.npy.part").exists()
    assert srv.ranges == [None]


def test_resume_sends_range_and_appends(tmp_path):
    (tmp_path / "image_feat.npy.part").write_bytes(PAYLOAD[:300_000])
    with Server() as srv:
        path = download_file(_remote(srv.url), tmp_path, progress=False, log=lambda m: None)
    assert srv.ranges == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD


def test_server_ignoring_range_starts_over(tmp_path):
    (tmp_path / "image_feat.npy.part").write_bytes(b"garbage" * 10)
    logs: list[str] = []
    with Server(honour_range=False) as srv:
        path = download_file(_remote(srv.url), tmp_path, progress=False, log=logs.append)
    assert path.read_bytes() == PAYLOAD
    assert any("ignored the range request" in m for m in logs)


def test_complete_part_file_gets_416_and_is_finished(tmp_path):
    (tmp_path / "image_feat.npy.part").write_bytes(PAYLOAD)
    with Server() as srv:
        path = download_file(_remote(srv.url), tmp_path, progress=False, log=lambda m: None)
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(tmp_path):
    with Server() as srv, pytest.raises(DownloadError, match="sha256 mismatch"):
        download_file(_remote(srv.url, "0" * 64), tmp_path, progress=False, log=lambda m: None)
    assert not (tmp_path / "image_feat.npy").exists()
    assert not (tmp_path / "image_feat.npy.part").exists()


def test_unpinned_file_records_its_hash(tmp_path):
    with Server() as srv:
        download_file(_remote(srv.url, None), tmp_path, progress=False, log=lambda m: None)
    assert (tmp_path / "image_feat.npy.sha256").read_text().split()[0] == SHA


def test_offline_message(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"Are you offline\?.*put it at .*image_feat\.npy"):
        download_file(_remote(f"http://127.0.0.1:{port}/"), tmp_path, progress=False, timeout=5)


def test_http_error_and_unknown_name(tmp_path):
    with Server() as srv, pytest.raises(DownloadError, match="HTTP 404"):
        download_file(RemoteFile("nope.bin", srv.url + "nope.bin"), tmp_path, progress=False)
    with pytest.raises(DownloadError, match="unknown dataset 'nope'"):
        download("nope", tmp_path)


def test_cli_download_known_dataset_from_a_mirror(tmp_path, capsys):
    assert "amazon-baby" in known_datasets() and "tiktok" in known_datasets()
    with Server() as srv:
        rc = main(["data", "download", "tiktok", "--out", str(tmp_path), "--base-url", srv.url,
                   "--files", "image_feat.npy", "--sha256", f"image_feat.npy={SHA}", "--quiet"])
        assert rc == 0
        # the pinned hash of the real TikTok file does not match the test payload
        rc = main(["data", "download", "tiktok", "--out", str(tmp_path / "b"), "--base-url", srv.url,
                   "--files", "audio_feat.npy", "--quiet"])
        assert rc == 2
    assert (tmp_path / "image_feat.npy").read_bytes() == PAYLOAD
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(["data", "download", "--list"]) == 0
    assert "reviews_Baby_5.json.gz" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The loopback server must be reached directly, whatever proxy the environment names."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
