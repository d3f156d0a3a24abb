import NIOHTTP1
import XCTest
@testable import WeftProxy

/// Which server spans are errors, and where a gRPC status comes from.
final class ServerSpanTests: XCTestCase {
    func testServerErrorsAreFiveHundredsNoAnswerAndServerSideGRPCCodes() {
        XCTAssertFalse(ServerSpan.isError(status: 200, grpcStatus: nil))
        XCTAssertFalse(ServerSpan.isError(status: 404, grpcStatus: nil), "a client error is not the server's")
        XCTAssertTrue(ServerSpan.isError(status: 503, grpcStatus: nil))
        XCTAssertTrue(ServerSpan.isError(status: 0, grpcStatus: nil), "no answer")
        XCTAssertFalse(ServerSpan.isError(status: 200, grpcStatus: 0))
        for caller in [1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            XCTAssertFalse(ServerSpan.isError(status: 200, grpcStatus: caller), "gRPC \(caller) is the caller's")
        }
        for server in [2, 4, 12, 13, 14, 15] {
            XCTAssertTrue(ServerSpan.isError(status: 200, grpcStatus: server), "gRPC \(server) is the server's")
        }
    }

    func testTheGRPCStatusIsReadFromTrailersOrATrailersOnlyHead() {
        var span = ServerSpan(context: .init(traceID: Array(repeating: 1, count: 16), spanID: Array(repeating: 2, count: 8), sampled: true, random: true),
                              parent: [], startNanos: 0, method: "POST", path: "/weft.Test/Say")
        span.noteGRPCStatus(HTTPHeaders([("content-type", "application/grpc")]))
        XCTAssertNil(span.grpcStatus)
        span.noteGRPCStatus(HTTPHeaders([("grpc-status", "5"), ("grpc-message", "no such thing")]))
        XCTAssertEqual(span.grpcStatus, 5)
        span.noteGRPCStatus(HTTPHeaders([("grpc-status", "x")]))
        XCTAssertEqual(span.grpcStatus, 5, "a malformed status changes nothing")
    }
}
