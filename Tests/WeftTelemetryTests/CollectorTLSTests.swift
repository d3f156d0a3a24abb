import GRPCNIOTransportHTTP2Posix
import XCTest
@testable import WeftTelemetry

/// The collector's address: an IP literal must not become a TLS server name (SNI forbids it;
/// the exporter failed with cannotUseIPAddressInSNI before).
final class CollectorTargetTests: XCTestCase {
    func testIPLiteralsAreAddressTargetsAndNamesAreDNSTargets() {
        XCTAssertTrue(Tracer.target(host: "127.0.0.1", port: 4317) is ResolvableTargets.IPv4)
        XCTAssertTrue(Tracer.target(host: "fd00::1", port: 4317) is ResolvableTargets.IPv6)
        XCTAssertTrue(Tracer.target(host: "otel-collector", port: 4317) is ResolvableTargets.DNS)
        XCTAssertEqual(Tracer.split("[fd00::1]:4318").0, "fd00::1")
        XCTAssertEqual(Tracer.split("[fd00::1]:4318").1, 4318)
    }

    func testACertificateNeedsItsKey() {
        XCTAssertThrowsError(try CollectorTLS(certFile: "/nonexistent.pem").validate()) { error in
            XCTAssertTrue("\(error)".contains("go together"), "\(error)")
        }
        XCTAssertNoThrow(try CollectorTLS().validate(), "TLS with the system's trust store needs no file")
    }
}
