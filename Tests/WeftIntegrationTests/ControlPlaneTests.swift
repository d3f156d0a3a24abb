import Foundation
import WeftCore
import XCTest

/// `weft control` and agents that follow it: config applied to the control plane reaches the
/// agent's data path, ACKs and NACKs are visible, the control plane can die (and come back
/// with an empty store) without a single failed request, and joining refuses bad tokens and
/// pins with precise reasons.
final class ControlPlaneTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start(withControlPlane: true) }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    static let app = #"""
    import sys, http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def do_GET(self):
            body = b"ok\n"
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
    """#

    /// Steady traffic from the client netns: `rate` requests/s for `seconds`, each on its own
    /// connection with a 2 s limit; prints "ok N failed M" and the first failures.
    static let load = #"""
    import sys, time, urllib.request
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    ok = failed = 0; errors = []
    start = time.monotonic(); n = 0
    while time.monotonic() - start < seconds:
        n += 1
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read(); ok += 1
        except Exception as e:
            failed += 1
            if len(errors) < 5: errors.append("%.2fs: %s" % (time.monotonic() - start, e))
        delay = start + n / rate - time.monotonic()
        if delay > 0: time.sleep(delay)
    print("ok %d failed %d %s" % (ok, failed, "; ".join(errors)))
    """#

    static func config(_ version: String) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: web
          namespace: default
        spec:
          hosts: [web]
          http:
          - match:
            - uri:
                prefix: /teapot
            fault:
              abort:
                httpStatus: 418
                percentage:
                  value: 100
            route:
            - destination:
                host: web
          - route:
            - destination:
                host: web
            headers:
              response:
                set:
                  x-config: "\(version)"
        """
    }

    func applyToControl(_ yaml: String) throws {
        let file = mesh.dir + "/vs-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let r = mesh.weft(["apply", "-f", file, "--control-socket", mesh.controlSocket])
        XCTAssertEqual(r.status, 0, r.output)
    }

    func agents() throws -> [AgentSyncStatus] {
        let r = mesh.weft(["get", "agents", "-o", "json", "--control-socket", mesh.controlSocket])
        guard r.status == 0 else { throw HarnessError("weft get agents: \(r.output)") }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .deferredToDate
        return try decoder.decode([AgentSyncStatus].self, from: Data(r.stdout.utf8))
    }

    func agentConfigVersion() -> Int? {
        let r = mesh.weft(["get", "config", "-o", "json"])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return nil }
        return o["version"] as? Int
    }

    func curl(_ client: String, _ path: String) -> MeshHarness.Result {
        mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "3", "-o", "/dev/null", "-D", "-",
                  "-w", "%{http_code}\n", "http://web:8000\(path)"], timeout: 20)
    }

    func testConfigFromTheControlPlaneSurvivesItsDeathAndAnEmptyStore() throws {
        let script = mesh.dir + "/app.py", load = mesh.dir + "/load.py"
        try Self.app.write(toFile: script, atomically: true, encoding: .utf8)
        try Self.load.write(toFile: load, atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http",
                                "--", "/usr/bin/python3", script, "8000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(client) != nil }

        // The agent joined and is in sync with the (empty) config.
        try mesh.waitUntil("agent subscribed and in sync", timeout: 20) {
            try self.agents().contains { $0.node == self.mesh.id && $0.connected && $0.inSync }
        }
        // Workload certificates come from the control plane's CA: the bundle is its root, the
        // tunnel between the two workloads uses them, and they are kept for restarts.
        let bundle = mesh.weft(["get", "certs", "--bundle"]).stdout
        let controlRoot = try String(contentsOfFile: mesh.controlState + "/ca/root-cert.pem", encoding: .utf8)
        func body(_ pem: String) -> String { pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined() }
        XCTAssertFalse(body(controlRoot).isEmpty)
        XCTAssertTrue(body(bundle).contains(body(controlRoot)), "agent trusts the control plane's root: \(bundle)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: mesh.dir + "/state/ca/root-key.pem"), "no CA of the agent's own with --control")
        let certs = mesh.weft(["get", "certs"]).stdout
        XCTAssertTrue(certs.contains("spiffe://weft.local/ns/default/sa/web") && certs.contains("spiffe://weft.local/ns/default/sa/client"), certs)
        XCTAssertTrue(mesh.controlLog.contains("workload certificate issued"), mesh.controlLog.suffix(2000).description)
        let stored = mesh.dir + "/state/certs/\(mesh.name("web")).json"
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: stored)[.posixPermissions] as? Int, 0o600)

        // Local config changes are refused: the control plane is the source.
        let local = mesh.weft(["apply", "-f", "/dev/null"])
        XCTAssertNotEqual(local.status, 0)
        try Self.config("v1").write(toFile: mesh.dir + "/local.yaml", atomically: true, encoding: .utf8)
        let refused = mesh.weft(["apply", "-f", mesh.dir + "/local.yaml"])
        XCTAssertTrue(refused.stderr.contains("takes its config from the control plane at 127.0.0.1:\(mesh.controlPort)"), refused.output)

        // Applied to the control plane → ACKed by the agent → in its data path.
        try applyToControl(Self.config("v1"))
        try mesh.waitUntil("agent acked version 1", timeout: 20) {
            try self.agents().first { $0.node == self.mesh.id }?.ackedVersion == 1
        }
        XCTAssertEqual(agentConfigVersion(), 1)
        XCTAssertTrue(curl(client, "/teapot").stdout.hasSuffix("418\n"), curl(client, "/teapot").output)
        XCTAssertTrue(curl(client, "/").stdout.lowercased().contains("x-config: v1"))

        // Steady traffic while the control plane is killed, the agent restarts without it,
        // and the control plane comes back: not one request fails.
        let traffic = try mesh.startProcess(["ip", "netns", "exec", client, "/usr/bin/python3", load, "http://web:8000/", "100", "12"])
        usleep(1_500_000)
        mesh.stopControl(signal: SIGKILL)
        try mesh.waitUntil("agent notices the control plane is gone", timeout: 20) {
            self.mesh.weft(["get", "config"]).stdout.contains("UNREACHABLE")
        }
        XCTAssertTrue(curl(client, "/").stdout.lowercased().contains("x-config: v1"), "config stays in force without the control plane")
        XCTAssertNotNil(mesh.wait(traffic, timeout: 30), "load generator finished")
        XCTAssertTrue(traffic.stdout.hasPrefix("ok ") && traffic.stdout.contains(" failed 0"), "no request fails while the control plane dies: \(traffic.stdout)\(traffic.stderr)")
        let sent = Int(traffic.stdout.split(separator: " ")[1]) ?? 0
        XCTAssertGreaterThan(sent, 500, traffic.stdout)

        // An agent restarted while the control plane is down recovers from its state directory
        // (config, workloads and their stored certificates: the tunnel works again).
        try mesh.restartAgent(signal: SIGTERM)
        XCTAssertEqual(Set(try mesh.workloads().map(\.spec.name)), [mesh.name("web"), client], "re-attached without the control plane")
        XCTAssertEqual(agentConfigVersion(), 1, "restarted agent serves the config it had acknowledged")
        var restored = curl(client, "/")
        for _ in 0..<20 where !restored.stdout.lowercased().contains("x-config: v1") { usleep(100_000); restored = curl(client, "/") }
        XCTAssertTrue(restored.stdout.lowercased().contains("x-config: v1"), restored.output)
        XCTAssertTrue(mesh.weft(["get", "config"]).stdout.contains("UNREACHABLE"))

        // The control plane returns; the agent resyncs, and a change after the restart arrives.
        try mesh.startControl()
        try mesh.waitUntil("agent reconnected", timeout: 30) {
            try self.agents().contains { $0.node == self.mesh.id && $0.connected && $0.ackedVersion == 1 }
        }
        try applyToControl(Self.config("v2"))
        try mesh.waitUntil("agent acked version 2", timeout: 20) {
            try self.agents().first { $0.node == self.mesh.id }?.ackedVersion == 2
        }
        XCTAssertTrue(curl(client, "/").stdout.lowercased().contains("x-config: v2"))

        // A control plane restarted with an empty store (its config lost, CA kept): the agent
        // NACKs the empty snapshot, keeps serving v2, and the NACK is visible with its reason.
        mesh.stopControl(signal: SIGTERM)
        for file in ["config.yaml", "config-version.json", "store-id", "config-directory.json"] {
            try? FileManager.default.removeItem(atPath: mesh.controlState + "/" + file)
        }
        try mesh.startControl()
        try mesh.waitUntil("agent NACKed the empty store", timeout: 30) {
            try self.agents().first { $0.node == self.mesh.id }?.nackedVersion == 0
        }
        let status = try XCTUnwrap(try agents().first { $0.node == mesh.id })
        XCTAssertTrue(status.nackReason?.contains("is empty and is not the store this agent followed") == true, "\(status)")
        XCTAssertFalse(status.inSync)
        XCTAssertTrue(mesh.weft(["get", "agents", "--control-socket", mesh.controlSocket]).stdout.contains("STALE"))
        let proxyStatus = mesh.weft(["proxy-status", "--control-socket", mesh.controlSocket]).stdout
        XCTAssertTrue(proxyStatus.contains("NACKED") && proxyStatus.contains("is empty"), proxyStatus)
        XCTAssertTrue(curl(client, "/").stdout.lowercased().contains("x-config: v2"), "traffic unaffected by the NACKed snapshot")
        XCTAssertTrue(curl(client, "/teapot").stdout.hasSuffix("418\n"))
        // Re-applying the config to the new store is accepted.
        try applyToControl(Self.config("v3"))
        try mesh.waitUntil("agent acked the new store's version 1", timeout: 20) {
            let a = try self.agents().first { $0.node == self.mesh.id }
            return a?.ackedVersion == 1 && a?.nackedVersion == nil
        }
        XCTAssertTrue(curl(client, "/").stdout.lowercased().contains("x-config: v3"))

        // Node credentials: key 0600 in a 0700 directory; the control plane stores token hashes only.
        let nodeDir = mesh.dir + "/state/node"
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: nodeDir)[.posixPermissions] as? Int, 0o700)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: nodeDir + "/key.pem")[.posixPermissions] as? Int, 0o600)
        let tokens = try String(contentsOfFile: mesh.controlState + "/tokens.json", encoding: .utf8)
        XCTAssertFalse(tokens.contains("weft-"), "only hashes of tokens are stored")
    }

    func testJoiningRefusesBadTokensPinsAndFlags() throws {
        func join(_ extra: [String], node: String) -> MeshHarness.Result {
            let state = mesh.dir + "/join-\(node)"
            return mesh.weft(["agent", "--socket", mesh.dir + "/\(node).sock", "--bridge", "wj" + mesh.id, "--pod-cidr", "10.235.0.0/24",
                              "--state-dir", state, "--dns-upstream", "none", "--control", "127.0.0.1:\(mesh.controlPort)",
                              "--node-name", node, "--metrics-address", "none", "--admin-address", "none"] + extra, timeout: 30)
        }
        let zeroPin = "sha256:" + String(repeating: "0", count: 64)
        let badPin = join(["--token", "weft-whatever", "--ca-pin", zeroPin], node: "n-pin")
        XCTAssertNotEqual(badPin.status, 0)
        XCTAssertTrue(badPin.stderr.contains("does not match --ca-pin"), badPin.output)

        let unknown = join(["--token", "weft-not-a-token", "--ca-pin", mesh.controlPin], node: "n-unknown")
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssertTrue(unknown.stderr.contains("unknown join token"), unknown.output)

        let short = mesh.weft(["control", "token", "create", "--ttl", "1s", "-o", "json", "--control-socket", mesh.controlSocket])
        let token = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(short.stdout.utf8)) as? [String: Any])?["token"] as? String)
        usleep(1_500_000)
        let expired = join(["--token", token, "--ca-pin", mesh.controlPin], node: "n-expired")
        XCTAssertNotEqual(expired.status, 0)
        XCTAssertTrue(expired.stderr.contains("join token expired"), expired.output)

        let none = join([], node: "n-none")
        XCTAssertTrue(none.stderr.contains("has not joined the control plane") && none.stderr.contains("--token"), none.output)
        let both = join(["--config-dir", mesh.dir], node: "n-dir")
        XCTAssertTrue(both.stderr.contains("--config-dir and --control exclude each other"), both.output)
        let badName = join(["--token", "t", "--ca-pin", mesh.controlPin], node: "Bad_Name")
        XCTAssertTrue(badName.stderr.contains("node name"), badName.output)
        // Nothing was changed on the host by the refused joins.
        XCTAssertNotEqual(mesh.run(["ip", "link", "show", "wj" + mesh.id]).status, 0, "a refused join creates no bridge")
        XCTAssertTrue(mesh.controlLog.contains("join refused"), mesh.controlLog.suffix(2000).description)
        // A missing control plane is named as such (not as a missing agent).
        let missing = mesh.weft(["proxy-status", "--control-socket", mesh.dir + "/nothing.sock"])
        XCTAssertTrue(missing.stderr.contains("the Weft control plane is not running"), missing.output)
        // The control plane's socket refuses workload requests with a pointer to the agent.
        let wrong = mesh.weft(["get", "workloads", "--agent-socket", mesh.controlSocket])
        XCTAssertTrue(wrong.stderr.contains("control plane's socket"), wrong.output)
    }
}

/// The control plane's own certificate is short-lived and replaced while it runs: after a
/// renewal, agents connecting anew (here: after a restart) still verify it and follow it.
final class ControlPlaneCertificateTests: XCTestCase {
    func testServingCertificateIsRenewedWhileRunning() throws {
        let mesh = try MeshHarness.start(withControlPlane: true, controlArgs: ["--serving-cert-lifetime", "1m"])
        defer {
            mesh.shutdown()
            XCTAssertEqual(mesh.ourNetns(), [])
        }
        try mesh.waitUntil("the serving certificate renewed at half life", timeout: 60) {
            mesh.controlLog.contains("serving certificate renewed")
        }
        try mesh.restartAgent(signal: SIGTERM)
        try mesh.waitUntil("the agent follows the control plane again", timeout: 30) {
            mesh.weft(["get", "config"]).stdout.contains("connected since")
        }
        XCTAssertFalse(mesh.agentLog.contains("control plane certificate refused"), mesh.agentLog.suffix(2000).description)
    }
}
