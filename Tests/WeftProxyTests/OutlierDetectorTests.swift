import XCTest
@testable import WeftConfig
@testable import WeftProxy

final class OutlierDetectorTests: XCTestCase {
    let s: UInt64 = 1_000_000_000

    func policy(_ consecutive: Int = 3, gateway: Int = 0, maxPercent: Int = 50, minHealth: Int = 0) -> OutlierDetection {
        var p = OutlierDetection()
        p.consecutive5xxErrors = consecutive
        p.consecutiveGatewayErrors = gateway
        p.baseEjectionTime = .seconds(30)
        p.maxEjectionPercent = maxPercent
        p.minHealthPercent = minHealth
        return p
    }

    func testConsecutiveErrorsEjectForAGrowingTime() {
        var d = OutlierDetector()
        let p = policy()
        XCTAssertFalse(d.record(host: "web", endpoint: "c", status: 500, policy: p, endpointCount: 3, now: 0))
        XCTAssertFalse(d.record(host: "web", endpoint: "c", status: nil, policy: p, endpointCount: 3, now: 1))
        XCTAssertTrue(d.record(host: "web", endpoint: "c", status: 503, policy: p, endpointCount: 3, now: 2), "third in a row")
        XCTAssertTrue(d.isEjected(host: "web", endpoint: "c", now: 29 * s))
        XCTAssertFalse(d.isEjected(host: "web", endpoint: "c", now: 31 * s), "back after baseEjectionTime")
        for i in 0..<3 { d.record(host: "web", endpoint: "c", status: 500, policy: p, endpointCount: 3, now: 40 * s + UInt64(i)) }
        XCTAssertTrue(d.isEjected(host: "web", endpoint: "c", now: 40 * s + 59 * s), "second ejection lasts twice as long")
        XCTAssertFalse(d.isEjected(host: "web", endpoint: "c", now: 40 * s + 61 * s))
    }

    func testSuccessResetsTheStreakAndGatewayErrorsCountSeparately() {
        var d = OutlierDetector()
        let p = policy(0, gateway: 2)
        d.record(host: "web", endpoint: "a", status: 502, policy: p, endpointCount: 4, now: 0)
        d.record(host: "web", endpoint: "a", status: 200, policy: p, endpointCount: 4, now: 1)
        XCTAssertFalse(d.record(host: "web", endpoint: "a", status: 504, policy: p, endpointCount: 4, now: 2))
        XCTAssertFalse(d.record(host: "web", endpoint: "a", status: 500, policy: p, endpointCount: 4, now: 3), "500 is not a gateway error")
        XCTAssertFalse(d.record(host: "web", endpoint: "a", status: 503, policy: p, endpointCount: 4, now: 4))
        XCTAssertTrue(d.record(host: "web", endpoint: "a", status: 503, policy: p, endpointCount: 4, now: 5))
    }

    func testMaxEjectionPercentAndPanic() {
        var d = OutlierDetector()
        let p = policy(1, maxPercent: 50)
        XCTAssertTrue(d.record(host: "web", endpoint: "a", status: 500, policy: p, endpointCount: 3, now: 0))
        XCTAssertFalse(d.record(host: "web", endpoint: "b", status: 500, policy: p, endpointCount: 3, now: 0), "50% of 3 is one endpoint")
        var tiny = OutlierDetector()
        XCTAssertTrue(tiny.record(host: "web", endpoint: "a", status: 500, policy: policy(1, maxPercent: 10), endpointCount: 3, now: 0),
                      "at least one endpoint may always be ejected")
        XCTAssertEqual(OutlierDetector.healthy([1, 2, 3], ejected: { $0 == 3 }, minHealthPercent: 0), [1, 2])
        XCTAssertEqual(OutlierDetector.healthy([1, 2, 3], ejected: { $0 != 1 }, minHealthPercent: 50), [1, 2, 3], "panic below 50% healthy")
        XCTAssertEqual(OutlierDetector.healthy([1, 2], ejected: { _ in true }, minHealthPercent: 0), [1, 2], "never zero endpoints")
    }
}
