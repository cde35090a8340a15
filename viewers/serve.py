"""Serve the OHIF viewer and a PACS's DICOMweb on one origin (standard library only).

    python3 viewers/serve.py --dicomweb http://127.0.0.1:8042/dicom-web [--port 3000] [--dist viewers/ohif/dist]

- `/dicom-web/...` is passed to the PACS's DICOMweb root (same origin: the browser needs no CORS);
- `/app-config.js` is `viewers/app-config.js` (one DICOMweb data source at `/dicom-web`);
- any other path is a file of OHIF's `dist/`, and a path that is not a file (a route such as `/viewer`) is
  `index.html`, as OHIF's single-page application expects.

Loopback by default: this is a reader's or a test's viewer, not a hardened web server (docs/viewers.md shows a
web server configuration for a site).
"""

from __future__ import annotations

import argparse
import http.client
import mimetypes
import sys
import urllib.parse
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICOMWEB_PREFIX = "/dicom-web"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: object, dist: Path, app_config: Path, upstream: urllib.parse.SplitResult) -> None:
        self.dist, self.app_config, self.upstream = dist, app_config, upstream
        super().__init__(*args)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: OHIF makes hundreds of requests per study

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            self._proxy()
        elif self.command == "POST":
            self.send_error(405)
        else:
            self._file(path)

    def _proxy(self) -> None:
        suffix = self.path[len(DICOMWEB_PREFIX) :]
        target = self.upstream.path.rstrip("/") + suffix
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        # The Host header goes through: the PACS writes the URLs in its answers (Retrieve URL, bulk data) for
        # this origin, not for its own port, which the browser could not read from.
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port or 80, timeout=120)
        try:
            connection.request(self.command, target, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as error:
            self.send_error(502, f"DICOMweb server not reachable: {error}")
            return
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _file(self, path: str) -> None:
        if path == "/app-config.js":
            file = self.app_config
        else:
            file = (self.dist / urllib.parse.unquote(path).lstrip("/")).resolve()
            if not file.is_relative_to(self.dist) or not file.is_file():
                file = self.dist / "index.html"  # a route of the single-page application
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        # OHIF decodes images in web workers with SharedArrayBuffer, which needs cross-origin isolation.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def make_server(host: str, port: int, dist: Path, app_config: Path, dicomweb: str) -> ThreadingHTTPServer:
    upstream = urllib.parse.urlsplit(dicomweb)
    if upstream.scheme != "http" or not upstream.hostname:
        raise SystemExit(f"--dicomweb must be an http:// URL, not {dicomweb!r}")
    if not (dist / "index.html").is_file():
        raise SystemExit(f"no OHIF build at {dist} (scripts/setup.sh --with-postgres installs it; docs/viewers.md)")
    handler = partial(Handler, dist=dist.resolve(), app_config=app_config.resolve(), upstream=upstream)
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicomweb", required=True, help="the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--dist", type=Path, default=HERE / "ohif" / "dist")
    parser.add_argument("--app-config", type=Path, default=HERE / "app-config.js")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.dist, args.app_config, args.dicomweb)
    print(f"OHIF on http://{args.host}:{server.server_address[1]}/ (DICOMweb {args.dicomweb})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
