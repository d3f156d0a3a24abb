import Foundation
import WeftCore
import XCTest

/// The access log through real namespaces: one JSON line per request or TCP connection,
/// each failure kind with its Envoy response flag.
final class AccessLogTests: XCTestCase {
    var mesh: MeshHarness!
    var log: String { mesh.dir + "/access.log" }

    override func setUpWithError() throws {
        let file = NSTemporaryDirectory() + "weft-access-\(UUID().uuidString.prefix(8)).log"
        mesh = try MeshHarness.start(agentArgs: ["--access-log", file])
        try? FileManager.default.moveItem(atPath: file, toPath: mesh.dir + "/access.log")
        try ResilienceTests.app.write(toFile: mesh.dir + "/app.py", atomically: true, encoding: .utf8)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func lines() throws -> [[String: Any]] {
        // The agent keeps writing to the file it opened (moved into the test directory).
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { line in
            guard let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw HarnessError("not a JSON object: \(line)")
            }
            return o
        }
    }

    func testEveryFailureKindIsLoggedWithItsFlag() throws {
        let web = mesh.name("web"), gone = mesh.name("gone"), client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", web, "--service", "web", "--port", "80:8000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/app.py", "8000"])
        try mesh.waitForListener(netns: web, port: 8000)
        // A service whose only endpoint listens on nothing: connect failures (UF).
        _ = try mesh.startWeft(["run", "--name", gone, "--service", "gone", "--port", "80:8999/http", "--", "sleep", "300"])
        let file = mesh.dir + "/policy.yaml"
        try """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - name: slow
                match: [{uri: {prefix: /slow}}]
                timeout: 300ms
                route: [{destination: {host: web}}]
              - name: rest
                match: [{uri: {prefix: /ok}}, {uri: {prefix: /limited}}, {uri: {prefix: /gone}}]
                route: [{destination: {host: web}}]
            ---
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec:
              host: web
              limits: [{key: service, requestsPerUnit: 1, unit: minute, burst: 1, match: [{uri: {prefix: /limited}}]}]
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        let r = mesh.weft(["run", "--name", client, "--service", "client", "--", "sh", "-c", """
            curl -s -o /dev/null -A probe/1 http://web/ok
            curl -s -o /dev/null http://web/nowhere
            curl -s -o /dev/null http://web/slow
            curl -s -o /dev/null http://web/limited; curl -s -o /dev/null http://web/limited
            curl -s -o /dev/null http://gone/
            curl -s -o /dev/null -m 0.1 http://web/slow
            curl -s -o /dev/null -A refused/1 -H 'Upgrade: websocket' -H 'Connection: Upgrade' http://web/refused
            python3 -c 'import socket; c = socket.create_connection(("\\(mesh.gateway)", 9), 2)' 2>/dev/null || true
            sleep 1.2
            """], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        var entries: [[String: Any]] = []
        do {
            try mesh.waitUntil("the access log has every request", timeout: 10) {
                entries = try self.lines()
                return entries.filter { $0["method"] != nil }.count >= 8
            }
        } catch {
            throw HarnessError("\(error): \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "no file")")
        }
        func find(_ path: String, _ flags: String) -> [String: Any]? {
            entries.first { $0["path"] as? String == path && $0["response_flags"] as? String == flags }
        }
        let ok = try XCTUnwrap(find("/ok", "-"), "\(entries)")
        XCTAssertEqual(ok["response_code"] as? Int, 200)
        XCTAssertEqual(ok["method"] as? String, "GET")
        XCTAssertEqual(ok["protocol"] as? String, "HTTP/1.1")
        XCTAssertEqual(ok["user_agent"] as? String, "probe/1")
        XCTAssertEqual(ok["source_workload"] as? String, client)
        XCTAssertEqual(ok["destination_workload"] as? String, web)
        XCTAssertEqual(ok["route_name"] as? String, "rest")
        XCTAssertEqual(ok["upstream_cluster"] as? String, "web.default.svc.cluster.local")
        XCTAssertEqual((ok["request_id"] as? String)?.count, 36, "the x-request-id the mesh added")
        XCTAssertNotNil(ok["start_time"] as? String)
        XCTAssertEqual(find("/nowhere", "NR")?["response_code"] as? Int, 404, "no route: \(entries)")
        XCTAssertEqual(find("/slow", "UT")?["response_code"] as? Int, 504, "route timeout")
        XCTAssertEqual(find("/limited", "RL")?["response_code"] as? Int, 429, "rate limited")
        XCTAssertEqual(find("/", "UF")?["response_code"] as? Int, 503, "connect failure")
        XCTAssertEqual(find("/slow", "DC")?["response_code"] as? Int, 0, "the client went away: \(entries.filter { $0["path"] as? String == "/slow" })")
        // Refused by the mesh before routing (an upgrade it does not proxy): logged as a
        // downstream protocol error, with what the request said about itself.
        let refused = try XCTUnwrap(find("/refused", "DPE"), "\(entries)")
        XCTAssertEqual(refused["response_code"] as? Int, 501)
        XCTAssertEqual(refused["user_agent"] as? String, "refused/1")
        XCTAssertEqual(refused["method"] as? String, "GET")
    }
}
