"""The fraud service of the Weft demo: an ordinary Python program. GET /check?amount=N
answers a verdict. With FLAKY=N (percent), that share of requests fails with 503: the
misbehaving replica the mesh's retries must hide."""
import json, os, random, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

FLAKY = int(os.environ.get("FLAKY", "0"))
NAME = os.environ.get("WEFT_WORKLOAD", "fraud")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if random.randrange(100) < FLAKY:
            status, body = 503, {"error": "replica overloaded", "replica": NAME}
        else:
            amount = float(self.path.split("amount=")[-1]) if "amount=" in self.path else 0
            status, body = 200, {"risk": "high" if amount > 1000 else "low", "replica": NAME}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

port = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
