@testable import WeftConfig
import XCTest
@testable import WeftProxy

final class FaultPlanTests: XCTestCase {
    let fault = HTTPFaultInjection(delay: .init(fixedDelay: .milliseconds(300), percentage: 50),
                                   abort: .init(httpStatus: 503, percentage: 10))

    func testPercentagesDecideEachFaultIndependently() {
        XCTAssertEqual(FaultPlan.decide(nil, delayDraw: 0, abortDraw: 0), .none)
        XCTAssertEqual(FaultPlan.decide(fault, delayDraw: 0.2, abortDraw: 0.05), FaultPlan(delay: nil, abortStatus: 503),
                       "an abort is answered at once, without the delay")
        XCTAssertEqual(FaultPlan.decide(fault, delayDraw: 0.2, abortDraw: 0.5), FaultPlan(delay: .milliseconds(300), abortStatus: nil))
        XCTAssertEqual(FaultPlan.decide(fault, delayDraw: 0.7, abortDraw: 0.5), .none)
        let always = HTTPFaultInjection(delay: nil, abort: .init(httpStatus: 418, percentage: 100))
        XCTAssertEqual(FaultPlan.decide(always, delayDraw: 0.999, abortDraw: 0.999).abortStatus, 418)
    }

    func testDrawsAreUniform() {
        var g = RequestIDGenerator(seed: 7)
        let draws = (0..<10_000).map { _ in g.nextUnit() }
        XCTAssertTrue(draws.allSatisfy { $0 >= 0 && $0 < 1 })
        let below10 = draws.filter { $0 < 0.1 }.count
        XCTAssertTrue((900...1100).contains(below10), "\(below10)")
    }
}
