#!/usr/bin/python3
"""drover's sample app: a small HTTP service that reports its version and health.

Runs from /opt/app/current as a systemd unit. Routes, on 127.0.0.1:$APP_PORT:
  GET /version  the text of the VERSION file beside this script, as read at start
  GET /health   200 "ok", or 500 while a file UNHEALTHY exists beside this script
Anything else is 404. One line per request goes to stdout (the journal).
"""

import http.server
import os
import sys

# realpath: a process keeps answering for the release it was started from, even after the
# `current` symlink has been switched to another one.
HERE = os.path.dirname(os.path.realpath(__file__))


def read_version():
    with open(os.path.join(HERE, "VERSION"), encoding="utf-8") as f:
        return f.read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "drover-sample-app"

    def do_GET(self):
        if self.path == "/version":
            self.reply(200, self.server.app_version)
        elif self.path == "/health":
            if os.path.exists(os.path.join(HERE, "UNHEALTHY")):
                self.reply(500, "unhealthy")
            else:
                self.reply(200, "ok")
        else:
            self.reply(404, "not found")

    def reply(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("%s %s" % (self.address_string(), format % args), flush=True)


def main():
    port = int(os.environ.get("APP_PORT", "8080"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.app_version = read_version()
    print("app %s listening on 127.0.0.1:%d" % (server.app_version, port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
