#!/usr/bin/env python3
"""A reply hook: an HTTP server wechat-fcgi POSTs each message to (as JSON, the same
object a reply program gets on stdin). The response body is the reply, in the same
formats as a program's output: plain text, a JSON reply object, or empty (`success`).

    [[rule]]
    prefix = "ask "
    run = { url = "http://127.0.0.1:5000/wechat-reply", timeout_ms = 30000 }
    fallback = { text = "The assistant is unavailable." }

Run: python3 scripts/examples/hook-server.py [PORT]. Replace `answer()` with a call to
your chatbot; a slow answer goes through [late] like a slow program.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(message):
    question = message.get("Content", "").removeprefix("ask ").strip()
    time.sleep(float(os.environ.get("HOOK_DELAY", "2")))  # stands in for a slow model call
    return f"You asked: {question}"


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: wechat-fcgi reuses the connection

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        message = json.loads(self.rfile.read(length) or b"{}")
        body = answer(message).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
