import Foundation
import WeftCore
import XCTest

/// `weft control --store etcd://…`: the store lives in etcd, so a control plane started with an
/// empty state directory (another host) has the same CA, config, store and join tokens, and
/// its agents carry on in sync; etcd unreachable at start or mid-way is a clear error and
/// nothing is applied half-way.
final class ControlStoreTests: XCTestCase {
    func testTheStoreInEtcdOutlivesTheControlPlanesStateDirectory() throws {
        let mesh = try MeshHarness.start(withControlPlane: true, etcd: true)
        defer {
            mesh.shutdown()
            XCTAssertEqual(mesh.ourNetns(), [])
        }
        func agents() throws -> [AgentSyncStatus] {
            let r = mesh.weft(["get", "agents", "-o", "json", "--control-socket", mesh.controlSocket])
            guard r.status == 0 else { throw HarnessError("get agents: \(r.output)") }
            return try JSONDecoder().decode([AgentSyncStatus].self, from: Data(r.stdout.utf8))
        }
        try mesh.waitUntil("agent in sync", timeout: 20) { try agents().contains { $0.node == mesh.id && $0.connected && $0.inSync } }
        let yaml = mesh.dir + "/vs.yaml"
        try ControlPlaneTests.config("etcd").write(toFile: yaml, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", yaml, "--control-socket", mesh.controlSocket]).status, 0)
        try mesh.waitUntil("agent acked version 1", timeout: 20) { try agents().first { $0.node == mesh.id }?.ackedVersion == 1 }
        let token = mesh.weft(["control", "token", "create", "--ttl", "10m", "-o", "json", "--control-socket", mesh.controlSocket])
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(token.stdout.utf8)) as? [String: Any])
        let secret = try XCTUnwrap(object["token"] as? String), pin = try XCTUnwrap(object["caPin"] as? String)

        // A new control plane, nothing in its state directory, the same etcd.
        mesh.stopControl(signal: SIGTERM)
        try FileManager.default.removeItem(atPath: mesh.controlState)
        try mesh.startControl()
        let config = mesh.weft(["get", "config", "-o", "json", "--control-socket", mesh.controlSocket])
        XCTAssertTrue(config.stdout.contains("\"version\" : 1"), config.output)
        XCTAssertTrue(mesh.controlLog.contains("store in etcd"))
        try mesh.waitUntil("agent back and still in sync (same CA, same store)", timeout: 30) {
            try agents().contains { $0.node == mesh.id && $0.connected && $0.ackedVersion == 1 && $0.nackedVersion == nil }
        }
        // The token made before still joins, against the same pin.
        let again = mesh.weft(["control", "token", "create", "-o", "json", "--control-socket", mesh.controlSocket]).stdout
        XCTAssertTrue(again.contains(pin), "same CA after the move: \(again)")
        let joiner = try mesh.startWeft(["agent", "--socket", mesh.dir + "/j.sock", "--bridge", "wj" + mesh.id.dropFirst(),
                                         "--pod-cidr", "10.235.\(Int.random(in: 0...255)).0/24", "--state-dir", mesh.dir + "/j-state",
                                         "--dns-upstream", "none", "--control", "127.0.0.1:\(mesh.controlPort)", "--token", secret,
                                         "--ca-pin", pin, "--node-name", "joiner", "--metrics-address", "none", "--admin-address", "none"])
        try mesh.waitUntil("a node joins with the token created before the move", timeout: 30) {
            joiner.stderr.contains("joined the control plane")
        }
        kill(joiner.process.processIdentifier, SIGTERM)
        _ = mesh.wait(joiner)
        _ = mesh.run(["ip", "link", "del", "wj" + mesh.id.dropFirst()])

        // etcd gone mid-way: a config change is refused whole; the agent keeps its config.
        mesh.stopEtcd()
        try ControlPlaneTests.config("lost").write(toFile: yaml, atomically: true, encoding: .utf8)
        let refused = mesh.weft(["apply", "-f", yaml, "--control-socket", mesh.controlSocket], timeout: 60)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stdout.contains("the config store did not take the change, nothing was applied") && refused.stdout.contains("etcd is unreachable"),
                      refused.output)
        let after = mesh.weft(["get", "config", "-o", "json", "--control-socket", mesh.controlSocket]).stdout
        XCTAssertTrue(after.contains("\"version\" : 1"), after)
        // etcd unreachable at start: a clear error, nothing served.
        let second = mesh.weft(["control", "--listen", "127.0.0.1:\(mesh.controlPort + 1)", "--socket", mesh.dir + "/c2.sock",
                                "--state-dir", mesh.dir + "/c2", "--store", "etcd://127.0.0.1:\(mesh.etcdPort)"], timeout: 60)
        XCTAssertNotEqual(second.status, 0)
        XCTAssertTrue(second.stderr.contains("etcd is unreachable (127.0.0.1:\(mesh.etcdPort)"), second.output)
    }
}

