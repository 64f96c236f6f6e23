"""The process the Servers of the server_* test apps run (`python server_handler.py HOST PORT`): a small threaded
stdlib HTTP/1.1 server, copied into their image by `add_local_file`.

    GET /            {"container": SHOAL_CONTAINER_ID, "version": SERVER_APP_VERSION, "pid": ..., ...}
    GET /slow?s=S&release=PATH   the same, after S seconds (default 30) or as soon as PATH exists
    GET /die         ends this process at once (os._exit): the container's runtime stays up
"""

import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's upstream connections are
    wbufsize = 1 << 16  # each response in one write: head and body apart would wait out a delayed ACK (40 ms)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/die":
            os._exit(1)
        if url.path == "/slow":
            deadline = time.monotonic() + float(query.get("s", "30"))
            release = query.get("release")
            while time.monotonic() < deadline and not (release and os.path.exists(release)):
                time.sleep(0.02)
        body = json.dumps({
            "container": os.environ.get("SHOAL_CONTAINER_ID"),
            "version": os.environ.get("SERVER_APP_VERSION", "1"),
            "pid": os.getpid(),
            "path": url.path,
            "session": self.headers.get("modal-session-id"),
            "saw_credentials": any(h in self.headers for h in ("modal-key", "modal-secret")),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.serve_forever()
