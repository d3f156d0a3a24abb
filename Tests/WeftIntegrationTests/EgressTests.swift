import Foundation
import XCTest

/// Egress control: MeshConfig `outboundTrafficPolicy`. TCP from a meshed app to a
/// destination outside the registry is refused by the proxy under REGISTRY_ONLY; UDP and
/// ICMP go through NFQUEUE, where the agent gives each new flow a verdict; with no agent to
/// answer, they fail closed. "Outside" is a server on the host side of the harness's bridge
/// (its gateway address); the mesh side is a workload answering UDP echo.
final class EgressTests: MeshTestCase {
    var outside: MeshHarness.Background?

    override func tearDown() {
        if let outside, outside.process.isRunning { outside.process.terminate() }
        super.tearDown()
    }

    /// Applies the mesh's MeshConfig through the agent.
    func applyMeshConfig(mode: String, allowed: String = "[]") throws {
        let file = mesh.dir + "/mesh.yaml"
        try "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: weft-system}\n"
            .appending("spec: {outboundTrafficPolicy: {mode: \(mode), allowedDestinations: \(allowed)}}\n")
            .write(toFile: file, atomically: true, encoding: .utf8)
        let r = mesh.weft(["apply", "-f", file])
        XCTAssertEqual(r.status, 0, r.output)
    }

