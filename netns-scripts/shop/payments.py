"""The payment service of the Weft demo: an ordinary Python program that knows nothing of
the mesh. POST /charge?amount=N asks the fraud service, by name, whether to accept."""
import json, os, sys, urllib.request, urllib.error
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

VERSION = os.environ.get("VERSION", "v1")
FRAUD = os.environ.get("FRAUD_URL", "http://fraud:7000")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        amount = self.path.split("amount=")[-1] if "amount=" in self.path else "0"
        try:
            with urllib.request.urlopen(f"{FRAUD}/check?amount={amount}", timeout=5) as r:
                verdict, status = json.loads(r.read()), 200
        except urllib.error.HTTPError as e:
            verdict, status = {"error": f"fraud check answered {e.code}"}, 503
        except Exception as e:
            verdict, status = {"error": str(e)}, 503
        body = json.dumps({"version": VERSION, "charged": status == 200, "fraud": verdict}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
