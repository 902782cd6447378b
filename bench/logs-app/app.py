# Log benchmark dyno: serves PORT (so web dynos come up), and writes log lines.
# MODE=flood: as fast as it can. MODE=paced: RATE lines/s. Every line carries the wall-clock
# time it was written (ns), so a tail client can measure the delay.
import http.server, os, sys, threading, time

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

threading.Thread(target=http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever, daemon=True).start()
dyno = os.environ.get("DYNO", "?")
mode = os.environ.get("MODE", "flood")
out = sys.stdout.buffer
pad = "x" * 40
n = 0
if mode == "flood":
    while True:
        chunk = []
        t = time.time_ns()
        for _ in range(200):
            chunk.append(("%s %d t=%d %s\n" % (dyno, n, t, pad)).encode())
            n += 1
        out.write(b"".join(chunk))
else:
    gap = 1.0 / float(os.environ.get("RATE", "200"))
    while True:
        out.write(("%s %d paced t=%d %s\n" % (dyno, n, time.time_ns(), pad)).encode())
        out.flush()
        n += 1
        time.sleep(gap)