    /// UDP echo and a TCP server that answers "tcp-ok", on one address and port.
    static let echo = #"""
    import socket, sys, threading
    host, port = sys.argv[1], int(sys.argv[2])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((host, port))
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((host, port)); t.listen(16)
    def tcp():
        while True:
            c, _ = t.accept()
            try: c.sendall(b"tcp-ok\n")
            finally: c.close()
    threading.Thread(target=tcp, daemon=True).start()
    while True:
        d, a = u.recvfrom(2048); u.sendto(b"echo:" + d, a)
    """#

    /// Prints one line per target: `udp HOST ok|timeout` and `tcp HOST ok|refused`. Each
    /// probe is a fresh socket, so a new flow (a new conntrack entry).
    static let probe = #"""
    import socket, sys
    port = int(sys.argv[1])
    for host in sys.argv[2:]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
        try:
            s.sendto(b"hi", (host, port)); d, _ = s.recvfrom(2048)
            print("udp", host, "ok" if d == b"echo:hi" else "bad")
        except (socket.timeout, OSError):
            print("udp", host, "timeout")
        try:
            c = socket.create_connection((host, port), timeout=3); d = c.recv(64)
            print("tcp", host, "ok" if d.startswith(b"tcp-ok") else "refused")
        except OSError:
            print("tcp", host, "refused")
        sys.stdout.flush()
    """#

    func testRegistryOnlyRefusesTCPAndUDPOutsideTheMeshAndFailsClosedWithoutTheAgent() throws {
        let gateway = mesh.podCIDR.split(separator: "/")[0].split(separator: ".").prefix(3).joined(separator: ".") + ".1"
        let port = MeshHarness.freePort()
        try Self.echo.write(toFile: mesh.dir + "/echo.py", atomically: true, encoding: .utf8)
        try Self.probe.write(toFile: mesh.dir + "/probe.py", atomically: true, encoding: .utf8)
        outside = try mesh.startProcess(["/usr/bin/python3", mesh.dir + "/echo.py", gateway, "\(port)"])

        _ = try mesh.startWeft(["run", "--name", mesh.name("echo"), "--service", "echo", "--port", "\(port)/tcp", "--",
                                "/usr/bin/python3", mesh.dir + "/echo.py", "0.0.0.0", "\(port)"])
        try mesh.waitForListener(netns: mesh.name("echo"), port: port)
        let inMesh = try XCTUnwrap(try mesh.workload(mesh.name("echo"))?.spec.podIP).description
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(client) != nil }

        func probe() -> [String: String] {
            let r = mesh.run(["ip", "netns", "exec", client, "/usr/bin/python3", mesh.dir + "/probe.py", "\(port)", gateway, inMesh], timeout: 30)
            XCTAssertEqual(r.status, 0, r.output)
            var out: [String: String] = [:]
            for line in r.stdout.split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.count == 3 { out["\(f[0]) \(f[1] == Substring(gateway) ? "outside" : "mesh")"] = String(f[2]) }
            }
            return out
        }
        func ping(_ host: String) -> Bool {
            mesh.run(["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "1", host], timeout: 10).status == 0
        }

        // Default (no MeshConfig): ALLOW_ANY, everything goes; the outside flows are counted.
        XCTAssertEqual(probe(), ["udp outside": "ok", "tcp outside": "ok", "udp mesh": "ok", "tcp mesh": "ok"])
        XCTAssertTrue(ping(gateway), "ICMP is allowed under ALLOW_ANY")

        // REGISTRY_ONLY: only the mesh.
        try applyMeshConfig(mode: "REGISTRY_ONLY")
        XCTAssertEqual(probe(), ["udp outside": "timeout", "tcp outside": "refused", "udp mesh": "ok", "tcp mesh": "ok"])
        XCTAssertFalse(ping(gateway), "ICMP outside the mesh is dropped under REGISTRY_ONLY")
        let resolve = mesh.run(["ip", "netns", "exec", client, "getent", "ahostsv4", "echo.default.svc.cluster.local"], timeout: 10)
        XCTAssertTrue(resolve.status == 0 && resolve.stdout.contains("240.240."), "DNS (captured, answered by the proxy) still works: \(resolve.output)")

        // Denials are logged with the destination and counted per protocol.
        let log = (try? String(contentsOfFile: mesh.dir + "/agent.err", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("egress udp \(gateway):\(port) denied"), "agent log names the denied UDP flow")
        XCTAssertTrue(log.contains("egress tcp \(gateway):\(port) denied"), "agent log names the denied TCP connection")
        let metrics = mesh.run(["curl", "-sf", "http://127.0.0.1:\(mesh.metricsPort)/metrics"]).stdout
        for proto in ["tcp", "udp", "icmp"] {
            let line = metrics.split(separator: "\n").first { $0.hasPrefix("weft_egress_flows_total") && $0.contains("protocol=\"\(proto)\"") && $0.contains("verdict=\"denied\"") && $0.contains(client) }
            XCTAssertNotNil(line, "weft_egress_flows_total for \(proto) denied")
        }

        // An allowedDestination lets one UDP port through (TCP still refused).
        try applyMeshConfig(mode: "REGISTRY_ONLY", allowed: "[{cidr: \(gateway)/32, protocol: UDP, ports: [\(port)]}]")
        XCTAssertEqual(probe(), ["udp outside": "ok", "tcp outside": "refused", "udp mesh": "ok", "tcp mesh": "ok"])

        // No agent: nobody reads the queue, so new UDP flows are dropped (fail closed), even
        // an allowed one; the agent back, they flow again.
        try mesh.restartAgent(signal: SIGKILL, restart: false)
        XCTAssertEqual(probe()["udp outside"], "timeout", "no agent: UDP fails closed")
        XCTAssertFalse(ping(gateway), "no agent: ICMP fails closed")
        try mesh.restartAgent(signal: SIGKILL)
        try mesh.waitUntil("client re-attached", timeout: 20) { try self.mesh.workload(client) != nil }
        XCTAssertEqual(probe()["udp outside"], "ok", "agent back: the allowed UDP flow is allowed again")
    }

    /// A bad MeshConfig is refused with where and why, and a second one is an error.
    func testBadMeshConfigIsRefusedWithReasons() throws {
        let file = mesh.dir + "/bad.yaml"
        try """
        apiVersion: weft.dev/v1alpha1
        kind: MeshConfig
        metadata: {name: mesh}
        spec:
          outboundTrafficPolicy:
            mode: DENY_ALL
        ---
        apiVersion: weft.dev/v1alpha1
        kind: MeshConfig
        metadata: {name: other}
        spec:
          outboundTrafficPolicy:
            allowedDestinations:
            - cidr: 10.0.0.0/33
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let r = mesh.weft(["apply", "-f", file])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.output.contains("bad.yaml:6"), r.output)
        XCTAssertTrue(r.output.contains("must be ALLOW_ANY or REGISTRY_ONLY"), r.output)
        XCTAssertTrue(r.output.contains("is not an IPv4 or IPv6 address"), r.output)
    }
}
