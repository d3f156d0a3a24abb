import Foundation
import WeftCore
import XCTest

/// Outlier detection through real namespaces: of three replicas, the one answering 500 to
/// everything is ejected after a few errors, and the client then sees none.
final class OutlierTests: XCTestCase {
    var mesh: MeshHarness!

    static let app = #"""
    import sys, http.server
    name, failing = sys.argv[2], sys.argv[3] == "fail"
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = name.encode()
            self.send_response(500 if failing else 200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    static let client = #"""
    import http.client
    conn = http.client.HTTPConnection("web", 80, timeout=10)
    statuses = []
    for i in range(300):
        conn.request("GET", "/"); r = conn.getresponse(); r.read(); statuses.append(r.status)
    print("first50", sum(1 for s in statuses[:50] if s != 200))
    print("last250", sum(1 for s in statuses[50:] if s != 200))
    """#

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        for (file, text) in [("app.py", Self.app), ("client.py", Self.client)] {
            try text.write(toFile: "\(mesh.dir)/\(file)", atomically: true, encoding: .utf8)
            chmod("\(mesh.dir)/\(file)", 0o644)
        }
        for (replica, mode) in [("a", "ok"), ("b", "ok"), ("c", "fail")] {
            _ = try mesh.startWeft(["run", "--name", mesh.name(replica), "--service", "web", "--port", "80:3000/http",
                                    "--", "/usr/bin/python3", mesh.dir + "/app.py", "3000", replica, mode])
            try mesh.waitForListener(netns: mesh.name(replica), port: 3000)
        }
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func testAFailingReplicaIsEjectedAndClientsStopSeeingErrors() throws {
        let file = mesh.dir + "/dr.yaml"
        try """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              trafficPolicy:
                outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 60s, maxEjectionPercent: 50}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(applied.status, 0, applied.output)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "/usr/bin/python3", mesh.dir + "/client.py"],
                          timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        let first = Int(r.stdout.split(separator: "\n").first { $0.hasPrefix("first50") }?.split(separator: " ").last ?? "") ?? -1
        let last = Int(r.stdout.split(separator: "\n").first { $0.hasPrefix("last250") }?.split(separator: " ").last ?? "") ?? -1
        XCTAssertEqual(first, 3, "exactly the three errors that eject it: \(r.stdout)")
        XCTAssertEqual(last, 0, "after ejection no client-visible errors: \(r.stdout)")
        XCTAssertEqual(try mesh.service("web")?.ejected, [mesh.name("c")])
        XCTAssertTrue(mesh.weft(["get", "services"]).stdout.contains(mesh.name("c")), "the table shows the ejection")
    }

    static let slowApp = #"""
    import sys, http.server, time, threading
    peers = set(); lock = threading.Lock()
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            with lock: peers.add(self.client_address[1])
            if self.path == "/conns": body = str(len(peers)).encode()
            else:
                time.sleep(0.5); body = b"slow"
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 3100), H).serve_forever()
    """#

    func testConnectionPoolLimitsTripTheBreakerQueueAndRecycle() throws {
        try Self.slowApp.write(toFile: mesh.dir + "/slow.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/slow.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("slow"), "--service", "slow", "--port", "80:3100/http",
                                "--", "/usr/bin/python3", mesh.dir + "/slow.py"])
        try mesh.waitForListener(netns: mesh.name("slow"), port: 3100)
        func rule(_ http: String) throws {
            let file = mesh.dir + "/pool-\(UUID().uuidString.prefix(4)).yaml"
            try """
                apiVersion: networking.istio.io/v1
                kind: DestinationRule
                metadata: {name: slow}
                spec:
                  host: slow
                  trafficPolicy: {connectionPool: {http: {\(http)}}}
                """.write(toFile: file, atomically: true, encoding: .utf8)
            let applied = mesh.weft(["apply", "-f", file])
            XCTAssertEqual(applied.status, 0, applied.output)
        }
        let burst = "for i in 1 2 3 4 5; do curl -sS -m 10 -o /dev/null -D - -w 'code=%{http_code}\\n' http://slow/ & done; wait"
        // One request at a time and no waiting room: four of five fail fast with 503 UO.
        try rule("http2MaxRequests: 1, http1MaxPendingRequests: 0")
        var r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", burst], timeout: 60)
        XCTAssertEqual(r.stdout.components(separatedBy: "code=200").count - 1, 1, r.output)
        XCTAssertEqual(r.stdout.components(separatedBy: "code=503").count - 1, 4, r.output)
        XCTAssertEqual(r.stdout.lowercased().components(separatedBy: "x-weft-response-flags: uo").count - 1, 4, r.output)
        // With a waiting room of four they all succeed, one after another.
        try rule("http2MaxRequests: 1, http1MaxPendingRequests: 4")
        r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", burst], timeout: 60)
        XCTAssertEqual(r.stdout.components(separatedBy: "code=200").count - 1, 5, r.output)
        // maxRequestsPerConnection: 1 → every request on a new upstream connection.
        try rule("maxRequestsPerConnection: 1")
        let before = Int(mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "5", "http://slow/conns"]).stdout) ?? -1
        r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                       "curl -sS -m 10 -o /dev/null -o /dev/null -o /dev/null http://slow/a http://slow/b http://slow/c; curl -sS -m 5 http://slow/conns"], timeout: 60)
        XCTAssertEqual(Int(r.stdout), before + 4, "three requests and the count itself, each on its own connection: \(r.output)")
    }

    static let checkedApp = #"""
    import sys, http.server
    name, sick = sys.argv[1], sys.argv[2] == "sick"
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def do_GET(self):
            global sick
            if self.path == "/toggle": sick = not sick
            code = 503 if self.path == "/healthz" and sick else 200
            body = name.encode()
            self.send_response(code); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 3200), H).serve_forever()
    """#

    func testActiveHealthChecksTakeAFailingEndpointOutAndBack() throws {
        try Self.checkedApp.write(toFile: mesh.dir + "/checked.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/checked.py", 0o644)
        for (replica, mode) in [("h1", "well"), ("h2", "sick")] {
            _ = try mesh.startWeft(["run", "--name", mesh.name(replica), "--service", "checked", "--port", "80:3200/http",
                                    "--", "/usr/bin/python3", mesh.dir + "/checked.py", replica, mode])
            try mesh.waitForListener(netns: mesh.name(replica), port: 3200)
        }
        let file = mesh.dir + "/hc.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: HealthCheck
            metadata: {name: checked}
            spec: {host: checked, http: {path: /healthz}, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        func unhealthy() throws -> [String] {
            try mesh.service("checked")?.unhealthy ?? []
        }
        try mesh.waitUntil("h2 marked unhealthy", timeout: 20) { try unhealthy() == [self.mesh.name("h2")] }
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                           "for i in $(seq 20); do curl -sS -m 5 http://checked/; echo; done"], timeout: 60)
        XCTAssertEqual(Set(r.stdout.split(separator: "\n").map(String.init)), ["h1"], "only the healthy endpoint serves: \(r.output)")
        // Healthy again: back in rotation.
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("h2"))?.spec.podIP)
        _ = mesh.run(["curl", "-sS", "-m", "5", "http://\(ip):3200/toggle"])
        try mesh.waitUntil("h2 healthy again", timeout: 20) { try unhealthy().isEmpty }
        XCTAssertTrue(mesh.agentLog.contains("health check passes again: \(mesh.name("h2"))"), mesh.agentLog.suffix(2000).description)
    }

    static let breakerApp = #"""
    import http.server
    failing, served = True, 0
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def do_GET(self):
            global failing, served
            if self.path == "/toggle": failing = not failing; code, body = 200, b"toggled"
            elif self.path == "/served": code, body = 200, str(served).encode()
            else: served += 1; code, body = (500, b"down") if failing else (200, b"up")
            self.send_response(code); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 3300), H).serve_forever()
    """#

    func testTheCircuitBreakerOpensFailsFastAndRecoversThroughHalfOpen() throws {
        try Self.breakerApp.write(toFile: mesh.dir + "/breaker.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/breaker.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("brk"), "--service", "brk", "--port", "80:3300/http",
                                "--", "/usr/bin/python3", mesh.dir + "/breaker.py"])
        try mesh.waitForListener(netns: mesh.name("brk"), port: 3300)
        let file = mesh.dir + "/cb.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: CircuitBreaker
            metadata: {name: brk}
            spec: {host: brk, failureRatio: 0.5, minimumRequests: 10, window: 10s, openDuration: 2s, halfOpenRequests: 2}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        func breaker() throws -> String? {
            try mesh.service("brk")?.breaker
        }
        XCTAssertEqual(try breaker(), "closed")
        let ip = try XCTUnwrap(try mesh.workload(mesh.name("brk"))?.spec.podIP)
        // Twenty requests to a failing service: ten reach it, then the breaker answers alone.
        var r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                           "for i in $(seq 20); do curl -sS -m 5 -o /dev/null -D - http://brk/ | tr -d '\\r' | grep -iE '^HTTP|flags'; done"],
                          timeout: 60)
        XCTAssertEqual(r.stdout.components(separatedBy: "HTTP/1.1 500").count - 1, 10, r.stdout)
        XCTAssertEqual(r.stdout.components(separatedBy: "HTTP/1.1 503").count - 1, 10, r.stdout)
        XCTAssertEqual(r.stdout.lowercased().components(separatedBy: "x-weft-response-flags: uo").count - 1, 10, r.stdout)
        XCTAssertEqual(mesh.run(["curl", "-sS", "-m", "5", "http://\(ip):3300/served"]).stdout, "10", "failing fast: nothing more reached it")
        XCTAssertEqual(try breaker(), "open")
        // Visible in the admin API and the metrics too.
        let clusters = mesh.run(["curl", "-sS", "-m", "5", "http://127.0.0.1:\(mesh.adminPort)/clusters"]).stdout
        XCTAssertTrue(clusters.contains("brk.default.svc.cluster.local::circuit_breaker::open"), clusters)
        let metrics = mesh.run(["curl", "-sS", "-m", "5", "http://127.0.0.1:\(mesh.metricsPort)/metrics"]).stdout
        XCTAssertTrue(metrics.contains(#"weft_circuit_breaker_state{destination_service="brk.default.svc.cluster.local",state="open"} 1"#),
                      metrics.split(separator: "\n").filter { $0.contains("breaker") }.joined(separator: "\n"))
        XCTAssertTrue(metrics.contains(#"response_flags="UO"} 10"#), "the fast failures are counted with their flag")
        // The service recovers; after openDuration two probes pass and the breaker closes.
        _ = mesh.run(["curl", "-sS", "-m", "5", "http://\(ip):3300/toggle"])
        usleep(2_200_000)
        r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c",
                       "for i in $(seq 5); do curl -sS -m 5 -o /dev/null -w '%{http_code}\\n' http://brk/; done"], timeout: 60)
        XCTAssertEqual(r.stdout, "200\n200\n200\n200\n200\n", r.output)
        XCTAssertEqual(try breaker(), "closed")
    }
}
