import XCTest
@testable import WeftAgent

final class AgentPrivilegesTests: XCTestCase {
    func testWhatIsMissingAndWhatIsMore() {
        XCTAssertEqual(AgentPrivileges.requiredMask, 0x201000)
        let exact = AgentPrivileges.evaluate(effective: 0x201000)
        XCTAssertTrue(exact.missing.isEmpty && exact.extra.isEmpty)
        let root = AgentPrivileges.evaluate(effective: 0x1ff_ffff_ffff)
        XCTAssertTrue(root.missing.isEmpty)
        XCTAssertEqual(root.extra.count, 39)
        XCTAssertTrue(root.extra.contains("CAP_NET_RAW") && root.extra.contains("CAP_DAC_OVERRIDE") && !root.extra.contains("CAP_NET_ADMIN"))
        let noSysAdmin = AgentPrivileges.evaluate(effective: 0x1000 | 0x2000)
        XCTAssertEqual(noSysAdmin.missing.map(\.name), ["CAP_SYS_ADMIN"])
        XCTAssertEqual(noSysAdmin.extra, ["CAP_NET_RAW"])
        XCTAssertEqual(AgentPrivileges.evaluate(effective: 0).missing.map(\.name), ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"])
    }
}
