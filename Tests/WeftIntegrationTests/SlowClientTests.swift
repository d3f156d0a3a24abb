import Foundation
import XCTest

/// HTTP/1.1 from apps under `--request-headers-timeout`: a slowloris client (a request head
/// that never ends) gets 408 and its connection closed; a keep-alive connection left idle and
/// a connection that never says anything are closed; a request whose head came at once is
/// never cut, however long the server takes to answer.
final class SlowClientTests: MeshTestCase {
    override var agentArgs: [String] { ["--request-headers-timeout", "1s"] }

    static let server = #"""
    import sys, time, http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            if self.path == "/slow": time.sleep(2.5)
            body = b"done\n"
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// Each case prints one line: CASE, seconds until the proxy answered or closed, what came.
    static let probes = #"""
    import socket, time, sys
    def conn():
        s = socket.create_connection(("web", 8000), timeout=8); return s
    def until_closed(s, start, sending=None):
        got = b""; s.settimeout(0.2)
        while time.time() - start < 8:
            if sending:
                try: s.sendall(sending)
                except OSError: break
            try:
                d = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if not d: break
            got += d
        return time.time() - start, got
    # slowloris: a head that never ends, one header line every 0.2 s
    s = conn(); t = time.time(); s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n")
    dt, got = until_closed(s, t, sending=b"X-Slow: 1\r\n")
    print("slowloris %.2f %r" % (dt, got.split(b"\r\n")[0]))
    # idle keep-alive: one request answered, then nothing
    s = conn(); s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"); time.sleep(0.3); s.settimeout(5); first = s.recv(4096)
    t = time.time(); dt, got = until_closed(s, t)
    print("idle %.2f %r %r" % (dt, first.split(b"\r\n")[0], got))
    # silent: connects, says nothing
    s = conn(); t = time.time(); dt, got = until_closed(s, t)
    print("silent %.2f %r" % (dt, got))
    # slow server: the head comes at once; the answer takes 2.5 s and must arrive
    s = conn(); t = time.time(); s.sendall(b"GET /slow HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    dt, got = until_closed(s, t)
    print("slowserver %.2f %r" % (dt, got.split(b"\r\n")[0]))
    """#

    func testSlowAndIdleClientsAreCutOffAndSlowServersAreNot() throws {
        try Self.server.write(toFile: mesh.dir + "/server.py", atomically: true, encoding: .utf8)
        try Self.probes.write(toFile: mesh.dir + "/probes.py", atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/server.py", "8000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(client) != nil }
        let r = mesh.run(["ip", "netns", "exec", client, "/usr/bin/python3", mesh.dir + "/probes.py"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        var lines: [String: [Substring]] = [:]
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 2)
            if f.count >= 2 { lines[String(f[0])] = Array(f.dropFirst()) }
        }
        func seconds(_ k: String) -> Double { Double(lines[k]?.first ?? "") ?? -1 }
        func rest(_ k: String) -> String { lines[k].flatMap { $0.count > 1 ? String($0[1]) : nil } ?? "" }
        // Bounds are generous: 1 s timeout, cut within 4 s (never at the probe's 8 s limit).
        XCTAssertTrue(rest("slowloris").contains("408 Request Timeout"), r.stdout)
        XCTAssertTrue((0.8..<4).contains(seconds("slowloris")), "slowloris cut after the timeout: \(r.stdout)")
        XCTAssertTrue(rest("idle").contains("200 OK") && rest("idle").hasSuffix("b''"), "answered, then closed quietly: \(r.stdout)")
        XCTAssertTrue((0.5..<4).contains(seconds("idle")), r.stdout)
        XCTAssertTrue((0.8..<4).contains(seconds("silent")) && rest("silent") == "b''", "a silent connection is closed: \(r.stdout)")
        XCTAssertTrue(rest("slowserver").contains("200 OK"), "a slow answer is never cut by the headers timeout: \(r.stdout)")
        XCTAssertGreaterThan(seconds("slowserver"), 2.4, r.stdout)
        XCTAssertTrue(mesh.agentLog.contains("outbound HTTP 408: request headers not received within 1000 ms"), mesh.agentLog.suffix(1500).description)
    }
}
