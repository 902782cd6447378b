import http.server, os
VERSION = open("VERSION").read().strip()
SICK = VERSION.startswith("bad") or bool(os.environ.get("FAIL_HEALTH"))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            code, body = (500, b"sick\n") if SICK else (200, b"ok\n")
        else:
            code, body = (503, b"a sick release got traffic\n") if SICK else (200, f"version {VERSION}\n".encode())
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
