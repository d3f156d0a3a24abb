import Foundation
import WeftCore
import XCTest

/// The agent can restart (upgrade, crash, SIGKILL) under running workloads: while it is away
/// their traffic fails closed (the capture rules stay), and when it is back it re-attaches
/// them from its state directory and traffic flows again.
final class AgentRestartTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func fetch(_ client: String) -> MeshHarness.Result {
        mesh.run(["ip", "netns", "exec", client, "curl", "-sS", "-m", "3", "http://web:8000/id.txt"], timeout: 20)
    }

    func testWorkloadsSurviveAgentRestarts() throws {
        let root = mesh.dir + "/www"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: root + "/id.txt", contents: Data("still here\n".utf8), attributes: [.posixPermissions: 0o644])
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "8000",
                                "--", "/usr/bin/python3", "-m", "http.server", "8000", "--directory", root])
        try mesh.waitForListener(netns: mesh.name("web"), port: 8000)
        let client = mesh.name("cli")
        _ = try mesh.startWeft(["run", "--name", client, "--service", "client", "--", "sleep", "300"])
        try mesh.waitUntil("client attached", timeout: 20) { try self.mesh.workload(client) != nil }
        XCTAssertEqual(fetch(client).stdout, "still here\n")
        func vips() throws -> [String: String] {
            let list = try mesh.services()
            return Dictionary(uniqueKeysWithValues: list.map { ("\($0.key)", "\($0.vip)") })
        }
        let vipsBefore = try vips()
        XCTAssertEqual(vipsBefore.count, 2)

        for signal in [SIGTERM, SIGKILL] {
            if let agent = mesh.agent { kill(agent.processIdentifier, signal) }
            try mesh.waitUntil("agent gone", timeout: 10) { !(self.mesh.agent?.isRunning ?? false) }
            // Fail closed: the rules still redirect, nothing answers, nothing bypasses.
            let down = fetch(client)
            XCTAssertNotEqual(down.status, 0, "traffic must not bypass the mesh while the agent is away")
            let savedRules = mesh.run(["ip", "netns", "exec", client, "iptables-save", "-t", "nat"]).stdout
            XCTAssertTrue(savedRules.contains("WEFT_OUTPUT"), "capture rules stay while the agent is away")

            try mesh.restartAgent(signal: SIGKILL)  // already gone; starts it again
            XCTAssertEqual(Set(try mesh.workloads().map(\.spec.name)), [mesh.name("web"), client], "re-attached after signal \(signal)")
            XCTAssertTrue(mesh.agentLog.contains("re-attached 2 workload(s)"), mesh.agentLog.suffix(1500).description)
            var up = fetch(client)
            for _ in 0..<20 where up.status != 0 { usleep(100_000); up = fetch(client) }
            XCTAssertEqual(up.stdout, "still here\n", "traffic flows again after signal \(signal): \(up.output)")
            XCTAssertEqual(try vips(), vipsBefore, "virtual IPs survive the restart (callers and DNS caches hold them)")
        }
        let state = try String(contentsOfFile: mesh.dir + "/state/workloads.json", encoding: .utf8)
        XCTAssertTrue(state.contains(client))
        let mode = try FileManager.default.attributesOfItem(atPath: mesh.dir + "/state/workloads.json")[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
    }
}
