import Foundation
import XCTest

/// A connection flood from one workload hits its own limit (--max-connections-per-workload)
/// and is refused with resets, counted and logged; another workload calling the same
/// service at the same time is not affected.
final class ConnectionFloodTests: MeshTestCase {
    override var agentArgs: [String] { ["--max-connections-per-workload", "40"] }

    static let server = #"""
    import sys, http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = b"ok\n"
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// Opens N keep-alive connections, one request each, and holds them: prints how many
    /// were answered and how many were refused; holds them while `hold` seconds pass.
    static let flood = #"""
    import socket, sys, time
    n, hold = int(sys.argv[1]), float(sys.argv[2])
    conns, ok, refused = [], 0, 0
    # One address, so one attempt is one TCP connection: with a name, create_connection tries
    # the next address (IPv6, then IPv4) when a reset races its connect, and the proxy
    # counts two refusals for one the script sees (a flaky 61 against 60 in CI).
    web = socket.getaddrinfo("web", 8000, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    for i in range(n):
        try:
            s = socket.create_connection(web, timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            d = s.recv(4096)
            if d.startswith(b"HTTP/1.1 200"): ok += 1; conns.append(s)
            else: refused += 1
        except OSError:
            refused += 1
    print("flood", ok, refused); sys.stdout.flush()
    time.sleep(hold)
    """#

    static let steady = #"""
    import socket, time
    ok = 0
    for i in range(20):
        s = socket.create_connection(("web", 8000), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        if s.recv(4096).startswith(b"HTTP/1.1 200"): ok += 1
        s.close(); time.sleep(0.05)
    print("steady", ok)
    """#

    func testAFloodHitsItsOwnWorkloadsLimitOnly() throws {
        for (file, text) in [("server.py", Self.server), ("flood.py", Self.flood), ("steady.py", Self.steady)] {
            try text.write(toFile: mesh.dir + "/" + file, atomically: true, encoding: .utf8)
        }
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/server.py", "8000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let flooder = mesh.name("flooder"), calm = mesh.name("calm")
        for name in [flooder, calm] {
            _ = try mesh.startWeft(["run", "--name", name, "--service", name, "--", "sleep", "300"])
            try mesh.waitUntil("\(name) attached", timeout: 20) { try self.mesh.workload(name) != nil }
        }
        let flood = try mesh.startProcess(["ip", "netns", "exec", flooder, "/usr/bin/python3", mesh.dir + "/flood.py", "100", "6"])
        try mesh.waitUntil("the flood holds its connections", timeout: 30) { flood.stdout.contains("flood ") }
        let steady = mesh.run(["ip", "netns", "exec", calm, "/usr/bin/python3", mesh.dir + "/steady.py"], timeout: 30)
        _ = mesh.wait(flood, timeout: 20)

        let f = flood.stdout.split(separator: "\n").first { $0.hasPrefix("flood ") }?.split(separator: " ") ?? []
        XCTAssertEqual(f.count, 3, flood.stdout + flood.stderr)
        if f.count == 3 {
            XCTAssertEqual(f[1], "40", "exactly the limit's worth of connections is served")
            XCTAssertEqual(f[2], "60", "the rest are refused")
        }
        XCTAssertEqual(steady.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "steady 20", "another workload is not affected: \(steady.output)")
        let counters = try XCTUnwrap(try mesh.workload(flooder)).counters
        XCTAssertEqual(counters.connectionsOverLimit, 60)
        XCTAssertEqual(try XCTUnwrap(try mesh.workload(calm)).counters.connectionsOverLimit, 0)
        XCTAssertTrue(mesh.agentLog.contains("outbound connection refused: 40 connections already open"))
        let metrics = mesh.run(["curl", "-sf", "http://127.0.0.1:\(mesh.metricsPort)/metrics"]).stdout
        XCTAssertTrue(metrics.split(separator: "\n").contains { $0.hasPrefix("weft_connections_over_limit_total") && $0.contains(flooder) && $0.hasSuffix(" 60") },
                      "weft_connections_over_limit_total counts them")
    }
}
