import WeftCore
import XCTest
@testable import WeftProxy

final class CaptureDecisionTests: XCTestCase {
    let ports = ProxyPorts(CaptureSettings())

    func dst(_ ip: String, _ port: UInt16) -> OriginalDestination {
        OriginalDestination(ip: IPAddress(ip)!, port: port)
    }

    func testOutboundTable() {
        let listener = dst("127.0.0.1", 15001)
        let cases: [(OriginalDestination, Bool, String)] = [
            (dst("10.1.2.3", 8080), true, "redirected connection is forwarded as is"),
            (dst("240.240.0.5", 3000), true, "virtual IPs are forwarded"),
            (dst("127.0.0.1", 15001), false, "not redirected: the app dialled the proxy port"),
            (dst("127.0.0.1", 15006), false, "loopback proxy port would loop"),
            (dst("::1", 15008), false, "IPv6 loopback proxy port would loop"),
            (dst("10.1.2.3", 15006), true, "another pod's inbound port is its business"),
        ]
        for (original, forwards, why) in cases {
            let decision = CaptureDecisions.outbound(original: original, listener: listener, ports: ports)
            if forwards { XCTAssertEqual(decision, .forward(to: original), why) } else {
                guard case .refuse = decision else { return XCTFail(why) }
            }
        }
    }

    func testInboundGoesToLoopbackOnTheDialledPort() {
        let listener = dst("10.231.0.2", 15006)
        XCTAssertEqual(CaptureDecisions.inbound(original: dst("10.231.0.2", 8000), listener: listener, ports: ports),
                       .forward(to: dst("127.0.0.1", 8000)))
        XCTAssertEqual(CaptureDecisions.inbound(original: dst("fd00::2", 8000), listener: dst("fd00::2", 15006), ports: ports),
                       .forward(to: dst("::1", 8000)))
        XCTAssertEqual(CaptureDecisions.inboundFallback(after: dst("::1", 8000)), dst("127.0.0.1", 8000))
        XCTAssertNil(CaptureDecisions.inboundFallback(after: dst("127.0.0.1", 8000)))
        guard case .refuse = CaptureDecisions.inbound(original: listener, listener: listener, ports: ports) else {
            return XCTFail("a direct connection to 15006 must be refused")
        }
        guard case .refuse = CaptureDecisions.inbound(original: dst("10.231.0.2", 15001), listener: listener, ports: ports) else {
            return XCTFail("proxy ports are never forwarded to the app")
        }
    }
}
