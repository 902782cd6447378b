#!/usr/bin/env python3
"""Load generator for zero-downtime checks: hammers one app through the router and counts
every request that did not get a 2xx.

  loadgen.py --port ROUTER_PORT --host APP.localhost [--keepalive 4] [--fresh 2]
             [--duration 30 | --stop-file PATH] [--path /]

--keepalive N  threads each reusing one HTTP/1.1 connection (reconnecting after an error)
--fresh M      threads each opening a new connection per request
Runs until --duration seconds passed or --stop-file exists (checked every request), then
prints one JSON object on stdout:
  {"requests", "ok", "non_2xx": {"503": n, ...}, "errors": {"ConnectionResetError": n, ...},
   "failures", "seconds", "rps", "p50_ms", "p99_ms", "max_ms", "first_failures": [...]}
A 'ready' line is printed on stderr once every thread has sent its first request.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.non_2xx = {}
        self.errors = {}
        self.latencies = []
        self.first_failures = []
        self.started = 0

    def record(self, ms, status=None, error=None):
        with self.lock:
            self.requests += 1
            self.latencies.append(ms)
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
                what = error
            elif 200 <= status < 300:
                self.ok += 1
                return
            else:
                key = str(status)
                self.non_2xx[key] = self.non_2xx.get(key, 0) + 1
                what = f"status {status}"
            if len(self.first_failures) < 20:
                self.first_failures.append({"at": round(time.time(), 3), "what": what})


def request(conn, args):
    conn.request("GET", args.path, headers={"Host": args.host, "User-Agent": "slipway-loadgen"})
    resp = conn.getresponse()
    resp.read()
    return resp.status, resp.will_close


def worker(args, stats, stop, keepalive, started):
    conn = None
    first = True
    while not stop():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.timeout)
        t0 = time.monotonic()
        try:
            status, will_close = request(conn, args)
            stats.record((time.monotonic() - t0) * 1000, status=status)
            if will_close or not keepalive:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            stats.record((time.monotonic() - t0) * 1000, error=type(e).__name__)
            try:
                conn.close()
            except Exception:
                pass
            conn = None
        if first:
            first = False
            started()
    if conn is not None:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--keepalive", type=int, default=4)
    p.add_argument("--fresh", type=int, default=2)
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--stop-file")
    p.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    if not args.duration and not args.stop_file:
        p.error("give --duration or --stop-file")

    stats = Stats()
    t_start = time.monotonic()
    deadline = t_start + args.duration if args.duration else None

    def stop():
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return args.stop_file is not None and os.path.exists(args.stop_file)

    total = args.keepalive + args.fresh
    count = {"n": 0}
    count_lock = threading.Lock()

    def started():
        with count_lock:
            count["n"] += 1
            if count["n"] == total:
                print("ready", file=sys.stderr, flush=True)

    threads = [
        threading.Thread(target=worker, args=(args, stats, stop, True, started), daemon=True)
        for _ in range(args.keepalive)
    ] + [
        threading.Thread(target=worker, args=(args, stats, stop, False, started), daemon=True)
        for _ in range(args.fresh)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t_start
    lat = sorted(stats.latencies)

    def pct(q):
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)

    failures = sum(stats.non_2xx.values()) + sum(stats.errors.values())
    print(json.dumps({
        "requests": stats.requests,
        "ok": stats.ok,
        "non_2xx": stats.non_2xx,
        "errors": stats.errors,
        "failures": failures,
        "seconds": round(seconds, 2),
        "rps": round(stats.requests / seconds, 1) if seconds > 0 else 0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1], 2) if lat else None,
        "first_failures": stats.first_failures,
    }))


if __name__ == "__main__":
    main()
