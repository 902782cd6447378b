"""Static file server for slipway's static buildpack.

Serves the current directory (the app) on $PORT: files as they are, index.html for a
directory, 404 for hidden paths (any part starting with '.') and for directories without
index.html. One log line per request on stdout.
"""
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if any(part.startswith(".") for part in path.split("/") if part):
            self.send_error(404, "Not Found")
            return None
        local = self.translate_path(self.path)
        if os.path.isdir(local) and not os.path.isfile(os.path.join(local, "index.html")):
            self.send_error(404, "Not Found")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "Not Found")
        return None

    def log_message(self, format, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), format % args))
        sys.stdout.flush()


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("static site on port %d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
