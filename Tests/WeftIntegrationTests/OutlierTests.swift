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
        let services = try JSONDecoder().decode([ServiceStatus].self, from: Data(mesh.weft(["get", "services", "-o", "json"]).stdout.utf8))
        XCTAssertEqual(services.first { $0.key.name.rawValue == "web" }?.ejected, [mesh.name("c")])
        XCTAssertTrue(mesh.weft(["get", "services"]).stdout.contains(mesh.name("c")), "the table shows the ejection")
    }
}
