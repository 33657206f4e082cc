#!/usr/bin/env python3
"""A fake GitHub for the catalogue example: the commit statuses API and a health URL.

POST /api/v3/repos/{owner}/{repo}/statuses/{sha} needs `Authorization: Bearer <token>` (the token
is the first argument) and a JSON body with a known `state`; it answers 201 like GitHub and keeps
the status. GET /statuses lists what was received (for the example's checks), GET /health
answers `ok`. Prints the port it listens on, then serves until killed.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = sys.argv[1]
RECEIVED = []


class Forge(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/statuses":
            return self.answer(200, RECEIVED)
        if self.path == "/health":
            return self.answer(200, {"status": "ok"})
        return self.answer(404, {"message": "Not Found"})

    def do_POST(self):
        parts = self.path.split("/")
        # ['', 'api', 'v3', 'repos', owner, repo, 'statuses', sha]
        if len(parts) != 8 or parts[1:4] != ["api", "v3", "repos"] or parts[6] != "statuses":
            return self.answer(404, {"message": "Not Found"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"message": "Bad credentials"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if body.get("state") not in ("error", "failure", "pending", "success"):
            return self.answer(422, {"message": "Validation Failed"})
        RECEIVED.append({"repo": f"{parts[4]}/{parts[5]}", "sha": parts[7], **body})
        return self.answer(201, {"id": len(RECEIVED), **body})


server = ThreadingHTTPServer(("127.0.0.1", 0), Forge)
print(server.server_address[1], flush=True)
server.serve_forever()
