import Foundation
import WeftCore
import XCTest

/// Routing with Istio's VirtualService and DestinationRule through real namespaces:
/// subsets by labels, header and path rules, rewrites, weighted splits, first match wins,
/// all-or-nothing apply, and config that survives an agent restart.
final class RoutingTests: XCTestCase {
    var mesh: MeshHarness!

    static let app = #"""
    import sys, http.server
    name = sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes
        def do_GET(self):
            text = ("%s %s %s\n" % (name, self.path, self.headers.get("x-routed"))).encode()
            self.send_response(200); self.send_header("content-length", str(len(text))); self.end_headers(); self.wfile.write(text)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// A keep-alive client: GETs `path` `count` times with `headers`, prints "replica count".
    static let client = #"""
    import sys, json, http.client, collections
    count, path, headers = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    seen = collections.Counter()
    conn = http.client.HTTPConnection("web", 80, timeout=10)
    for _ in range(count):
        conn.request("GET", path, headers=headers); r = conn.getresponse(); body = r.read().decode()
        seen[body.split()[0] if r.status == 200 else "status-%d" % r.status] += 1
        if r.status != 200: last = body
    for k, v in sorted(seen.items()): print(k, v)
    if any(k.startswith("status") for k in seen): print("body", last.strip())
    """#

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        try Self.app.write(toFile: mesh.dir + "/app.py", atomically: true, encoding: .utf8)
        try Self.client.write(toFile: mesh.dir + "/client.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/app.py", 0o644)
        chmod(mesh.dir + "/client.py", 0o644)
        for version in ["v1", "v2"] {
            _ = try mesh.startWeft(["run", "--name", mesh.name(version), "--service", "web", "--port", "80:3000/http",
                                    "--label", "version=\(version)", "--", "/usr/bin/python3", mesh.dir + "/app.py", "3000", version])
            try mesh.waitForListener(netns: mesh.name(version), port: 3000)
        }
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func apply(_ yaml: String) -> MeshHarness.Result {
        let file = mesh.dir + "/cfg-\(UUID().uuidString.prefix(6)).yaml"
        try? yaml.write(toFile: file, atomically: true, encoding: .utf8)
        return mesh.weft(["apply", "-f", file])
    }

    /// Counts of replicas answering `count` requests.
    func traffic(_ count: Int, path: String = "/", headers: [String: String] = [:]) -> [String: Int] {
        let json = String(decoding: try! JSONSerialization.data(withJSONObject: headers), as: UTF8.self)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--",
                           "/usr/bin/python3", mesh.dir + "/client.py", "\(count)", path, json], timeout: 120)
        XCTAssertEqual(r.status, 0, r.output)
        var out: [String: Int] = [:]
        for line in r.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let n = Int(parts[1]) { out[String(parts[0])] = n }
        }
        return out
    }

    let rules = """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: web}
        spec:
          host: web
          subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: web}
        spec:
          hosts: [web]
          http:
          - name: beta
            match: [{headers: {x-user: {exact: beta}}}]
            route: [{destination: {host: web, subset: v2}}]
          - name: legacy
            match: [{uri: {prefix: /legacy/}}]
            rewrite: {uri: /}
            headers: {request: {set: {x-routed: legacy}}}
            route: [{destination: {host: web, subset: v1}}]
          - name: split
            route:
            - {destination: {host: web, subset: v1}, weight: 90}
            - {destination: {host: web, subset: v2}, weight: 10}
        """

    func testWeightedSplitHeaderAndPathRules() throws {
        let applied = apply(rules)
        XCTAssertEqual(applied.status, 0, applied.output)
        XCTAssertTrue(applied.stdout.contains("VirtualService/default/web created"), applied.stdout)

        // 90/10 measured over 2,000 requests: within ±3 points.
        let split = traffic(2000)
        let v1 = Double(split["v1"] ?? 0) / 2000 * 100
        XCTAssertEqual(split.values.reduce(0, +), 2000, "\(split)")
        XCTAssertTrue((87...93).contains(v1), "v1 got \(v1)% of 2,000 requests: \(split)")

        XCTAssertEqual(traffic(20, headers: ["x-user": "beta"]), ["v2": 20])
        let legacy = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "5", "http://web/legacy/a/b?q=1"])
        XCTAssertEqual(legacy.stdout, "v1 /a/b?q=1 legacy\n", "prefix rewritten, query kept, header set: \(legacy.output)")
    }

    func testFaultInjectionAndRouteTimeouts() throws {
        let applied = apply("""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - name: teapot
                match: [{uri: {prefix: /abort}}]
                fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
                route: [{destination: {host: web}}]
              - name: slow-but-in-time
                match: [{uri: {prefix: /delay-ok}}]
                fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
                timeout: 5s
                route: [{destination: {host: web}}]
              - name: too-slow
                match: [{uri: {prefix: /delay}}]
                fault: {delay: {fixedDelay: 3s, percentage: {value: 100}}}
                timeout: 300ms
                route: [{destination: {host: web}}]
              - route: [{destination: {host: web}}]
            """)
        XCTAssertEqual(applied.status, 0, applied.output)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "sh", "-c", """
            curl -sS -m 10 -D - -o /dev/null http://web/abort | tr -d '\\r' | grep -iE '^HTTP|x-weft-response-flags'
            curl -sS -m 10 -o /dev/null -w 'delay-ok %{http_code} %{time_total}\\n' http://web/delay-ok
            curl -sS -m 10 -D - -o /dev/null -w 'delay %{http_code} %{time_total}\\n' http://web/delay | tr -d '\\r' | grep -iE '^delay|x-weft-response-flags'
            curl -sS -m 10 -o /dev/null -w 'plain %{http_code}\\n' http://web/
            """], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("HTTP/1.1 418"), r.stdout)
        XCTAssertTrue(r.stdout.lowercased().contains("x-weft-response-flags: fi"), r.stdout)
        XCTAssertTrue(r.stdout.contains("delay-ok 200 0.2") || r.stdout.contains("delay-ok 200 0.3"), "delayed by 200 ms, then served: \(r.stdout)")
        XCTAssertTrue(r.stdout.lowercased().contains("x-weft-response-flags: ut"), r.stdout)
        XCTAssertTrue(r.stdout.contains("delay 504 0.3") || r.stdout.contains("delay 504 0.4"), "cut at the 300 ms timeout, not after the 3 s delay: \(r.stdout)")
        XCTAssertTrue(r.stdout.contains("plain 200"), r.stdout)
    }

    func testWatchedConfigDirectoryAppliesChangesAndKeepsTheLastGood() throws {
        let dir = mesh.configDir
        let allToV2 = rules.replacingOccurrences(of: "weight: 90}", with: "weight: 0}").replacingOccurrences(of: "weight: 10}", with: "weight: 100}")
        try allToV2.write(toFile: dir + "/web.yaml", atomically: true, encoding: .utf8)
        try mesh.waitUntil("the directory's config in force", timeout: 20) {
            self.mesh.weft(["get", "config"]).stdout.contains("VirtualService")
        }
        XCTAssertEqual(traffic(10), ["v2": 10])
        XCTAssertTrue(mesh.agentLog.contains("config directory \(dir) applied"), mesh.agentLog.suffix(2000).description)

        // A broken file: the whole directory is refused with file and line; v2 keeps serving.
        try "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [web]\n  htp: []\n"
            .write(toFile: dir + "/bad.yml", atomically: true, encoding: .utf8)
        try mesh.waitUntil("the broken file refused", timeout: 20) { self.mesh.agentLog.contains("\(dir)/bad.yml:6") }
        XCTAssertEqual(traffic(10), ["v2": 10])

        // Fixed, then removed: what the directory defined goes away with it.
        try FileManager.default.removeItem(atPath: dir + "/bad.yml")
        try FileManager.default.removeItem(atPath: dir + "/web.yaml")
        try mesh.waitUntil("the directory's config removed", timeout: 20) {
            !self.mesh.weft(["get", "config"]).stdout.contains("VirtualService")
        }
        XCTAssertEqual(Set(traffic(20).keys), ["v1", "v2"], "back to the default balancing over both")
    }

    func testReorderingRulesChangesTheDestinationAndBadConfigKeepsTheLastGood() throws {
        XCTAssertEqual(apply(rules).status, 0)
        // Matches both "beta" (→ v2) and "legacy" (→ v1): the first rule wins.
        XCTAssertEqual(traffic(5, path: "/legacy/x", headers: ["x-user": "beta"]), ["v2": 5])
        let reordered = rules.replacingOccurrences(of: """
              - name: beta
                match: [{headers: {x-user: {exact: beta}}}]
                route: [{destination: {host: web, subset: v2}}]
              - name: legacy
                match: [{uri: {prefix: /legacy/}}]
                rewrite: {uri: /}
                headers: {request: {set: {x-routed: legacy}}}
                route: [{destination: {host: web, subset: v1}}]
            """, with: """
              - name: legacy
                match: [{uri: {prefix: /legacy/}}]
                rewrite: {uri: /}
                headers: {request: {set: {x-routed: legacy}}}
                route: [{destination: {host: web, subset: v1}}]
              - name: beta
                match: [{headers: {x-user: {exact: beta}}}]
                route: [{destination: {host: web, subset: v2}}]
            """)
        XCTAssertNotEqual(reordered, rules)
        XCTAssertEqual(apply(reordered).status, 0)
        XCTAssertEqual(traffic(5, path: "/legacy/x", headers: ["x-user": "beta"]), ["v1": 5])

        // An unknown subset: rejected with file:line, nothing changes.
        let bad = apply(reordered.replacingOccurrences(of: "subset: v2}}]", with: "subset: v3}}]"))
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stdout.contains("unknown subset 'v3'") && bad.stdout.contains(".yaml:"), bad.stdout)
        XCTAssertTrue(bad.stdout.contains("nothing was applied"), bad.stdout)
        XCTAssertEqual(traffic(5, path: "/legacy/x", headers: ["x-user": "beta"]), ["v1": 5], "the last good config keeps serving")

        // Survives an agent restart.
        try mesh.restartAgent(signal: SIGTERM)
        XCTAssertTrue(mesh.weft(["get", "config"]).stdout.contains("VirtualService"))
        XCTAssertEqual(traffic(5, path: "/legacy/x", headers: ["x-user": "beta"]), ["v1": 5])

        // Deleted: default routing over both versions again.
        let file = mesh.dir + "/del.yaml"
        try reordered.write(toFile: file, atomically: true, encoding: .utf8)
        let deleted = mesh.weft(["delete", "-f", file])
        XCTAssertEqual(deleted.status, 0, deleted.output)
        XCTAssertEqual(Set(traffic(10).keys), ["v1", "v2"])
    }

    func testNoMatchingRouteIsA404FromTheMesh() throws {
        XCTAssertEqual(apply("""
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web.default.svc.cluster.local]
              http: [{match: [{uri: {prefix: /api}}], route: [{destination: {host: web}}]}]
            """).status, 0)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "curl", "-sS", "-m", "5", "-D", "-", "http://web/other"])
        XCTAssertTrue(r.stdout.contains("HTTP/1.1 404"), r.output)
        XCTAssertTrue(r.stdout.lowercased().contains("x-weft-response-flags: nr"), r.stdout)
        XCTAssertTrue(r.stdout.contains("no route of VirtualService default/web matches GET /other"), r.stdout)
    }
}
