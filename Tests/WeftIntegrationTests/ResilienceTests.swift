import Foundation
import WeftCore
import XCTest

/// Retries through real namespaces: a flaky upstream is hidden from GETs, a POST is never
/// repeated after reaching the upstream, and the retry budget bounds what a dead upstream
/// receives.
final class ResilienceTests: XCTestCase {
    var mesh: MeshHarness!

    /// /flaky fails every other request (503); /dead always fails; /count/PREFIX says how
    /// many requests whose path starts with PREFIX arrived.
    static let app = #"""
    import sys, http.server, threading, collections
    seen = collections.Counter(); lock = threading.Lock()
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes
        def answer(self):
            length = int(self.headers.get("content-length", 0))
            if length: self.rfile.read(length)
            if self.path == "/slow":
                import time; time.sleep(1); return self.reply(200, "slow")
            if self.path == "/deadline":
                return self.reply(200, str(self.headers.get("x-weft-expected-timeout-ms")))
            if self.path.startswith("/count/"):
                with lock: n = sum(v for k, v in seen.items() if k.startswith(self.path[6:]))
                return self.reply(200, str(n))
            with lock:
                seen[self.path] += 1; n = seen[self.path]
            if self.path.startswith("/dead") or (self.path.startswith("/flaky") and n % 2 == 1):
                return self.reply(503, "failing")
            self.reply(200, "ok")
        def reply(self, code, text):
            body = text.encode()
            self.send_response(code); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        do_GET = answer; do_POST = answer
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// METHOD PATH COUNT: prints "status count" lines and any retries-exhausted header.
    static let client = #"""
    import sys, http.client, collections
    method, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = http.client.HTTPConnection("web", 80, timeout=10)
    seen = collections.Counter(); exhausted = 0
    for i in range(count):
        conn.request(method, path, body=b"x" if method == "POST" else None)
        r = conn.getresponse(); r.read()
        seen[r.status] += 1
        if r.getheader("x-weft-retries-exhausted"): exhausted += 1
        if r.getheader("connection") == "close": conn.close(); conn = http.client.HTTPConnection("web", 80, timeout=10)
    for k, v in sorted(seen.items()): print(k, v)
    print("exhausted", exhausted)
    """#

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        for (file, text) in [("app.py", Self.app), ("client.py", Self.client)] {
            try text.write(toFile: "\(mesh.dir)/\(file)", atomically: true, encoding: .utf8)
            chmod("\(mesh.dir)/\(file)", 0o644)
        }
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "80:3000/http",
                                "--", "/usr/bin/python3", mesh.dir + "/app.py", "3000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 3000)
        let file = mesh.dir + "/retries.yaml"
        try """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - route: [{destination: {host: web}}]
                retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(applied.status, 0, applied.output)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func call(_ method: String, _ path: String, _ count: Int) -> [String: Int] {
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                           "/usr/bin/python3", mesh.dir + "/client.py", method, path, "\(count)"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        var out: [String: Int] = [:]
        for line in r.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let n = Int(parts[1]) { out[String(parts[0])] = n }
        }
        return out
    }

    func arrived(_ prefix: String) -> Int {
        let r = mesh.weft(["run", "--name", mesh.name("cnt"), "--service", "client", "--", "curl", "-sS", "-m", "5", "http://web/count\(prefix)"])
        return Int(r.stdout) ?? -1
    }

    func testRetriesHideAFlakyUpstreamButNeverRepeatAPost() throws {
        XCTAssertEqual(call("GET", "/flaky/get", 20), ["200": 20, "exhausted": 0], "every other attempt fails; each GET is retried once")
        XCTAssertEqual(arrived("/flaky/get"), 40)
        // A POST reached the upstream: its 503 is the answer, not a reason to charge twice.
        let posts = call("POST", "/flaky/post", 10)
        XCTAssertEqual(posts["503"], 5, "\(posts)")
        XCTAssertEqual(arrived("/flaky/post"), 10)
    }

    func testTheRetryBudgetBoundsWhatADeadUpstreamReceives() throws {
        // 3 attempts each would send 800 requests for 200; the budget (20% + 3/s over 10 s)
        // allows at most 200 × 1.2 + 30.
        let answers = call("GET", "/dead", 200)
        XCTAssertEqual(answers["503"], 200, "\(answers)")
        XCTAssertGreaterThan(answers["exhausted"] ?? 0, 190, "answers say the retries are spent: \(answers)")
        let received = arrived("/dead")
        XCTAssertGreaterThanOrEqual(received, 200)
        XCTAssertLessThanOrEqual(received, 270, "budget: at most 20% of 200 plus a floor of 30 retries")
    }

    /// An unmodified app that calls `web` for every request and answers with its status.
    static let middle = #"""
    import sys, http.server, urllib.request, urllib.error
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            try:
                with urllib.request.urlopen("http://web" + self.path, timeout=30) as r: code, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                code, body = e.code, e.read()
            self.send_response(code); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 4000), H).serve_forever()
    """#

    func testAHopDoesNotRetryAnEndpointWhoseOwnRetriesAreSpent() throws {
        try Self.middle.write(toFile: mesh.dir + "/middle.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/middle.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("mid"), "--service", "mid", "--port", "80:4000/http",
                                "--", "/usr/bin/python3", mesh.dir + "/middle.py"])
        try mesh.waitForListener(netns: mesh.name("mid"), port: 4000)
        let file = mesh.dir + "/mid.yaml"
        try """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: mid}
            spec:
              hosts: [mid]
              http:
              - route: [{destination: {host: mid}}]
                retries: {attempts: 2, retryOn: 5xx}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        let cli = mesh.name("cli2")
        _ = try mesh.startWeft(["run", "--name", cli, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(cli) != nil }
        let r = mesh.run(["ip", "netns", "exec", cli, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                          "for i in $(seq 20); do curl -sS -m 20 -o /dev/null -w '%{http_code}\\n' http://mid/dead; done"], timeout: 120)
        XCTAssertEqual(r.stdout.split(separator: "\n").filter { $0 == "503" }.count, 20, r.output)
        let client = try XCTUnwrap(try mesh.workload(cli)).counters
        let middle = try XCTUnwrap(try mesh.workload(mesh.name("mid"))).counters
        XCTAssertGreaterThan(middle.httpRetries, 0, "the hop next to the failure retries: \(middle)")
        XCTAssertEqual(client.httpRetries, 0, "the hop above does not multiply them: \(client)")
        XCTAssertEqual(client.httpRetriesDenied, 20, "\(client)")
        XCTAssertLessThanOrEqual(arrived("/dead"), 20 * 3, "at most mid's own retries reach the dead upstream")
    }

    /// SECONDS DELAY: requests for SECONDS (DELAY between them); prints ok, limited,
    /// elapsed, and one retry-after value.
    static let paced = #"""
    import sys, time, http.client
    seconds, delay = float(sys.argv[1]), float(sys.argv[2])
    conn = http.client.HTTPConnection("web", 80, timeout=10)
    ok = limited = 0; retry_after = None
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        conn.request("GET", "/steady"); r = conn.getresponse(); r.read()
        if r.status == 429:
            limited += 1; retry_after = r.getheader("retry-after")
        elif r.status == 200:
            ok += 1
        if delay: time.sleep(delay)
    print("ok", ok); print("limited", limited); print("elapsed", time.monotonic() - start); print("retry-after", retry_after)
    """#

    func testRateLimitsPerClientAtTheConfiguredRate() throws {
        try Self.paced.write(toFile: mesh.dir + "/paced.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/paced.py", 0o644)
        let file = mesh.dir + "/ratelimit.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec:
              host: web
              limits:
              - {name: per-client, key: sourceIP, requestsPerUnit: 50, unit: second, burst: 10}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(applied.status, 0, applied.output)
        // A polite client (4/s) beside a greedy one (as fast as it can).
        let polite = try mesh.startWeft(["run", "--name", mesh.name("polite"), "--service", "client", "--",
                                         "/usr/bin/python3", mesh.dir + "/paced.py", "4", "0.25"])
        let greedy = mesh.weft(["run", "--name", mesh.name("greedy"), "--service", "client", "--",
                                "/usr/bin/python3", mesh.dir + "/paced.py", "3", "0"], timeout: 60)
        XCTAssertEqual(greedy.status, 0, greedy.output)
        func value(_ out: String, _ key: String) -> Double {
            Double(out.split(separator: "\n").first { $0.hasPrefix(key + " ") }?.split(separator: " ").last ?? "") ?? -1
        }
        let ok = value(greedy.stdout, "ok"), elapsed = value(greedy.stdout, "elapsed")
        let expected = 10 + 50 * elapsed
        XCTAssertGreaterThan(value(greedy.stdout, "limited"), 0, greedy.stdout)
        XCTAssertEqual(ok, expected, accuracy: expected * 0.05, "burst 10 + 50/s over \(elapsed) s: \(greedy.stdout)")
        XCTAssertTrue(greedy.stdout.contains("retry-after 1"), greedy.stdout)
        XCTAssertEqual(mesh.wait(polite, timeout: 30), 0)
        XCTAssertEqual(value(polite.stdout, "limited"), 0, "another client is not limited: \(polite.stdout)")
        XCTAssertGreaterThanOrEqual(value(polite.stdout, "ok"), 10, polite.stdout)
    }

    /// key: sourceIdentity — every replica of a caller (one SPIFFE ID, several addresses)
    /// draws from one bucket; another identity has its own.
    func testRateLimitsPerSourceIdentityAcrossReplicas() throws {
        let file = mesh.dir + "/ratelimit-id.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web-per-identity}
            spec:
              host: web
              limits:
              - {name: per-identity, key: sourceIdentity, requestsPerUnit: 2, unit: minute, burst: 2}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        func codes(_ name: String, account: String, _ n: Int) -> String {
            mesh.weft(["run", "--name", mesh.name(name), "--service", "batch", "--service-account", account, "--", "sh", "-c",
                       "for i in $(seq \(n)); do curl -s -o /dev/null -m 5 -w '%{http_code} ' http://web/; done"]).stdout
                .trimmingCharacters(in: .whitespaces)
        }
        XCTAssertEqual(codes("r1", account: "batch", 2), "200 200")
        XCTAssertEqual(codes("r2", account: "batch", 1), "429", "a second replica of the same identity shares the bucket")
        XCTAssertEqual(codes("r3", account: "report", 2), "200 200", "another identity has its own")
    }

    func testDeadlinesPropagate() throws {
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", """
            curl -sS -m 10 -o /dev/null -D - -w 'slow %{http_code} %{time_total}\\n' -H 'x-weft-expected-timeout-ms: 300' http://web/slow | tr -d '\\r' | grep -iE '^slow|flags'
            curl -sS -m 10 -H 'grpc-timeout: 2S' http://web/deadline; echo
            curl -sS -m 10 http://web/deadline; echo
            """], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("slow 504 0.3") || r.stdout.contains("slow 504 0.4"), "the caller's 300 ms, not the app's 1 s: \(r.stdout)")
        XCTAssertTrue(r.stdout.lowercased().contains("x-weft-response-flags: ut"), r.stdout)
        XCTAssertTrue(r.stdout.contains("\n2000\n"), "the next hop is told its remaining time: \(r.stdout)")
        XCTAssertTrue(r.stdout.hasSuffix("None\n"), "no timeout, no header: \(r.stdout)")
    }

    func testARetryBudgetResourceOptsInPostsAndCanForbidRetries() throws {
        let file = mesh.dir + "/budget.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: RetryBudget
            metadata: {name: web}
            spec: {host: web, retryNonIdempotent: true}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        XCTAssertEqual(call("POST", "/flaky/opt-in", 10), ["200": 10, "exhausted": 0], "POSTs retried once the service opts in")
        try """
            apiVersion: weft.dev/v1alpha1
            kind: RetryBudget
            metadata: {name: web}
            spec: {host: web, ratio: 0, minRetriesPerSecond: 0}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        XCTAssertEqual(call("GET", "/dead/none", 20)["503"], 20)
        XCTAssertEqual(arrived("/dead/none"), 20, "a zero budget allows no retry at all")
    }

    func testConnectionPoolMaxRetriesCapsRetriesInFlight() throws {
        let file = mesh.dir + "/maxretries.yaml"
        try """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {connectionPool: {http: {maxRetries: 0}}}}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        let answers = call("GET", "/flaky/capped", 10)
        XCTAssertEqual(answers["503"], 5, "no retry may be in flight, so every other request fails: \(answers)")
        XCTAssertEqual(answers["exhausted"], 5, "\(answers)")
    }
}
