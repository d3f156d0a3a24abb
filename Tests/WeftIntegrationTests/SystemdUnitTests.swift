import Foundation
import XCTest

/// The shipped unit must pass `systemd-analyze verify` and keep its hardening.
final class SystemdUnitTests: XCTestCase {
    let unitPath = MeshHarness.packageRoot.appendingPathComponent("systemd/weft-agent.service").path

    func testAgentUnitVerifies() throws {
        guard let analyze = HostTool.find("systemd-analyze") else {
            throw XCTSkip("SKIPPED: systemd-analyze is not installed (scripts/setup-deps installs it)")
        }
        let text = try String(contentsOfFile: unitPath, encoding: .utf8)
        XCTAssertTrue(text.contains("ExecStart=/usr/local/bin/weft agent"))
        // Verify a copy whose ExecStart points at the binary this build produced.
        let dir = NSTemporaryDirectory() + "weft-unit-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let copy = dir + "/weft-agent.service"
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
        XCTAssertFalse(output.contains("weft-agent.service"), "systemd-analyze complained: \(output)")
    }

    func testAgentUnitIsHardened() throws {
        let lines = Set(try String(contentsOfFile: unitPath, encoding: .utf8).split(separator: "\n").map(String.init))
        for required in ["Type=notify", "Restart=on-failure", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN",
                         "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                         "RestrictNamespaces=net", "RuntimeDirectory=weft"] {
            XCTAssertTrue(lines.contains(required), "missing \(required)")
        }
    }
}
