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
}
