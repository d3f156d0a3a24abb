import NIOCore
import NIOHTTP1
import XCTest
@testable import WeftConfig
@testable import WeftProxy

final class RetryPolicyTests: XCTestCase {
    func policy(_ on: [String], attempts: Int = 2) -> RetryPolicy {
        RetryPolicy(HTTPRetry(attempts: attempts, perTryTimeout: nil, retryOn: on))
    }

    func testRetryOnSemantics() {
        let p5xx = policy(["5xx"])
        XCTAssertTrue(p5xx.retries(.status(503, grpc: nil), method: .GET))
        XCTAssertTrue(p5xx.retries(.status(500, grpc: nil), method: .GET))
        XCTAssertFalse(p5xx.retries(.status(404, grpc: nil), method: .GET))
        XCTAssertTrue(p5xx.retries(.reset, method: .GET))
        XCTAssertTrue(p5xx.retries(.connectFailure, method: .GET))
        let gateway = policy(["gateway-error"])
        XCTAssertTrue(gateway.retries(.status(502, grpc: nil), method: .GET))
        XCTAssertFalse(gateway.retries(.status(500, grpc: nil), method: .GET))
        XCTAssertFalse(gateway.retries(.connectFailure, method: .GET))
        XCTAssertTrue(policy(["connect-failure"]).retries(.connectFailure, method: .GET))
        XCTAssertFalse(policy(["connect-failure"]).retries(.reset, method: .GET))
        XCTAssertTrue(policy(["retriable-4xx"]).retries(.status(409, grpc: nil), method: .PUT))
        XCTAssertTrue(policy(["418"]).retries(.status(418, grpc: nil), method: .GET), "numeric codes in retryOn")
        XCTAssertTrue(policy(["unavailable"]).retries(.status(200, grpc: 14), method: .GET), "gRPC status names")
        XCTAssertFalse(policy(["unavailable"]).retries(.status(200, grpc: 13), method: .GET))
        XCTAssertFalse(policy(["cancelled"]).retries(.status(200, grpc: 0), method: .GET))
    }

    func testNonIdempotentRequestsAreRetriedOnlyWhenNothingReachedTheUpstream() {
        let p = policy(["5xx", "reset", "connect-failure", "refused-stream"])
        for method in [HTTPMethod.POST, .PATCH] {
            XCTAssertFalse(p.retries(.status(503, grpc: nil), method: method))
            XCTAssertFalse(p.retries(.reset, method: method))
            XCTAssertFalse(p.retries(.perTryTimeout, method: method))
            XCTAssertTrue(p.retries(.connectFailure, method: method))
            XCTAssertTrue(p.retries(.refusedStream, method: method))
        }
        XCTAssertTrue(p.retries(.status(503, grpc: nil), method: .PUT), "PUT is idempotent")
        XCTAssertTrue(p.retries(.status(503, grpc: nil), method: .DELETE))
    }

    func testBackoffIsJitteredExponentialAndCapped() {
        XCTAssertEqual(RetryPolicy.backoff(retry: 1, draw: 0), .nanoseconds(0))
        XCTAssertEqual(RetryPolicy.backoff(retry: 1, draw: 0.5), .milliseconds(12) + .microseconds(500))
        XCTAssertEqual(RetryPolicy.backoff(retry: 2, draw: 0.5), .milliseconds(25))
        XCTAssertEqual(RetryPolicy.backoff(retry: 20, draw: 0.999_999).nanoseconds / 1_000_000, 249)
    }

    func testBudgetAllowsARatioOfRequestsPlusAFloorOverTheWindow() {
        let budget = RetryBudget(.init(ratio: 0.2, minPerSecond: 1, windowSeconds: 10))
        for _ in 0..<100 { budget.recordRequest("web", now: 1000) }
        var allowed = 0
        for _ in 0..<100 where budget.tryRetry("web", now: 1000) { allowed += 1 }
        XCTAssertEqual(allowed, 30, "20% of 100 requests + 1/s × 10 s")
        XCTAssertTrue(budget.tryRetry("other", now: 1000), "budgets are per service")
        // Ten seconds later the window has moved on: only the floor is left.
        var later = 0
        for _ in 0..<100 where budget.tryRetry("web", now: 1011) { later += 1 }
        XCTAssertEqual(later, 10)
        let off = RetryBudget(.init(enabled: false))
        XCTAssertTrue((0..<1000).allSatisfy { _ in off.tryRetry("web", now: 0) })
    }

    func testRetryBudgetResourceOverridesAndOptIn() {
        let p = policy(["5xx"])
        XCTAssertFalse(p.retries(.status(503, grpc: nil), method: .POST))
        XCTAssertTrue(p.retries(.status(503, grpc: nil), method: .POST, nonIdempotentOptIn: true))
        var none = RetryBudgetPolicy(metadata: ObjectMeta(name: "b", namespace: "default"), host: "web",
                                     location: SourceLocation(file: "t", line: 1, column: 1))
        none.ratio = 0
        none.minRetriesPerSecond = 0
        let budget = RetryBudget(.init())
        for _ in 0..<100 { budget.recordRequest("web", now: 5) }
        XCTAssertFalse(budget.tryRetry("web", now: 5, override: none))
        XCTAssertTrue(budget.tryRetry("web", now: 5), "the agent's default still allows")
    }
}
