import Foundation
import WeftCore
import XCTest

/// The HTTP/1.1 L7 path (service ports declared `/http`) through real namespaces: per-request
/// balancing on a keep-alive connection, mesh headers, streaming bodies, smuggling refused,
/// and the mesh's own error answers.
final class HTTPTests: XCTestCase {
    var mesh: MeshHarness!
    var vip = ""

    static let echoApp = #"""
    import sys, http.server
    name = sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes
        def reply(self, body=b""):
            text = ("replica=%s\nxff=%s\nrid=%s\nlen=%d\nconn=%s\n" % (name, self.headers.get("x-forwarded-for"),
                    self.headers.get("x-request-id"), len(body), self.headers.get("connection"))).encode()
            self.send_response(200); self.send_header("content-length", str(len(text))); self.end_headers()
            if self.command != "HEAD": self.wfile.write(text)
        def do_GET(self): self.reply()
        def do_HEAD(self): self.reply()
        def do_POST(self):
            if self.headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0: self.rfile.readline(); break
                    body += self.rfile.read(size); self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
            self.reply(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        try Self.echoApp.write(toFile: mesh.dir + "/echo.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/echo.py", 0o644)
        for replica in ["a", "b"] {
            _ = try mesh.startWeft(["run", "--name", mesh.name(replica), "--service", "web", "--port", "80:3000/http",
                                    "--port", "81:3999/http", "--", "/usr/bin/python3", mesh.dir + "/echo.py", "3000", replica])
            try mesh.waitForListener(netns: mesh.name(replica), port: 3000)
        }
        let services = try mesh.services()
        vip = "\(try XCTUnwrap(services.first).vip)"
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func client(_ script: String) -> MeshHarness.Result {
        mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", script], timeout: 60)
    }

    func testKeepAliveRequestsAreBalancedPerRequestWithMeshHeaders() throws {
        // One curl, sixteen URLs: one client connection, reused (num_connects 1 then 0).
        // LEAST_REQUEST breaks ties at random: all sixteen on one replica is 1 in 32,768.
        let r = client("curl -sS -m 10 -w 'connects=%{num_connects}\\n' 'http://web/[1-16]'")
        XCTAssertEqual(r.status, 0, r.output)
        let replicas = r.stdout.split(separator: "\n").filter { $0.hasPrefix("replica=") }
        XCTAssertEqual(replicas.count, 16, r.stdout)
        XCTAssertEqual(Set(replicas).count, 2, "per-request balancing reaches both replicas on one connection:\n\(r.stdout)")
        XCTAssertEqual(r.stdout.components(separatedBy: "connects=1").count - 1, 1, r.stdout)
        XCTAssertEqual(r.stdout.components(separatedBy: "connects=0").count - 1, 15, r.stdout)
        let cliIP = r.stdout.split(separator: "\n").first { $0.hasPrefix("xff=") }
        XCTAssertTrue((cliIP?.hasPrefix("xff=10.234.") ?? false) || (cliIP?.hasPrefix("xff=fd77:7765:6674::") ?? false),
                      "x-forwarded-for carries the client's pod address (IPv4 or IPv6): \(r.stdout)")
        XCTAssertFalse(r.stdout.contains("rid=None"), "x-request-id is set: \(r.stdout)")
        XCTAssertFalse(r.stdout.contains("conn=keep-alive"), "hop-by-hop Connection is not forwarded: \(r.stdout)")
        let w = try XCTUnwrap(try mesh.workload(mesh.name("a")))
        XCTAssertGreaterThanOrEqual(w.counters.connectionsInbound, 1)
    }

    func testBodiesStreamBothWaysAndHEADWorks() throws {
        let r = client("""
            head -c 3000000 /dev/zero > /tmp/weft-body-$$ && \
            curl -sS -m 20 --data-binary @/tmp/weft-body-$$ http://web/upload && \
            curl -sS -m 20 -H 'transfer-encoding: chunked' --data-binary @/tmp/weft-body-$$ http://web/chunked && \
            curl -sS -m 10 -I http://web/ | head -1; rm -f /tmp/weft-body-$$
            """)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(r.stdout.components(separatedBy: "len=3000000").count - 1, 2, r.stdout)
        XCTAssertTrue(r.stdout.contains("HTTP/1.1 200"), r.stdout)
    }

    /// Python: `exchange(raw)` sends raw bytes to web:80 and returns all that comes back
    /// until the proxy closes (or 5 s of silence).
    static let exchangePython = #"""
        import socket
        def exchange(raw):
            s = socket.create_connection(("web", 80), timeout=5); s.sendall(raw)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
            except (socket.timeout, ConnectionResetError):
                pass
            return data

        """#

    func testSmugglingAndBadInputAreRefused() throws {
        let script = Self.exchangePython + """
            def send(raw):
                return exchange(raw).split(b"\\r\\n")[0].decode()
            print("clte", send(b"POST / HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n"))
            print("h2c", send(b"GET / HTTP/1.1\\r\\nHost: web\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAAQAAP__\\r\\nConnection: Upgrade, HTTP2-Settings\\r\\n\\r\\n"))
            print("badchunk", send(b"POST / HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\nhello\\r\\n0\\r\\n\\r\\n"))
            print("garbage", send(b"\\x16\\x03\\x01 not http at all\\r\\n\\r\\n"))
            print("ok", send(b"GET / HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n"))
            # Pipelining: three requests in one write, the last with a body; answered in order.
            s = socket.create_connection(("web", 80), timeout=5)
            s.sendall(b"GET /1 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\nGET /2 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n"
                      b"POST /3 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nhello")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk: break
                data += chunk
            print("pipelined", data.count(b"HTTP/1.1 200"), data.count(b"len=5"), data.index(b"len=0") < data.index(b"len=5"))
            """
        try script.write(toFile: mesh.dir + "/smuggle.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/smuggle.py", 0o644)
        let r = client("/usr/bin/python3 \(mesh.dir)/smuggle.py")
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("clte HTTP/1.1 400"), r.stdout)
        XCTAssertTrue(r.stdout.contains("h2c HTTP/1.1 400"), r.stdout)
        XCTAssertTrue(r.stdout.contains("badchunk HTTP/1.1 400"), r.stdout)
        XCTAssertTrue(r.stdout.contains("garbage HTTP/1.1 400"), r.stdout)
        XCTAssertTrue(r.stdout.contains("ok HTTP/1.1 200"), "the proxy keeps serving after bad input: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains("pipelined 3 1 True"), "pipelined requests answered in order: \(r.stdout)")
    }

    /// Mutations that request-desync tools (smuggler-style Transfer-Encoding and
    /// Content-Length variants) use to make a proxy and a server disagree on where a request
    /// ends. Each must be refused by the proxy, never forwarded; the good request after them
    /// must still work. The body of each carries a second request ("GET /smuggled") that a
    /// confused server would answer.
    func testDesyncMutationsAreRefused() throws {
        let script = Self.exchangePython + #"""
            SMUG = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n"
            CASES = {
                "te_space_before_colon": b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n",
                "te_xchunked": b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n",
                "te_tab_and_cl": b"Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n",
                "te_twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                "te_chunked_identity": b"Transfer-Encoding: chunked, identity\r\n",
                "te_identity": b"Transfer-Encoding: identity\r\nContent-Length: 4\r\n",
                "te_obs_fold": b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n",
                "te_vertical_tab": b"Transfer-Encoding:\x0bchunked\r\nContent-Length: 4\r\n",
                "te_nul": b"Transfer-Encoding: chunked\x00\r\nContent-Length: 4\r\n",
                "te_not_last": b"Transfer-Encoding: chunked, gzip\r\n",
                "cl_plus": b"Content-Length: +4\r\n",
                "cl_two_values": b"Content-Length: 4\r\nContent-Length: 40\r\n",
                "cl_list": b"Content-Length: 4, 40\r\n",
                "cl_hex": b"Content-Length: 0x4\r\n",
                "cl_space_in_name": b"Content Length: 4\r\nTransfer-Encoding: chunked\r\n",
                "cl_negative": b"Content-Length: -1\r\n",
            }
            def send(raw):
                return exchange(raw)
            for name, headers in CASES.items():
                data = send(b"POST / HTTP/1.1\r\nHost: web\r\n" + headers + b"\r\n" + SMUG)
                first = data.split(b"\r\n")[0].decode(errors="replace")
                print(name, first.replace(" ", "_") or "closed", data.count(b"HTTP/1.1 200"))
            # Chunked bodies that lie: a size that overflows, a chunk longer than its size, a missing CRLF.
            for name, body in {"chunk_overflow": b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
                               "chunk_too_long": b"3\r\nhello\r\n0\r\n\r\n",
                               "chunk_no_crlf": b"5\r\nhello0\r\n\r\n"}.items():
                data = send(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
                print(name, data.split(b"\r\n")[0].decode(errors="replace").replace(" ", "_") or "closed", data.count(b"HTTP/1.1 200"))
            print("good", send(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").split(b"\r\n")[0].decode().replace(" ", "_"), 1)
            """#
        try script.write(toFile: mesh.dir + "/desync.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/desync.py", 0o644)
        let r = client("/usr/bin/python3 \(mesh.dir)/desync.py")
        XCTAssertEqual(r.status, 0, r.output)
        var refused = 0
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.count == 3 else { continue }
            if f[0] == "good" {
                XCTAssertEqual(f[1], "HTTP/1.1_200_OK", "the proxy keeps serving")
                continue
            }
            XCTAssertTrue(f[1].hasPrefix("HTTP/1.1_400") || f[1].hasPrefix("HTTP/1.1_501") || f[1] == "closed", "\(f[0]) must be refused: \(f[1])")
            XCTAssertEqual(f[2], "0", "\(f[0]): nothing may reach the server")
            refused += 1
        }
        XCTAssertEqual(refused, 19, r.stdout)
        print("desync mutations refused: \(refused)")
    }

    func testMeshErrorsAreAnsweredWithFlags() throws {
        // Port 81 maps to 3999, where nothing listens: the endpoint's proxy accepts, then
        // resets. Seen from the caller that is UC (closed before responding) or, when the
        // reset wins the race with the handshake's completion, UF (connect failure).
        let r = client("curl -sS -m 10 -D - http://web:81/; echo; curl -sS -m 10 -o /dev/null -w '%{http_code}\\n' http://web:82/")
        XCTAssertTrue(r.stdout.contains("HTTP/1.1 503"), r.output)
        // The mesh's own answers keep the connection: the next request reuses it.
        let again = client("curl -sS -m 10 -o /dev/null -o /dev/null -w '%{http_code} %{num_connects}\\n' http://web:81/a http://web:81/b")
        XCTAssertEqual(again.stdout, "503 1\n503 0\n", "the second request reuses the connection: \(again.output)")
        let flagged = r.stdout.lowercased()
        XCTAssertTrue(flagged.contains("x-weft-response-flags: uc") || flagged.contains("x-weft-response-flags: uf"),
                      "\(r.output)\n--- agent ---\n\(mesh.agentLog.suffix(2500))")
        // Stop both replicas: no endpoints left.
        for replica in ["a", "b"] {
            _ = mesh.run(["pkill", "-TERM", "-f", "echo.py 3000 \(replica)"])
        }
        try mesh.waitUntil("endpoints gone", timeout: 20) {
            let s = try self.mesh.services()
            return s.first?.endpoints.isEmpty ?? false
        }
        let none = client("curl -sS -m 10 -D - http://\(vip):80/")
        XCTAssertTrue(none.stdout.contains("HTTP/1.1 503"), none.output)
        XCTAssertTrue(none.stdout.lowercased().contains("x-weft-response-flags: uh"), none.stdout)
        XCTAssertTrue(none.stdout.contains("no healthy upstream for web.default"), none.stdout)
    }
}
