#!/usr/bin/python3
"""drover's sample app: a small HTTP service that reports its version and health.

Runs from /opt/app/current as a systemd unit. Routes:
  GET /version  the text of the VERSION file beside this script, as read at start
  GET /health   200 "ok", or 500 while a file UNHEALTHY exists beside this script
Anything else is 404. One line per request goes to stdout (the journal).

It serves on the listening socket systemd passes (socket activation: LISTEN_FDS and LISTEN_PID,
the socket at fd 3, see sd_listen_fds(3) and systemd/app.socket); without one it binds
127.0.0.1:$APP_PORT itself. On SIGTERM it stops accepting, finishes the requests it has
accepted, then exits: with socket activation a restart refuses or drops nothing, since systemd
keeps the socket open and the kernel queues new connections until the next process accepts them.
"""

import http.server
import os
import signal
import socket
import sys
import threading

# realpath: a process keeps answering for the release it was started from, even after the
# `current` symlink has been switched to another one.
HERE = os.path.dirname(os.path.realpath(__file__))


def read_version():
    with open(os.path.join(HERE, "VERSION"), encoding="utf-8") as f:
        return f.read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "drover-sample-app"
    # A client that sends nothing cannot hold up a graceful stop for longer than this.
    timeout = 10

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


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Server(http.server.ThreadingHTTPServer):
    # Not daemon threads: server_close() then waits for the requests being answered.
    daemon_threads = False


def systemd_socket():
    """The listening socket systemd passed to this process, or None (sd_listen_fds(3))."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # meant for this process, not for its children
    # socket() reads the family and type from the descriptor itself.
    return socket.socket(fileno=3) if count >= 1 else None


def make_server():
    passed = systemd_socket()
    if passed is None:
        port = int(os.environ.get("APP_PORT", "8080"))
        server = Server(("127.0.0.1", port), Handler)
        server.origin = "bound here"
        return server
    # Already bound and listening: swap it for the socket the constructor made.
    server = Server(passed.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = passed
    server.origin = "socket from systemd"
    return server


def main():
    server = make_server()
    server.app_version = read_version()
    host, port = server.socket.getsockname()[:2]
    print(
        "app %s listening on %s:%d (%s)" % (server.app_version, host, port, server.origin),
        flush=True,
    )
    # Nothing runs in a signal handler, which would interrupt whatever this thread was doing
    # (starting a request's thread, holding a lock): SIGTERM is blocked in every thread and
    # this one waits for it, while another one serves.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    signal.sigwait(STOP_SIGNALS)
    server.shutdown()  # stops accepting; returns once serve_forever() has
    # Closes this process's copy of the listening socket (systemd keeps its own), then waits for
    # the requests already accepted to be answered.
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
