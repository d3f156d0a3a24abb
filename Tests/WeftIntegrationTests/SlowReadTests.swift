import Foundation
import XCTest

/// `--idle-timeout` (2 s here): a client that stops reading a large response is cut off once
/// nothing moves (backpressure meanwhile keeps the agent from buffering the response), an
/// idle TCP connection is closed, and a slow but steady response is never cut.
final class SlowReadTests: MeshTestCase {
    override var agentArgs: [String] { ["--idle-timeout", "2s"] }

    static let server = #"""
    import sys, time, socket, threading, http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            if self.path == "/big":
                self.send_response(200); self.send_header("content-length", str(256 << 20)); self.end_headers()
                chunk = b"x" * 65536
                try:
                    for _ in range(4096): self.wfile.write(chunk)
                except OSError: pass
            else:  # /drip: one byte every 0.5 s for 6 s
                self.send_response(200); self.send_header("content-length", "12"); self.end_headers()
                for _ in range(12): self.wfile.write(b"d"); self.wfile.flush(); time.sleep(0.5)
        def log_message(self, *a): pass
    def tcp():
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 9000)); t.listen(8)
        while True:
            c, _ = t.accept(); threading.Thread(target=lambda c=c: c.recv(10), daemon=True).start()
    threading.Thread(target=tcp, daemon=True).start()
    http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
    """#

    static let client = #"""
    import socket, time, sys
    # 1. slow read: ask for 256 MiB, read nothing for 8 s, then read what is left.
    s = socket.create_connection(("web", 8000), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
    print("stalled"); sys.stdout.flush()
    time.sleep(8)
    got = 0
    try:
        while True:
            d = s.recv(1 << 20)
            if not d: break
            got += len(d)
    except OSError:
        pass
    print("slowread", got); sys.stdout.flush()
    # 2. a steady trickle is not idle.
    s = socket.create_connection(("web", 8000), timeout=10)
    s.sendall(b"GET /drip HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    print("drip", data.endswith(b"dddddddddddd")); sys.stdout.flush()
    # 3. an idle TCP connection (declared /tcp) is closed.
    s = socket.create_connection(("web", 9000), timeout=10); t = time.time()
    try:
        d = s.recv(10)
    except OSError:
        d = b""
    print("tcpidle %.1f %r" % (time.time() - t, d))
    """#

    func testSlowReadersAndIdleConnectionsAreCutOffAndSteadyOnesAreNot() throws {
        try Self.server.write(toFile: mesh.dir + "/server.py", atomically: true, encoding: .utf8)
        try Self.client.write(toFile: mesh.dir + "/client.py", atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http", "--port", "9000/tcp", "--",
                                "/usr/bin/python3", mesh.dir + "/server.py"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let cli = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", cli, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(cli) != nil }
        let agent = try XCTUnwrap(mesh.agent?.processIdentifier)
        func rssKiB() -> Int {
            let s = (try? String(contentsOfFile: "/proc/\(agent)/status", encoding: .utf8)) ?? ""
            return s.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        }
        let before = rssKiB()
        let run = try mesh.startProcess(["ip", "netns", "exec", cli, "/usr/bin/python3", mesh.dir + "/client.py"])
        try mesh.waitUntil("the client stalls", timeout: 20) { run.stdout.contains("stalled") }
        sleep(3)
        let during = rssKiB()
        XCTAssertNotNil(mesh.wait(run, timeout: 60), "the client finished")
        var lines: [String: [Substring]] = [:]
        for line in run.stdout.split(separator: "\n") {
            let f = line.split(separator: " ")
            if let k = f.first { lines[String(k)] = Array(f.dropFirst()) }
        }
        let got = Int(lines["slowread"]?.first ?? "") ?? -1
        XCTAssertGreaterThanOrEqual(got, 0, run.stdout + run.stderr)
        XCTAssertLessThan(got, 32 << 20, "the stalled response was cut off, not delivered whole (\(got) bytes)")
        XCTAssertLessThan(during - before, 64 * 1024, "the agent did not buffer the response it could not deliver (RSS +\(during - before) KiB)")
        XCTAssertEqual(lines["drip"]?.first, "True", "a slow but steady response is not cut: \(run.stdout)")
        let idle = Double(lines["tcpidle"]?.first ?? "") ?? -1
        XCTAssertTrue((1.5...6.5).contains(idle), "an idle TCP connection is closed after 2-4 s (plus scheduling): \(run.stdout)")
        print("slow read: \(got) bytes before the cut, agent RSS +\(during - before) KiB; idle TCP closed after \(idle) s")
    }
}
