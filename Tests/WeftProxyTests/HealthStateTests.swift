import XCTest
@testable import WeftProxy

final class HealthStateTests: XCTestCase {
    func testThresholdsBothWays() {
        var h = HealthState()
        XCTAssertTrue(h.healthy, "new endpoints take traffic at once")
        XCTAssertFalse(h.record(passed: false, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertFalse(h.record(passed: true, healthyThreshold: 2, unhealthyThreshold: 3), "a pass resets the failing streak")
        XCTAssertFalse(h.record(passed: false, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertFalse(h.record(passed: false, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertTrue(h.record(passed: false, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertFalse(h.healthy)
        XCTAssertFalse(h.record(passed: true, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertTrue(h.record(passed: true, healthyThreshold: 2, unhealthyThreshold: 3))
        XCTAssertTrue(h.healthy)
    }
}
