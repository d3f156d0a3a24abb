import Foundation
import WeftCore
import XCTest

/// DestinationRule load balancing through real namespaces.
final class LoadBalancingTests: XCTestCase {
    var mesh: MeshHarness!

    static let app = #"""
    import sys, time, http.server
    name, delay = sys.argv[2], float(sys.argv[3])
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def do_GET(self):
            time.sleep(delay)
            text = (name + "\n").encode()
            self.send_response(200); self.send_header("content-length", str(len(text))); self.end_headers(); self.wfile.write(text)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// `threads` keep-alive clients, `each` requests apiece; prints "replica count" lines, and
    /// for each x-user value in `users` the replica it reached ("user=replica").
    static let client = #"""
    import sys, json, http.client, collections, threading
    threads, each, users = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    seen = collections.Counter(); lock = threading.Lock()
    def run():
        c = http.client.HTTPConnection("web", 80, timeout=20)
        for _ in range(each):
            c.request("GET", "/"); r = c.getresponse(); body = r.read().decode().strip()
            with lock: seen[body] += 1
    ts = [threading.Thread(target=run) for _ in range(threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
    for k, v in sorted(seen.items()): print(k, v)
    c = http.client.HTTPConnection("web", 80, timeout=20)
    for u in users:
        c.request("GET", "/", headers={"x-user": u}); print("%s=%s" % (u, c.getresponse().read().decode().strip()))
    """#

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        try Self.app.write(toFile: mesh.dir + "/app.py", atomically: true, encoding: .utf8)
        try Self.client.write(toFile: mesh.dir + "/client.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/app.py", 0o644)
        chmod(mesh.dir + "/client.py", 0o644)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    @discardableResult
    func replica(_ name: String, delay: Double = 0) throws -> MeshHarness.Background {
        let bg = try mesh.startWeft(["run", "--name", mesh.name(name), "--service", "web", "--port", "80:3000/http", "--",
                                     "/usr/bin/python3", mesh.dir + "/app.py", "3000", name, "\(delay)"])
        try mesh.waitForListener(netns: mesh.name(name), port: 3000)
        return bg
    }

    func run(threads: Int, each: Int, users: [String] = []) -> (counts: [String: Int], owners: [String: String]) {
        let json = String(decoding: try! JSONSerialization.data(withJSONObject: users), as: UTF8.self)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                           "/usr/bin/python3", mesh.dir + "/client.py", "\(threads)", "\(each)", json], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        var counts: [String: Int] = [:], owners: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            if let eq = line.firstIndex(of: "=") {
                owners[String(line[..<eq])] = String(line[line.index(after: eq)...])
            } else {
                let p = line.split(separator: " ")
                if p.count == 2, let n = Int(p[1]) { counts[String(p[0])] = n }
            }
        }
        return (counts, owners)
    }

    func apply(_ yaml: String) {
        let file = mesh.dir + "/dr-\(UUID().uuidString.prefix(6)).yaml"
        try? yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let r = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(r.status, 0, r.output)
    }

    func testLeastRequestByDefaultSteersAwayFromASlowReplica() throws {
        try replica("fast")
        try replica("slow", delay: 0.2)
        let (counts, _) = run(threads: 8, each: 15)
        let fast = counts["fast"] ?? 0, slow = counts["slow"] ?? 0
        XCTAssertEqual(fast + slow, 120, "\(counts)")
        XCTAssertGreaterThan(fast, 84, "LEAST_REQUEST should send the fast replica well over 70%: \(counts)")
    }

    func testConsistentHashKeepsKeysWhileOtherReplicasComeAndGo() throws {
        try replica("a")
        let b = try replica("b")
        try replica("c")
        apply("""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}
            """)
        let users = (0..<12).map { "user-\($0)" }
        let first = run(threads: 0, each: 0, users: users).owners
        XCTAssertEqual(first.count, 12)
        XCTAssertEqual(run(threads: 0, each: 0, users: users).owners, first, "the same key always reaches the same replica")
        XCTAssertGreaterThan(Set(first.values).count, 1, "keys spread over replicas: \(first)")

        kill(b.process.processIdentifier, SIGTERM)
        XCTAssertNotNil(mesh.wait(b))
        let after = run(threads: 0, each: 0, users: users).owners
        for user in users where first[user] != "b" {
            XCTAssertEqual(after[user], first[user], "\(user) moved although its replica stayed")
        }
        XCTAssertFalse(after.values.contains("b"))
    }
}
