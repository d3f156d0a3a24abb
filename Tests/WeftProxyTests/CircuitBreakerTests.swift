import XCTest
@testable import WeftConfig
@testable import WeftProxy

final class CircuitBreakerTests: XCTestCase {
    let s: UInt64 = 1_000_000_000
    var policy: CircuitBreakerPolicy {
        var p = CircuitBreakerPolicy(metadata: ObjectMeta(name: "web", namespace: "default"), host: "web",
                                     location: SourceLocation(file: "t", line: 1, column: 1))
        p.failureRatio = 0.5
        p.minimumRequests = 4
        p.window = .seconds(10)
        p.openDuration = .seconds(5)
        p.halfOpenRequests = 2
        return p
    }

    func testOpensFailsFastThenProbesAndCloses() {
        var b = CircuitBreaker()
        for i in 0..<3 {
            XCTAssertEqual(b.admit(policy, now: UInt64(i)), .allow)
            b.record(failed: true, probe: false, policy, now: UInt64(i))
        }
        XCTAssertEqual(b.phase, .closed, "fewer than minimumRequests")
        b.record(failed: false, probe: false, policy, now: 3)
        XCTAssertEqual(b.phase, .open, "3 failures of 4 ≥ 50%")
        XCTAssertEqual(b.admit(policy, now: 2 * s), .reject(retryIn: Double(5 * s + 3 - 2 * s) / 1e9))
        XCTAssertEqual(b.admit(policy, now: 6 * s), .probe, "half-open after openDuration")
        XCTAssertEqual(b.admit(policy, now: 6 * s), .probe)
        XCTAssertEqual(b.admit(policy, now: 6 * s), .reject(retryIn: 0), "only halfOpenRequests probes")
        b.record(failed: false, probe: true, policy, now: 6 * s)
        XCTAssertEqual(b.phase, .halfOpen)
        b.record(failed: false, probe: true, policy, now: 6 * s)
        XCTAssertEqual(b.phase, .closed)
        XCTAssertEqual(b.admit(policy, now: 6 * s), .allow)
    }

    func testAFailedProbeReopensAndOldFailuresLeaveTheWindow() {
        var b = CircuitBreaker()
        for i in 0..<4 { b.record(failed: true, probe: false, policy, now: UInt64(i)) }
        XCTAssertEqual(b.phase, .open)
        XCTAssertEqual(b.admit(policy, now: 6 * s), .probe)
        b.record(failed: false, probe: false, policy, now: 6 * s)  // a late answer from before: ignored
        XCTAssertEqual(b.phase, .halfOpen)
        b.record(failed: true, probe: true, policy, now: 6 * s)
        XCTAssertEqual(b.phase, .open)
        var w = CircuitBreaker()
        for i in 0..<3 { w.record(failed: true, probe: false, policy, now: UInt64(i)) }
        for _ in 0..<3 { w.record(failed: false, probe: false, policy, now: 20 * s) }
        XCTAssertEqual(w.phase, .closed, "failures older than the window no longer count")
    }
}
