import WeftCore
import XCTest
@testable import WeftAgent

final class RemoteRoutesTests: XCTestCase {
    func testPlanAddsChangedAndRemovesGoneRoutesOnly() {
        let a = CIDR("10.1.1.0/24")!, b = CIDR("10.1.2.0/24")!, c = CIDR("10.1.3.0/24")!
        let x = IPAddress("192.168.0.1")!, y = IPAddress("192.168.0.2")!
        let plan = RemoteRoutes.plan(installed: [a: x, b: x], wanted: [a: x, b: y, c: y])
        XCTAssertEqual(plan.add.map { "\($0.0) via \($0.1)" }, ["10.1.2.0/24 via 192.168.0.2", "10.1.3.0/24 via 192.168.0.2"])
        XCTAssertTrue(plan.remove.isEmpty, "a moved route is replaced, not removed")
        let gone = RemoteRoutes.plan(installed: [a: x, b: x], wanted: [a: x])
        XCTAssertTrue(gone.add.isEmpty)
        XCTAssertEqual(gone.remove.map { "\($0.0)" }, ["10.1.2.0/24"])
    }
}
