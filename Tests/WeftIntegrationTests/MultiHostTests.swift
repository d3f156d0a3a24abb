import Foundation
import WeftCore
import XCTest

/// Two hosts (network namespaces on an underlay bridge, each with its own agent and pod
/// block) joined to one control plane form one mesh: a client on host 2 calls a service on
/// host 1 by name, through the mTLS tunnel, with certificates from the control plane's CA;
/// killing the control plane during steady cross-host traffic fails no request.
final class MultiHostTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start(withControlPlane: true, hosts: true) }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func testAServiceOnOneHostIsCalledByNameFromAnother() throws {
        let h1 = try mesh.addHost(1), h2 = try mesh.addHost(2)
        let script = mesh.dir + "/app.py", load = mesh.dir + "/load.py"
        try ControlPlaneTests.app.write(toFile: script, atomically: true, encoding: .utf8)
        try ControlPlaneTests.load.write(toFile: load, atomically: true, encoding: .utf8)
        let web = mesh.name("web"), client = mesh.name("cli")
        let server = try mesh.startWeft(in: h1, ["run", "--name", web, "--service", "web", "--port", "8000/http", "--", "/usr/bin/python3", script, "8000"])
        do { try mesh.waitForListener(netns: web, port: 8000) } catch {
            throw HarnessError("\(error)\n--- weft run ---\n\(server.stderr)\n--- host 1 ---\n\(mesh.hostLog(1).suffix(3000))")
        }
        _ = try mesh.startWeft(in: h2, ["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try waitAttached(client, on: h2)

        // Host 2's agent learns host 1's workload from the control plane.
        func services(_ host: MeshHarness.Host) throws -> [ServiceStatus] {
            let r = mesh.weft(["get", "services", "-o", "json", "--agent-socket", host.socket])
            guard r.status == 0 else { throw HarnessError("get services on \(host.netns): \(r.output)") }
            return try JSONDecoder().decode([ServiceStatus].self, from: Data(r.stdout.utf8))
        }
        try mesh.waitUntil("host 2 knows web's endpoint on host 1", timeout: 30) {
            try services(h2).first { $0.key.name.rawValue == "web" }?.endpoints.contains { $0.workload == web } == true
        }
        let routes = mesh.run(["ip", "-n", h2.netns, "route"]).stdout
        XCTAssertTrue(routes.contains("\(h1.podCIDR) via \(h1.address)"), "host 2 routes host 1's pods via host 1: \(routes)")

        var reply = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "http://web:8000/"], timeout: 20)
        for _ in 0..<30 where reply.stdout != "ok\n" {
            usleep(200_000)
            reply = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "http://web:8000/"], timeout: 20)
        }
        XCTAssertEqual(reply.stdout, "ok\n", "cross-host call by name: \(reply.output)\n--- host 2 ---\n\(mesh.hostLog(2).suffix(3000))")

        // It went through the tunnel: the server side counted tunnel connections from a peer
        // whose certificate the control plane issued.
        let w = mesh.weft(["get", "workloads", "-o", "json", "--agent-socket", h1.socket])
        let statuses = try JSONDecoder().decode([WorkloadStatus].self, from: Data(w.stdout.utf8))
        let serverStatus = try XCTUnwrap(statuses.first { $0.spec.name == web })
        XCTAssertGreaterThan(serverStatus.counters.tunnelConnections, 0, "cross-host traffic arrives on 15008")
        XCTAssertEqual(serverStatus.counters.plaintextInbound, 0, "nothing arrives in plaintext")
        XCTAssertTrue(mesh.controlLog.contains("workload certificate issued"))

        // Steady cross-host traffic while the control plane is killed and comes back.
        let traffic = try mesh.startProcess(["ip", "netns", "exec", client, "/usr/bin/python3", load, "http://web:8000/", "100", "8"])
        usleep(2_000_000)
        mesh.stopControl(signal: SIGKILL)
        usleep(3_000_000)
        try mesh.startControl()
        XCTAssertNotNil(mesh.wait(traffic, timeout: 30))
        XCTAssertTrue(traffic.stdout.hasPrefix("ok ") && traffic.stdout.contains(" failed 0"),
                      "no cross-host request fails while the control plane dies: \(traffic.stdout)\(traffic.stderr)")
        XCTAssertGreaterThan(Int(traffic.stdout.split(separator: " ")[1]) ?? 0, 400, traffic.stdout)
        // Both agents come back to the control plane.
        try mesh.waitUntil("both hosts reconnected", timeout: 30) {
            let r = self.mesh.weft(["get", "agents", "-o", "json", "--control-socket", self.mesh.controlSocket])
            let agents = (try? JSONDecoder().decode([AgentSyncStatus].self, from: Data(r.stdout.utf8))) ?? []
            return Set(agents.filter(\.connected).map(\.node)).isSuperset(of: [h1.node, h2.node])
        }
    }

    /// As fast as it can for `seconds` on one keep-alive connection; prints ok, limited and
    /// its wall-clock start and end.
    static let greedy = #"""
    import sys, time, http.client
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    conn = http.client.HTTPConnection(host, port, timeout=10)
    ok = limited = other = 0
    start = time.time()
    while time.time() - start < seconds:
        conn.request("GET", "/"); r = conn.getresponse(); r.read()
        if r.status == 200: ok += 1
        elif r.status == 429: limited += 1
        else: other += 1
    print("ok %d limited %d other %d start %.3f end %.3f" % (ok, limited, other, start, time.time()))
    """#

    /// RateLimitPolicy `mode: global`: callers on two hosts share one bucket kept by the
    /// control plane — together they get the limit, not twice it. With the control plane
    /// gone, each agent keeps its share (half, with two nodes), so the total still holds.
    func testAGlobalRateLimitHoldsAcrossHosts() throws {
        let h1 = try mesh.addHost(1), h2 = try mesh.addHost(2)
        let script = mesh.dir + "/app.py", greedy = mesh.dir + "/greedy.py"
        try ControlPlaneTests.app.write(toFile: script, atomically: true, encoding: .utf8)
        try Self.greedy.write(toFile: greedy, atomically: true, encoding: .utf8)
        let web = mesh.name("web"), c1 = mesh.name("c1"), c2 = mesh.name("c2")
        _ = try mesh.startWeft(in: h1, ["run", "--name", web, "--service", "web", "--port", "8000/http", "--", "/usr/bin/python3", script, "8000"])
        try mesh.waitForListener(netns: web, port: 8000)
        _ = try mesh.startWeft(in: h1, ["run", "--name", c1, "--service", "client", "--", "sleep", "300"])
        _ = try mesh.startWeft(in: h2, ["run", "--name", c2, "--service", "client", "--", "sleep", "300"])
        try waitAttached(c1, on: h1)
        try waitAttached(c2, on: h2)
        let file = mesh.dir + "/global.yaml"
        try """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web-global}
            spec:
              host: web
              mode: global
              limits:
              - {name: everyone, key: service, requestsPerUnit: 40, unit: second, burst: 10}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", file, "--control-socket", mesh.controlSocket])
        XCTAssertEqual(applied.status, 0, applied.output)
        for host in [h1, h2] {
            try mesh.waitUntil("\(host.netns) has the policy and knows web", timeout: 30) {
                self.mesh.weft(["get", "config", "-o", "yaml", "--agent-socket", host.socket]).stdout.contains("mode: global")
                    && self.mesh.run(["ip", "netns", "exec", host.netns == h1.netns ? c1 : c2, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                      "-m", "5", "http://web:8000/"], timeout: 10).stdout != "000"
            }
        }
        usleep(1_500_000)  // the probes above drew from the bucket: let it fill again

        /// Both callers at once; returns (ok in total, the window in seconds, each line).
        func burst(_ seconds: Int) throws -> (Int, Double, [String]) {
            let runs = try [c1, c2].map { try mesh.startProcess(["ip", "netns", "exec", $0, "/usr/bin/python3", greedy, "web", "8000", "\(seconds)"]) }
            var lines: [String] = []
            var ok = 0, starts: [Double] = [], ends: [Double] = []
            for run in runs {
                XCTAssertEqual(mesh.wait(run, timeout: Double(seconds) + 30), 0, run.stderr)
                let f = run.stdout.split(separator: " ").map(String.init)
                guard f.count >= 10 else { throw HarnessError("greedy printed \(run.stdout) \(run.stderr)") }
                lines.append(run.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
                ok += Int(f[1]) ?? 0
                XCTAssertGreaterThan(Int(f[3]) ?? 0, 0, "each caller is limited: \(run.stdout)")
                XCTAssertEqual(f[5], "0", "only 200s and 429s: \(run.stdout)")
                starts.append(Double(f[7]) ?? 0)
                ends.append(Double(f[9].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0)
            }
            return (ok, (ends.max() ?? 0) - (starts.min() ?? 0), lines)
        }
        let (ok, window, lines) = try burst(4)
        let expected = 10 + 40 * window
        // Leases strand at most a lease (4 tokens) per agent at the end; never more than the limit.
        XCTAssertLessThanOrEqual(Double(ok), expected * 1.05, "one bucket for both hosts, not one each: \(lines)")
        XCTAssertGreaterThanOrEqual(Double(ok), expected * 0.85, "the whole limit is usable: \(lines)")

        // The coordinator is gone: each agent of the mesh keeps its share of the limit (the
        // harness's own agent is a node too), and these two callers' agents get theirs.
        let agents = mesh.weft(["get", "agents", "-o", "json", "--control-socket", mesh.controlSocket])
        let nodes = Double(try JSONDecoder().decode([AgentSyncStatus].self, from: Data(agents.stdout.utf8)).count)
        XCTAssertGreaterThanOrEqual(nodes, 2)
        mesh.stopControl(signal: SIGKILL)
        usleep(500_000)
        let (okDown, windowDown, linesDown) = try burst(3)
        let expectedDown = 2 * ((10 / nodes).rounded(.up) + 40 / nodes * windowDown)
        XCTAssertLessThanOrEqual(Double(okDown), expectedDown * 1.1, "each node's share (\(nodes) nodes): \(linesDown)")
        XCTAssertGreaterThanOrEqual(Double(okDown), expectedDown * 0.8, "traffic still flows at each node's share: \(linesDown)")
        XCTAssertTrue(mesh.hostLog(1).contains("coordinator cannot be reached"), mesh.hostLog(1).suffix(2000).description)

        // Back: the agents lease from it again (the limit is the mesh's, not each share's).
        try mesh.startControl()
        try mesh.waitUntil("both hosts reconnected", timeout: 30) {
            let r = self.mesh.weft(["get", "agents", "-o", "json", "--control-socket", self.mesh.controlSocket])
            let agents = (try? JSONDecoder().decode([AgentSyncStatus].self, from: Data(r.stdout.utf8))) ?? []
            return Set(agents.filter(\.connected).map(\.node)).isSuperset(of: [h1.node, h2.node])
        }
        usleep(1_500_000)
        let (okBack, windowBack, linesBack) = try burst(3)
        let expectedBack = 10 + 40 * windowBack
        XCTAssertLessThanOrEqual(Double(okBack), expectedBack * 1.05, "leased from the coordinator again: \(linesBack)")
        XCTAssertGreaterThanOrEqual(Double(okBack), expectedBack * 0.85, linesBack.description)
    }

    /// Until `weft run` has attached `workload` (its capture rules and DNS are in place).
    func waitAttached(_ workload: String, on host: MeshHarness.Host) throws {
        try mesh.waitUntil("\(workload) attached on \(host.netns)", timeout: 20) {
            self.mesh.weft(["get", "workloads", "--agent-socket", host.socket]).stdout.contains(workload)
        }
    }

    /// Secure naming across hosts: someone on host 2's network answers for web's pod address
    /// on 15008 with a valid certificate of the mesh (same CA) but another identity. A client
    /// that opens a new tunnel gets nothing through (the mesh's 503), the refusal names both
    /// identities, and once the route is back the real web answers.
    func testAServerWithTheWrongIdentityIsRefused() throws {
        let h1 = try mesh.addHost(1), h2 = try mesh.addHost(2)
        let script = mesh.dir + "/app.py", mint = mesh.dir + "/mint.py"
        try ControlPlaneTests.app.write(toFile: script, atomically: true, encoding: .utf8)
        try MTLSTests.mintScript.write(toFile: mint, atomically: true, encoding: .utf8)
        let web = mesh.name("web"), client = mesh.name("cli")
        _ = try mesh.startWeft(in: h1, ["run", "--name", web, "--service", "web", "--port", "8000/http", "--", "/usr/bin/python3", script, "8000"])
        try mesh.waitForListener(netns: web, port: 8000)
        let webIP = try XCTUnwrap(mesh.run(["ip", "-n", web, "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
            .split(separator: " ").first { $0.contains("/") }.map { String($0.split(separator: "/")[0]) })

        // The impostor: a netns on host 2 holding web's address, routed there by host 2,
        // serving TLS 1.3 on 15008 with a certificate the mesh CA signed for "impostor".
        let rogue = try mesh.makeNetns("rogue")
        let link = "rg" + mesh.id.dropFirst()
        for cmd in [["ip", "-n", h2.netns, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", rogue],
                    ["ip", "-n", h2.netns, "link", "set", link, "up"],
                    ["ip", "netns", "exec", h2.netns, "sysctl", "-qw", "net.ipv4.conf.\(link).proxy_arp=1"],
                    ["ip", "-n", rogue, "addr", "add", "\(webIP)/32", "dev", "eth0"],
                    ["ip", "-n", rogue, "link", "set", "eth0", "up"],
                    ["ip", "-n", rogue, "route", "add", "default", "dev", "eth0"],
                    ["ip", "-n", h2.netns, "route", "add", "\(webIP)/32", "dev", link]] {
            let r = mesh.run(cmd)
            XCTAssertEqual(r.status, 0, "\(cmd.joined(separator: " ")): \(r.output)")
        }
        let made = mesh.run(["/usr/bin/python3", mint, mesh.controlState + "/ca", "spiffe://weft.local/ns/default/sa/impostor", "-60", "3600",
                             mesh.dir + "/impostor"])
        XCTAssertEqual(made.status, 0, made.output)
        _ = try mesh.startProcess(["ip", "netns", "exec", rogue, "openssl", "s_server", "-accept", "15008", "-tls1_3", "-quiet",
                                   "-cert", mesh.dir + "/impostor.pem", "-key", mesh.dir + "/impostor.key",
                                   "-CAfile", mesh.controlState + "/ca/root-cert.pem", "-Verify", "1"])
        try mesh.waitForListener(netns: rogue, port: 15008)

        _ = try mesh.startWeft(in: h2, ["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("host 2 knows web", timeout: 30) {
            self.mesh.weft(["get", "services", "--agent-socket", h2.socket]).stdout.contains(webIP)
        }
        try waitAttached(client, on: h2)
        func call() -> MeshHarness.Result {
            mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "-w", "\n%{http_code}", "http://web:8000/"], timeout: 20)
        }
        let hijacked = call()
        XCTAssertFalse(hijacked.stdout.hasPrefix("ok"), "nothing from the impostor reaches the client: \(hijacked.output)")
        XCTAssertTrue(hijacked.stdout.hasSuffix("503"), "status \(hijacked.status): \(hijacked.output)\n--- host 2 ---\n\(mesh.hostLog(2).suffix(2500))")
        try mesh.waitUntil("the refusal is logged", timeout: 10) {
            self.mesh.hostLog(2).contains("secure naming") && self.mesh.hostLog(2).contains("sa/impostor")
        }
        XCTAssertTrue(mesh.hostLog(2).contains("expected spiffe://weft.local/ns/default/sa/web"), mesh.hostLog(2).suffix(3000).description)

        // The route back to host 1: the real web answers.
        XCTAssertEqual(mesh.run(["ip", "-n", h2.netns, "route", "del", "\(webIP)/32", "dev", link]).status, 0)
        var fixed = call()
        for _ in 0..<20 where !fixed.stdout.hasPrefix("ok") { usleep(200_000); fixed = call() }
        XCTAssertTrue(fixed.stdout.hasPrefix("ok\n"), fixed.output)
        _ = h1
    }

    /// The issue's whole picture: two hosts, a 3-member etcd cluster, two control planes.
    /// During 60 s of cross-host traffic at 200 requests/s, a control plane is killed (and
    /// comes back), one etcd member is killed, and then the other control plane: not one
    /// request fails, and a config change made after the restart reaches every agent.
    func testTheMeshSurvivesLosingControlPlanesAndAnEtcdMember() throws {
        mesh.shutdown()
        mesh = try MeshHarness.start(withControlPlane: true, hosts: true, etcd: true, etcdMembers: 3, replicas: true)
        let h1 = try mesh.addHost(1), h2 = try mesh.addHost(2)
        let script = mesh.dir + "/app.py", load = mesh.dir + "/load.py"
        try ControlPlaneTests.app.write(toFile: script, atomically: true, encoding: .utf8)
        try ControlPlaneTests.load.write(toFile: load, atomically: true, encoding: .utf8)
        let web = mesh.name("web"), client = mesh.name("cli")
        _ = try mesh.startWeft(in: h1, ["run", "--name", web, "--service", "web", "--port", "8000/http", "--", "/usr/bin/python3", script, "8000"])
        try mesh.waitForListener(netns: web, port: 8000)
        _ = try mesh.startWeft(in: h2, ["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try waitAttached(client, on: h2)
        var first = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "http://web:8000/"], timeout: 20)
        for _ in 0..<30 where first.stdout != "ok\n" {
            usleep(200_000)
            first = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "http://web:8000/"], timeout: 20)
        }
        XCTAssertEqual(first.stdout, "ok\n", first.output)

        let traffic = try mesh.startProcess(["ip", "netns", "exec", client, "/usr/bin/python3", load, "http://web:8000/", "200", "60"])
        sleep(5)
        mesh.stopControl(signal: SIGKILL)       // the first control plane dies
        sleep(8)
        mesh.stopEtcd(member: 2)                // one etcd member dies
        sleep(5)
        try mesh.startControl()                 // the first control plane comes back
        sleep(5)
        // A config change after the restart reaches every agent (through either control plane).
        let yaml = mesh.dir + "/vs.yaml"
        try ControlPlaneTests.config("after-restart").write(toFile: yaml, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", yaml, "--control-socket", mesh.controlSocket])
        XCTAssertEqual(applied.status, 0, applied.output)
        for host in [h1, h2] {
            try mesh.waitUntil("\(host.netns) has the change", timeout: 20) {
                self.mesh.weft(["get", "config", "--agent-socket", host.socket]).stdout.contains("config version 1")
            }
        }
        mesh.stopReplica(signal: SIGKILL)       // then the other control plane dies
        XCTAssertNotNil(mesh.wait(traffic, timeout: 90), "load generator finished")
        XCTAssertTrue(traffic.stdout.hasPrefix("ok ") && traffic.stdout.contains(" failed 0"),
                      "no request fails through control-plane, replica and etcd-member loss: \(traffic.stdout)\(traffic.stderr)")
        XCTAssertGreaterThan(Int(traffic.stdout.split(separator: " ")[1]) ?? 0, 2_000, "traffic flowed through the whole sequence: \(traffic.stdout)")
        let reply = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "5", "-D", "-", "http://web:8000/"], timeout: 20)
        XCTAssertTrue(reply.stdout.lowercased().contains("x-config: after-restart"), reply.output)
    }
}
