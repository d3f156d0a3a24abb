import Foundation
import XCTest

/// The shipped units must pass `systemd-analyze verify` and keep their hardening.
final class SystemdUnitTests: XCTestCase {
    let unitPath = MeshHarness.packageRoot.appendingPathComponent("systemd/weft-agent.service").path

    func testAgentUnitVerifies() throws {
        try verify(unitPath, command: "agent")
    }

    func testControlUnitVerifiesAndHasNoPrivileges() throws {
        let path = MeshHarness.packageRoot.appendingPathComponent("systemd/weft-control.service").path
        try verify(path, command: "control")
        let lines = Set(try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init))
        for required in ["Type=notify", "Restart=on-failure", "DynamicUser=yes", "CapabilityBoundingSet=", "NoNewPrivileges=yes",
                         "ProtectSystem=strict", "RuntimeDirectory=weft-control", "StateDirectory=weft-control", "StateDirectoryMode=0700"] {
            XCTAssertTrue(lines.contains(required), "missing \(required)")
        }
    }

    /// The template: verified as an instance (weft-run@web), started only once the agent is
    /// (Wants/After, never Requires: an agent restart must not stop workloads), notify-typed
    /// (weft run reports READY=1 once meshed), and with a bounded capability set.
    func testRunTemplateVerifies() throws {
        let path = MeshHarness.packageRoot.appendingPathComponent("systemd/weft-run@.service").path
        try verify(path, command: "run --from /etc/weft/workloads/%i.conf", as: "weft-run@web.service")
        let lines = Set(try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init))
        for required in ["Type=notify", "NotifyAccess=main", "Wants=weft-agent.service", "Restart=on-failure", "KillMode=mixed",
                         "NoNewPrivileges=yes", "ConditionPathExists=/etc/weft/workloads/%i.conf"] {
            XCTAssertTrue(lines.contains(required), "missing \(required)")
        }
        XCTAssertFalse(lines.contains { $0.hasPrefix("Requires=") || $0.hasPrefix("BindsTo=") || $0.hasPrefix("PrivateTmp=") })
        XCTAssertTrue(lines.contains { $0.hasPrefix("CapabilityBoundingSet=CAP_SYS_ADMIN CAP_NET_ADMIN") })
    }

    func verify(_ unitPath: String, command: String, as instance: String? = nil) throws {
        guard let analyze = HostTool.find("systemd-analyze") else {
            throw XCTSkip("SKIPPED: systemd-analyze is not installed (scripts/setup-deps installs it)")
        }
        let text = try String(contentsOfFile: unitPath, encoding: .utf8)
        XCTAssertTrue(text.contains("ExecStart=/usr/local/bin/weft \(command)"))
        // Verify a copy whose ExecStart points at the binary this build produced.
        let dir = NSTemporaryDirectory() + "weft-unit-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let name = instance ?? (unitPath as NSString).lastPathComponent
        let copy = dir + "/" + name
        try text.replacingOccurrences(of: "/usr/local/bin/weft", with: MeshHarness.weftBinary)
            .write(toFile: copy, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: analyze)
        p.arguments = ["verify", copy]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = err
        try p.run()
        let output = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, output)
        XCTAssertFalse(output.contains(name), "systemd-analyze complained: \(output)")
    }

    func testAgentUnitIsHardened() throws {
        let lines = Set(try String(contentsOfFile: unitPath, encoding: .utf8).split(separator: "\n").map(String.init))
        for required in ["Type=notify", "Restart=on-failure", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN", "ExecReload=/bin/kill -HUP $MAINPID",
                         "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                         "RestrictNamespaces=net", "RuntimeDirectory=weft"] {
            XCTAssertTrue(lines.contains(required), "missing \(required)")
        }
    }
}
