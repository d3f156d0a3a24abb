import XCTest
@testable import WeftProxy

final class ProtocolSniffTests: XCTestCase {
    private func sniff(_ s: String) -> SniffResult { ProtocolSniff.classify(Array(s.utf8)) }

    func testHTTP1RequestLines() {
        XCTAssertEqual(sniff("GET / HTTP/1.1\r\n"), .detected(.http1))
        XCTAssertEqual(sniff("POST /charge?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"), .detected(.http1))
        XCTAssertEqual(sniff("PROPFIND /dav HTTP/1.1\r\n"), .detected(.http1))
    }

    func testPartialInputWaitsForMore() {
        for partial in ["", "G", "GE", "GET", "GET ", "GET /index.html HTTP/1.", "GET / HTTP/1.1\r", "PRI * HTTP/2.0\r\n", "P"] {
            XCTAssertEqual(sniff(partial), .needMore, partial.debugDescription)
        }
        XCTAssertEqual(ProtocolSniff.classify([0x16]), .needMore)
    }

    func testHTTP2PriorKnowledgePreface() {
        XCTAssertEqual(sniff("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), .detected(.http2))
        XCTAssertEqual(ProtocolSniff.classify(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0x12, 4]), .detected(.http2))
        // PRI that is not the preface is an (odd) HTTP/1 method, not HTTP/2.
        XCTAssertEqual(sniff("PRI / HTTP/1.1\r\n"), .detected(.http1))
    }

    func testTLSClientHello() {
        XCTAssertEqual(ProtocolSniff.classify([0x16, 0x03, 0x01, 0x02, 0x00]), .detected(.tls))
        XCTAssertEqual(ProtocolSniff.classify([0x16, 0x99]), .detected(.opaque))
    }

    func testEverythingElseIsOpaque() {
        for other in ["\u{0}\u{1}binary", "get / HTTP/1.1\r\n", "PING\r\n", "SET key value\r\n", "GET / HTTP/2.0\r\n",
                      "GET  / HTTP/1.1\r\n", "GET / HTTP/1.1\n", "SSH-2.0-OpenSSH\r\n", "*1\r\n$4\r\nPING\r\n",
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n"] {
            XCTAssertEqual(sniff(other), .detected(.opaque), other.debugDescription)
        }
        XCTAssertEqual(sniff("GET /" + String(repeating: "a", count: ProtocolSniff.maxRequestLine)), .detected(.opaque))
    }
}

/// The inbound gate's choice between HTTP/2 and HTTP/1.1 on a port declared `/http`.
final class PrefaceSnifferTests: XCTestCase {
    func testThePrefaceDecidesAsSoonAsItCan() {
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        XCTAssertEqual(PrefaceSniffer.isHTTP2(preface), true)
        XCTAssertEqual(PrefaceSniffer.isHTTP2(preface + [0, 0, 0x12]), true, "the first frame may follow in the same read")
        XCTAssertNil(PrefaceSniffer.isHTTP2(Array(preface.prefix(10))), "a prefix of the preface: wait")
        XCTAssertNil(PrefaceSniffer.isHTTP2([UInt8]()))
        XCTAssertEqual(PrefaceSniffer.isHTTP2(Array("GET / HTTP/1.1\r\n".utf8)), false)
        XCTAssertEqual(PrefaceSniffer.isHTTP2(Array("POST".utf8)), false, "P then O: not the preface")
        XCTAssertEqual(PrefaceSniffer.isHTTP2(Array("PRI * HTTP/1.1".utf8)), false)
    }
}
