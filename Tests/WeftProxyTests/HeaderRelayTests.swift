import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest
@testable import WeftProxy

/// The HTTP/1.1 relay writes request and response heads without NIO's outbound header
/// validation (a pass over every byte of every header, twice per request). That is sound only
/// because what it writes was either parsed by NIO's HTTP/1.1 decoder, which refuses what the
/// validator would (pinned here, both directions), or comes from the config, whose header
/// names and values are checked when it is read (ConfigParserTests).
final class HeaderRelayTests: XCTestCase {
    static let badHeaders: [String] = [
        "X-A: a\u{01}b", "X-A: a\u{7f}b", "X-A: a\u{00}b", "X-A: a\rb", "X A: b", "X-A : b", "X-\u{01}A: b", "(X-A): b",
    ]

    fileprivate func decodes(_ text: String, as kind: HTTPDecoderKind) -> Bool {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        do {
            switch kind {
            case .request: try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()))
            case .response:
                // A response decoder reads answers to requests it saw go out.
                try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")))
                try channel.writeOutbound(HTTPClientRequestPart.end(nil))
            }
            try channel.writeInbound(ByteBuffer(string: text))
            return true
        } catch {
            return false
        }
    }

    func testTheDecoderRefusesWhatTheOutboundValidatorWould() {
        XCTAssertTrue(decodes("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\tc\r\n\r\n", as: .request), "a tab is allowed")
        XCTAssertTrue(decodes("GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\u{e9}\r\n\r\n", as: .request), "so is obs-text")
        XCTAssertTrue(decodes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: b\r\n\r\n", as: .response))
        for bad in Self.badHeaders {
            XCTAssertFalse(decodes("GET / HTTP/1.1\r\nHost: a\r\n\(bad)\r\n\r\n", as: .request), "request with \(bad.debugDescription)")
            XCTAssertFalse(decodes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\(bad)\r\n\r\n", as: .response), "response with \(bad.debugDescription)")
        }
    }
}

private enum HTTPDecoderKind { case request, response }
