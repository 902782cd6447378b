"""A tiny web app for slipway: answers every request and logs it to stdout."""
import http.server
import os
import sys

GREETING = os.environ.get("GREETING", "Hello from slipway")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{GREETING} (dyno {os.environ.get('DYNO', '?')})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)


port = int(os.environ["PORT"])
print(f"listening on port {port}", flush=True)
sys.stdout.flush()
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