/// Two control planes on one etcd store serve the same mesh: a change applied through either
/// reaches agents of both, and an agent whose control plane dies fails over to the other
/// while its workloads keep talking.
final class ControlReplicaTests: XCTestCase {
    func testTwoControlPlanesServeOneMeshAndAgentsFailOver() throws {
        let mesh = try MeshHarness.start(withControlPlane: true, etcd: true, replicas: true)
        defer {
            mesh.shutdown()
            XCTAssertEqual(mesh.ourNetns(), [])
        }
        func agents(_ socket: String) throws -> [AgentSyncStatus] {
            let r = mesh.weft(["get", "agents", "-o", "json", "--control-socket", socket])
            guard r.status == 0 else { throw HarnessError("get agents: \(r.output)") }
            return try JSONDecoder().decode([AgentSyncStatus].self, from: Data(r.stdout.utf8))
        }
        func agentVersion() -> Int? {
            let r = mesh.weft(["get", "config", "-o", "json"])
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["version"] as? Int
        }
        try mesh.waitUntil("agent follows the first control plane", timeout: 20) {
            try agents(mesh.controlSocket).contains { $0.node == mesh.id && $0.connected }
        }
        let script = mesh.dir + "/app.py", load = mesh.dir + "/load.py"
        try ControlPlaneTests.app.write(toFile: script, atomically: true, encoding: .utf8)
        try ControlPlaneTests.load.write(toFile: load, atomically: true, encoding: .utf8)
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000/http", "--", "/usr/bin/python3", script, "8000"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try mesh.workload(client) != nil }

        // Applied through the replica, which this agent does not talk to: it arrives anyway.
        let yaml = mesh.dir + "/vs.yaml"
        try ControlPlaneTests.config("replica").write(toFile: yaml, atomically: true, encoding: .utf8)
        let applied = mesh.weft(["apply", "-f", yaml, "--control-socket", mesh.replicaSocket])
        XCTAssertEqual(applied.status, 0, applied.output)
        try mesh.waitUntil("version 1 reaches the agent through the other control plane", timeout: 20) { agentVersion() == 1 }
        var reply = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "3", "-D", "-", "http://web:8000/"], timeout: 20)
        for _ in 0..<20 where !reply.stdout.lowercased().contains("x-config: replica") {
            usleep(200_000)
            reply = mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "3", "-D", "-", "http://web:8000/"], timeout: 20)
        }
        XCTAssertTrue(reply.stdout.lowercased().contains("x-config: replica"), reply.output)

        // The first control plane dies during steady traffic: the agent moves to the replica.
        let traffic = try mesh.startProcess(["ip", "netns", "exec", client, "/usr/bin/python3", load, "http://web:8000/", "100", "6"])
        usleep(1_500_000)
        mesh.stopControl(signal: SIGKILL)
        try mesh.waitUntil("agent follows the replica", timeout: 30) {
            try agents(mesh.replicaSocket).contains { $0.node == mesh.id && $0.connected }
        }
        try ControlPlaneTests.config("after").write(toFile: yaml, atomically: true, encoding: .utf8)
        XCTAssertEqual(mesh.weft(["apply", "-f", yaml, "--control-socket", mesh.replicaSocket]).status, 0)
        try mesh.waitUntil("version 2 acked through the replica", timeout: 20) {
            try agents(mesh.replicaSocket).first { $0.node == mesh.id }?.ackedVersion == 2
        }
        XCTAssertNotNil(mesh.wait(traffic, timeout: 30))
        XCTAssertTrue(traffic.stdout.hasPrefix("ok ") && traffic.stdout.contains(" failed 0"), "\(traffic.stdout)\(traffic.stderr)")
        XCTAssertTrue(mesh.weft(["get", "config"]).stdout.contains("connected since"))
    }
}
