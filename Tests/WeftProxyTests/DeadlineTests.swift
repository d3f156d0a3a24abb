import NIOHTTP1
import XCTest
@testable import WeftProxy

final class DeadlineTests: XCTestCase {
    func testTheShorterOfRouteAndCallerWins() {
        var h = HTTPHeaders()
        XCTAssertNil(Deadline.effective(route: nil, headers: h))
        XCTAssertEqual(Deadline.effective(route: .seconds(2), headers: h), .seconds(2))
        h.add(name: "x-weft-expected-timeout-ms", value: "300")
        XCTAssertEqual(Deadline.effective(route: .seconds(2), headers: h), .milliseconds(300))
        XCTAssertEqual(Deadline.effective(route: .milliseconds(100), headers: h), .milliseconds(100))
        XCTAssertEqual(Deadline.effective(route: nil, headers: h), .milliseconds(300))
        XCTAssertNil(Deadline.effective(route: nil, headers: ["x-weft-expected-timeout-ms": "soon"]))
        XCTAssertNil(Deadline.effective(route: nil, headers: ["x-weft-expected-timeout-ms": "-5"]))
    }

    func testGRPCTimeoutFormat() {
        XCTAssertEqual(Deadline.grpcTimeout("2S"), .seconds(2))
        XCTAssertEqual(Deadline.grpcTimeout("150m"), .milliseconds(150))
        XCTAssertEqual(Deadline.grpcTimeout("1H"), .seconds(3600))
        XCTAssertEqual(Deadline.grpcTimeout("10u"), .microseconds(10))
        XCTAssertNil(Deadline.grpcTimeout("123456789S"), "at most 8 digits")
        XCTAssertNil(Deadline.grpcTimeout("5x"))
        XCTAssertNil(Deadline.grpcTimeout("S"))
        XCTAssertEqual(Deadline.milliseconds(.milliseconds(1500)), 1500)
    }
}
