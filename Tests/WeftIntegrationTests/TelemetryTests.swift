import Foundation
import WeftCore
import XCTest

/// The agent's metrics and admin endpoints with real traffic: Istio's standard series with
/// the right labels and counts, an exposition promtool accepts, a real Prometheus scrape,
/// and the admin API (/ready, /clusters, /config_dump, /certs, /stats, /logging).
final class TelemetryTests: XCTestCase {
    var mesh: MeshHarness!
    var web = "", client = ""

    override func setUpWithError() throws {
        mesh = try MeshHarness.start()
        try ResilienceTests.app.write(toFile: mesh.dir + "/app.py", atomically: true, encoding: .utf8)
        web = mesh.name("web")
        client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", web, "--service", "web", "--label", "version=v1", "--port", "80:8000/http", "--port", "9000/tcp",
                                "--", "/usr/bin/python3", mesh.dir + "/app.py", "8000"])
        try mesh.waitForListener(netns: web, port: 8000)
        // A TCP echo server beside it on 9000 (declared /tcp: never HTTP).
        _ = try mesh.startProcess(["ip", "netns", "exec", web, "/usr/bin/python3", "-c", """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9000)); s.listen()
            while True:
                c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
            """])
        try mesh.waitForListener(netns: web, port: 9000)
    }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func get(_ port: Int, _ path: String, method: String = "GET") -> (Int, String) {
        let r = mesh.run(["curl", "-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"], timeout: 20)
        var lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let code = Int(lines.popLast() ?? "") ?? 0
        return (code, lines.joined(separator: "\n").trimmingCharacters(in: .newlines))
    }

    /// The value of the one sample of `metric` whose labels include all of `labels`.
    static func sample(_ text: String, _ metric: String, _ labels: [String: String]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(metric + "{") {
            guard let close = line.lastIndex(of: "}") else { continue }
            let body = line[line.index(line.startIndex, offsetBy: metric.count + 1)..<close]
            if labels.allSatisfy({ body.contains("\($0.key)=\"\($0.value)\"") }) {
                return Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces))
            }
        }
        return nil
    }

    func testIstioStandardMetricsAfterTraffic() throws {
        let traffic = mesh.weft(["run", "--name", client, "--service", "client", "--label", "app=shop", "--", "sh", "-c", """
            for i in 1 2 3 4 5; do curl -s -o /dev/null http://web/ok; done
            curl -s -o /dev/null http://web/dead
            python3 -c 'import socket; c = socket.create_connection(("web", 9000), 5); c.sendall(b"hello\\n"); print(c.recv(100))'
            """], timeout: 60)
        XCTAssertEqual(traffic.status, 0, traffic.output)
        let (status, text) = get(mesh.metricsPort, "/metrics")
        XCTAssertEqual(status, 200)
        let common = ["reporter": "source", "source_workload": client, "source_workload_namespace": "default", "source_app": "shop",
                      "destination_workload": web, "destination_service": "web.default.svc.cluster.local", "destination_service_name": "web",
                      "destination_version": "v1", "destination_principal": "spiffe://weft.local/ns/default/sa/web",
                      "source_principal": "spiffe://weft.local/ns/default/sa/client",
                      "connection_security_policy": "mutual_tls", "request_protocol": "http"]
        XCTAssertEqual(Self.sample(text, "istio_requests_total", common.merging(["response_code": "200"]) { a, _ in a }), 5,
                       String(text.prefix(4000)))
        XCTAssertEqual(Self.sample(text, "istio_requests_total", common.merging(["response_code": "503"]) { a, _ in a }), 1)
        XCTAssertEqual(Self.sample(text, "istio_request_duration_milliseconds_count", common.merging(["response_code": "200"]) { a, _ in a }), 5)
        XCTAssertNotNil(Self.sample(text, "istio_response_bytes_bucket", common.merging(["response_code": "200", "le": "100.0"]) { a, _ in a }))
        // The TCP port: counted by both proxies.
        XCTAssertTrue(traffic.stdout.contains("hello"), traffic.output)
        do {
            XCTAssertEqual(Self.sample(text, "istio_tcp_connections_opened_total", ["reporter": "source", "destination_workload": web,
                                                                                       "request_protocol": "tcp"]), 1,
                           text.split(separator: "\n").filter { $0.contains("istio_tcp") }.joined(separator: "\n") + traffic.output)
            XCTAssertEqual(Self.sample(text, "istio_tcp_received_bytes_total", ["reporter": "source", "destination_workload": web,
                                                                                   "request_protocol": "tcp"]), 6, "\"hello\\n\" from the client")
            XCTAssertEqual(Self.sample(text, "istio_tcp_sent_bytes_total", ["reporter": "source", "destination_workload": web,
                                                                               "request_protocol": "tcp"]), 6, "and back")
            XCTAssertEqual(Self.sample(text, "istio_tcp_connections_closed_total", ["reporter": "source", "destination_workload": web]), 1)
            // The destination's proxy counts what arrived through the tunnel (the pooled
            // HTTP connection and the TCP one), with the caller's verified identity.
            XCTAssertEqual(Self.sample(text, "istio_tcp_connections_opened_total", ["reporter": "destination", "destination_workload": web,
                                                                                       "source_workload": client,
                                                                                       "source_principal": "spiffe://weft.local/ns/default/sa/client",
                                                                                       "connection_security_policy": "mutual_tls"]), 2)
        }
        XCTAssertNotNil(Self.sample(text, "weft_config_version", [:]) ?? (text.contains("\nweft_config_version ") ? 0 : nil), "weft's own gauges")
        XCTAssertTrue(text.contains("weft_certificate_expiry_timestamp_seconds{"), "certificate expiry")
        XCTAssertTrue(text.contains("weft_endpoints{destination_service=\"web.default.svc.cluster.local\"} 1"), String(text.suffix(3000)))

        // promtool: a valid exposition, no lint complaints.
        let file = mesh.dir + "/metrics.txt"
        try (text + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else {
            throw XCTSkip("SKIPPED: promtool is not installed; run scripts/setup-deps")
        }
        // Its one complaint is about a name Istio fixed long ago (dashboards and alerts use it):
        // the duration histogram is in milliseconds, not the base unit.
        let check = mesh.run(["sh", "-c", "promtool check metrics < \(file)"])
        let complaints = check.output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && $0 != #"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""# }
        XCTAssertEqual(complaints, [], check.output)
        XCTAssertTrue([0, 3].contains(check.status), "3 is promtool's lint status; parse errors are 1: \(check.output)")
    }

    /// A real Prometheus scrapes the agent and answers a query with Istio's labels.
    func testARealPrometheusScrapesTheAgent() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus") else {
            throw XCTSkip("SKIPPED: prometheus is not installed; run scripts/setup-deps")
        }
        let traffic = mesh.weft(["run", "--name", client, "--service", "client", "--", "sh", "-c",
                                 "for i in 1 2 3; do curl -s -o /dev/null http://web/ok; done"], timeout: 60)
        XCTAssertEqual(traffic.status, 0, traffic.output)
        let port = MeshHarness.freePort()
        try """
            global: {scrape_interval: 1s}
            scrape_configs:
            - job_name: weft
              static_configs: [{targets: ["127.0.0.1:\(mesh.metricsPort)"]}]
            """.write(toFile: mesh.dir + "/prometheus.yml", atomically: true, encoding: .utf8)
        _ = try mesh.startProcess(["/usr/bin/prometheus", "--config.file=\(mesh.dir)/prometheus.yml", "--storage.tsdb.path=\(mesh.dir)/tsdb",
                                   "--web.listen-address=127.0.0.1:\(port)"])
        let query = "istio_requests_total%7Breporter%3D%22source%22%2Cdestination_workload%3D%22\(web)%22%7D"
        var answer = ""
        try mesh.waitUntil("Prometheus has scraped the agent", timeout: 30) {
            answer = self.get(port, "/api/v1/query?query=\(query)").1
            return answer.contains("\"response_code\":\"200\"")
        }
        XCTAssertTrue(answer.contains("\"source_workload\":\"\(client)\""), answer)
        XCTAssertTrue(answer.contains("\"destination_service\":\"web.default.svc.cluster.local\""), answer)
        XCTAssertTrue(answer.contains("\"3\"]"), "three requests: \(answer)")
        let targets = get(port, "/api/v1/targets").1
        XCTAssertTrue(targets.contains("\"health\":\"up\""), targets)
    }

    func testTheAdminAPI() throws {
        let admin = mesh.adminPort
        XCTAssertEqual(get(admin, "/ready").1, "LIVE")
        let clusters = get(admin, "/clusters").1
        XCTAssertTrue(clusters.contains("web.default.svc.cluster.local::circuit_breaker::none"), clusters)
        XCTAssertTrue(clusters.contains("::workload::\(web)") && clusters.contains("::health_flags::healthy"), clusters)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(get(admin, "/clusters?format=json").1.utf8)) as? [[String: Any]])
        let webCluster = try XCTUnwrap(json.first { $0["service"] as? String == "web.default.svc.cluster.local" })
        XCTAssertEqual((webCluster["endpoints"] as? [[String: Any]])?.first?["activeRequests"] as? Int, 0)

        let dump = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(get(admin, "/config_dump").1.utf8)) as? [String: Any])
        XCTAssertNotNil(dump["configVersion"])
        XCTAssertEqual((dump["workloads"] as? [[String: Any]])?.compactMap { $0["name"] as? String }.contains(web), true)
        let certs = get(admin, "/certs").1
        XCTAssertTrue(certs.contains("spiffe:\\/\\/weft.local\\/ns\\/default\\/sa\\/web") || certs.contains("spiffe://weft.local/ns/default/sa/web"), certs)
        XCTAssertFalse(certs.contains("PRIVATE KEY"), "no secrets")
        XCTAssertTrue(get(admin, "/stats").1.contains("workload.\(web).connectionsInbound: "))

        XCTAssertEqual(get(admin, "/logging").1, "level: debug")
        XCTAssertEqual(get(admin, "/logging?level=loud", method: "POST").0, 400)
        XCTAssertEqual(get(admin, "/logging?level=warning", method: "POST").1, "level: warning")
        XCTAssertEqual(get(admin, "/logging").1, "level: warning")
        XCTAssertEqual(get(admin, "/nothing").0, 404)
        XCTAssertEqual(get(mesh.metricsPort, "/config_dump").0, 404, "the metrics port serves metrics only")
    }

    /// `weft proxy-config WORKLOAD …` against the live agent.
    func testProxyConfig() throws {
        let file = mesh.dir + "/vs.yaml"
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
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", file]).status, 0)
        func json(_ kind: String) throws -> [[String: Any]] {
            let r = mesh.weft(["proxy-config", web, kind, "-o", "json"])
            XCTAssertEqual(r.status, 0, r.output)
            return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], r.output)
        }
        let listeners = try json("listeners")
        XCTAssertEqual(Set(listeners.compactMap { $0["kind"] as? String }), ["outbound", "inbound", "tunnel", "dns", "app"])
        XCTAssertTrue(listeners.contains { $0["port"] as? Int == 8000 && ($0["detail"] as? String)?.contains("http") == true })
        let routes = try json("routes")
        XCTAssertEqual(routes.first?["name"] as? String, "slow")
        XCTAssertEqual(routes.first?["match"] as? String, "uri /slow*")
        XCTAssertEqual(routes.first?["timeout"] as? String, "300ms")
        let clusters = try json("clusters")
        XCTAssertEqual(clusters.first { $0["service"] as? String == "web.default.svc.cluster.local" }?["loadBalancer"] as? String, "ROUND_ROBIN")
        let endpoints = try json("endpoints")
        XCTAssertEqual(endpoints.first { $0["workload"] as? String == web }?["status"] as? String, "HEALTHY")
        XCTAssertEqual(endpoints.first { $0["workload"] as? String == web }?["labels"] as? String, "version=v1")
        let secrets = try json("secrets")
        XCTAssertEqual(secrets.first?["identity"] as? String, "spiffe://weft.local/ns/default/sa/web")
        let table = mesh.weft(["proxy-config", web, "clusters"])
        XCTAssertTrue(table.stdout.hasPrefix("SERVICE"), table.output)
        let unknown = mesh.weft(["proxy-config", "nobody", "routes"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.stderr.contains("no workload named nobody"), unknown.stderr)
        let badKind = mesh.weft(["proxy-config", web, "widgets"])
        XCTAssertNotEqual(badKind.status, 0)
        XCTAssertTrue(badKind.stderr.contains("widgets"), badKind.stderr)
    }

    /// `weft top` in a real terminal (tmux) shows the live rate of a caller → service pair.
    func testWeftTopShowsLiveRatesInATerminal() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux") else {
            throw XCTSkip("SKIPPED: tmux is not installed; run scripts/setup-deps")
        }
        // A tmux server of its own (-L), started with none of our descriptors: the server
        // outlives the command, and any descriptor it inherited (Foundation watches one to
        // see its child exit) would keep the start from ever finishing.
        let session = "weft-top", socketName = "weft-test-\(mesh.id)"
        let started = mesh.run(["bash", "-c", "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; "
                                + "exec tmux -L \(socketName) new-session -d -s \(session) -x 160 -y 20 "
                                + "'\(MeshHarness.weftBinary) top --metrics 127.0.0.1:\(mesh.metricsPort) --interval 1' </dev/null >/dev/null 2>&1"],
                               timeout: 20)
        XCTAssertEqual(started.status, 0, started.output)
        defer { _ = mesh.run(["sh", "-c", "tmux -L \(socketName) kill-server </dev/null >/dev/null 2>&1"], timeout: 20) }
        let traffic = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sh", "-c",
                                          "for i in $(seq 60); do curl -s -o /dev/null http://web/ok; sleep 0.05; done"])
        var screen = ""
        do {
            try mesh.waitUntil("weft top shows client → web", timeout: 20) {
            screen = self.mesh.run(["tmux", "-L", socketName, "capture-pane", "-p", "-t", session], timeout: 10).stdout
                return screen.contains("\(self.client).default") && screen.contains("web.default.svc.cluster.local")
            }
        } catch {
            throw HarnessError("\(error)\n\(screen)")
        }
        XCTAssertTrue(screen.contains("SOURCE") && screen.contains("REQ/S") && screen.contains("P99 MS"), screen)
        let row = try XCTUnwrap(screen.split(separator: "\n").first { $0.contains("\(client).default") }, screen)
        let rate = Double(row.split(separator: " ", omittingEmptySubsequences: true)[2]) ?? 0
        XCTAssertGreaterThan(rate, 1, "a live rate: \(row)")
        XCTAssertTrue(row.contains("0.0%"), "no errors: \(row)")
        _ = mesh.wait(traffic, timeout: 30)
        // A bad endpoint is an error naming it.
        let bad = mesh.weft(["top", "--metrics", "127.0.0.1:1", "--iterations", "1"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("nothing answers at 127.0.0.1:1"), bad.stderr)
    }
}
