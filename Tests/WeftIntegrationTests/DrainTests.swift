import Foundation
import XCTest

/// SIGTERM to the agent drains: the capture ports stop accepting, requests already started
/// are answered (their connection then closes), and the agent exits once they are done —
/// before the drain timeout. SIGHUP reloads the config directory without a restart.
final class DrainTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start(agentArgs: ["--drain-timeout", "8s"]) }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    /// Each request is logged by the server when it arrives ("got ID"), answered 400 ms
    /// later. The client (8 keep-alive connections) logs "ok ID" per answer. No request the
    /// server got may be missing an "ok" at the client.
    static let server = """
    import sys, time, http.server, socketserver
    log = open(sys.argv[1], "a", buffering=1)
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            rid = self.path.split("id=")[-1]
            log.write(f"got {rid} {time.time():.3f}\\n")
            time.sleep(0.4)
            body = f"done {rid}\\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
    S(("0.0.0.0", 8000), H).serve_forever()
    """

    static let client = """
    import sys, time, threading, http.client
    out = open(sys.argv[1], "a", buffering=1)
    lock = threading.Lock()
    stop_at = time.time() + float(sys.argv[2])
    def worker(w):
        n = 0
        conn = None
        while time.time() < stop_at:
            n += 1
            rid = f"{w}-{n}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("web", 8000, timeout=15)
                conn.request("GET", f"/r?id={rid}")
                r = conn.getresponse()
                body = r.read().decode()
                with lock:
                    out.write(f"ok {rid} {r.status} {time.time():.3f} {r.getheader('connection') or '-'} {body.strip()}\\n")
                if (r.getheader("connection") or "").lower() == "close":
                    conn.close(); conn = None
            except Exception as e:
                with lock:
                    out.write(f"err {rid} {type(e).__name__} {time.time():.3f}\\n")
                try: conn.close()
                except Exception: pass
                conn = None
                time.sleep(0.05)
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
    """

    func testSIGTERMDrainsInFlightRequestsAndTheAgentExitsEarly() throws {
        try FileManager.default.createDirectory(atPath: mesh.dir + "/py", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let serverLog = mesh.dir + "/py/server.log", clientLog = mesh.dir + "/py/client.log"
        for (name, text) in [("server.py", Self.server), ("client.py", Self.client)] {
            FileManager.default.createFile(atPath: mesh.dir + "/py/" + name, contents: Data(text.utf8), attributes: [.posixPermissions: 0o644])
        }
        for f in [serverLog, clientLog] {
            FileManager.default.createFile(atPath: f, contents: nil, attributes: [.posixPermissions: 0o666])
        }
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http",
                                "--", "/usr/bin/python3", mesh.dir + "/py/server.py", serverLog])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let client = mesh.name("cli")
        let other = mesh.name("cli2")
        _ = try mesh.startWeft(["run", "--name", other, "--service", "other", "--", "sleep", "300"])
        let load = try mesh.startWeft(["run", "--name", client, "--service", "client", "--",
                                       "/usr/bin/python3", mesh.dir + "/py/client.py", clientLog, "6"])
        // Let the load settle: requests complete through both proxies.
        try mesh.waitUntil("requests answered", timeout: 20) {
            ((try? String(contentsOfFile: clientLog, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("ok ") }.count >= 16
        }
        usleep(150_000)
        guard let agent = mesh.agent else { return XCTFail("no agent") }
        let sigterm = Date().timeIntervalSince1970
        kill(agent.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(15)
        while agent.isRunning && Date() < deadline { usleep(20_000) }
        XCTAssertFalse(agent.isRunning, "the agent exits after draining")
        let took = Date().timeIntervalSince1970 - sigterm
        XCTAssertEqual(mesh.wait(load, timeout: 30), 0)

        let got = try String(contentsOfFile: serverLog, encoding: .utf8).split(separator: "\n").map { $0.split(separator: " ") }
        let results = try String(contentsOfFile: clientLog, encoding: .utf8).split(separator: "\n").map { $0.split(separator: " ") }
        let answered = Set(results.filter { $0.first == "ok" && $0.count >= 3 && $0[2] == "200" }.map { String($0[1]) })
        let started = got.map { String($0[1]) }
        let lost = started.filter { !answered.contains($0) }
        XCTAssertEqual(lost, [], "requests the server got but whose answer never reached the client; agent log:\n\(mesh.agentLog.suffix(3000))")
        // Some requests were in flight at SIGTERM, and were answered after it.
        let inFlight = got.filter { Double($0[2]) ?? 0 < sigterm }.map { String($0[1]) }
            .filter { id in results.contains { $0.first == "ok" && String($0[1]) == id && (Double($0[3]) ?? 0) > sigterm } }
        XCTAssertGreaterThan(inFlight.count, 0, "no request was in flight at SIGTERM: the test proved nothing")
        // Their responses said the connection closes.
        let closing = results.filter { $0.first == "ok" && inFlight.contains(String($0[1])) && $0[4] == "close" }
        XCTAssertEqual(closing.count, inFlight.count, "responses completed while draining carry connection: close")
        // New connections after SIGTERM are refused rather than held.
        XCTAssertTrue(results.contains { $0.first == "err" && (Double($0[3]) ?? 0) > sigterm }, "callers fail fast once the agent drains")
        XCTAssertTrue(mesh.agentLog.contains("drained"), mesh.agentLog.suffix(2000).description)
        XCTAssertLessThan(took, 8, "the agent left once its connections finished, not at the drain timeout")

        // The agent comes back, re-attaches, and a client reaches web again.
        try mesh.restartAgent(signal: SIGKILL)
        XCTAssertTrue(mesh.agentLog.contains("re-attached"), mesh.agentLog.suffix(1500).description)
        var again = mesh.run(["ip", "netns", "exec", other, "curl", "-sS", "-m", "3", "http://web:8000/r?id=after"], timeout: 20)
        for _ in 0..<20 where again.status != 0 {
            usleep(100_000)
            again = mesh.run(["ip", "netns", "exec", other, "curl", "-sS", "-m", "3", "http://web:8000/r?id=after"], timeout: 20)
        }
        XCTAssertEqual(again.stdout, "done after\n", again.output)
    }

    func testSIGHUPReloadsTheConfigDirectory() throws {
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http",
                                "--", "/usr/bin/python3", "-m", "http.server", "8000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let bad = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web-fault}
        spec:
          hosts: [web]
          http:
          - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
            route: [{destination: {host: web}}]
        """
        guard let agent = mesh.agent else { return XCTFail("no agent") }
        FileManager.default.createFile(atPath: mesh.configDir + "/fault.yaml", contents: Data(bad.utf8))
        kill(agent.processIdentifier, SIGHUP)
        try mesh.waitUntil("SIGHUP reload logged", timeout: 10) { self.mesh.agentLog.contains("SIGHUP: reloaded") }
        XCTAssertTrue(agent.isRunning, "SIGHUP must not stop the agent")
        XCTAssertTrue(mesh.agentLog.contains("config directory \(mesh.configDir) re-read"), mesh.agentLog.suffix(1500).description)
        let config = mesh.weft(["get", "config", "-o", "yaml"])
        XCTAssertTrue(config.stdout.contains("web-fault"), config.output)
    }
}
