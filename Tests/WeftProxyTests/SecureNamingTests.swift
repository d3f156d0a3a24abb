import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP2
import NIOSSL
import WeftCore
import WeftIdentity
import XCTest
@testable import WeftProxy

/// Secure naming over a real TLS 1.3 handshake between two embedded channels: a server that
/// proves another identity than the one registered for its address gets nothing but the
/// handshake; the right one gets HTTP/2.
final class SecureNamingTests: XCTestCase {
    func tls(_ ca: CertificateAuthority, _ account: String) throws -> WorkloadTLS {
        let id = try SpiffeID.workload(trustDomain: "weft.local", namespace: "shop", serviceAccount: account)
        let key = WorkloadKey()
        let issued = try ca.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: .seconds(3600))
        let t = WorkloadTLS()
        try t.update(WorkloadCredentials(identity: id, chainPEM: issued.chainPEM, keyPEM: try key.privateKeyPEM(), bundlePEM: ca.bundlePEM))
        return t
    }

    /// Runs the handshake; returns the client's verdict and every byte the client sent after
    /// the server's Finished was delivered.
    func handshake(serverAccount: String, expected: String) throws -> (Result<Void, Error>, Int) {
        let dir = NSTemporaryDirectory() + "weft-sn-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let server = EmbeddedChannel(), client = EmbeddedChannel(loop: server.embeddedEventLoop)
        try server.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: XCTUnwrap(try tls(ca, serverAccount).serverContext)))
        let verified = client.eventLoop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
        try client.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: XCTUnwrap(try tls(ca, "client").clientContext), serverHostname: nil))
        try client.pipeline.syncOperations.addHandler(SecureNamingCheck(
            expected: try SpiffeID.workload(trustDomain: "weft.local", namespace: "shop", serviceAccount: expected),
            trustDomain: "weft.local", verified: verified))
        try server.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 1)).wait()
        try client.connect(to: SocketAddress(ipAddress: "10.0.0.2", port: 15008)).wait()
        var afterVerdict = 0
        var verdict: Result<Void, Error>?
        verified.futureResult.whenComplete { verdict = $0.map { _ in } }
        for _ in 0..<20 {
            var moved = false
            while let bytes = try client.readOutbound(as: ByteBuffer.self) {
                if verdict != nil { afterVerdict += bytes.readableBytes }
                if server.isActive { try server.writeInbound(bytes) }
                moved = true
            }
            while let bytes = try server.readOutbound(as: ByteBuffer.self) {
                if client.isActive { try client.writeInbound(bytes) }
                moved = true
            }
            if !moved { break }
        }
        // Close without waiting: TLS shutdown waits for close_notify on a timer of the
        // embedded loop, which only moves when told to.
        client.close(promise: nil)
        server.close(promise: nil)
        server.embeddedEventLoop.advanceTime(by: .seconds(1))
        return (try XCTUnwrap(verdict), afterVerdict)
    }

    func testAServerWithAnotherIdentityGetsNothing() throws {
        let (verdict, _) = try handshake(serverAccount: "impostor", expected: "web")
        guard case .failure(let error) = verdict else { return XCTFail("the impostor was accepted") }
        XCTAssertTrue("\(error)".contains("secure naming"), "\(error)")
        XCTAssertTrue("\(error)".contains("sa/impostor") && "\(error)".contains("sa/web"), "\(error)")
    }

    func testTheRegisteredIdentityGetsHTTP2() throws {
        let (verdict, bytes) = try handshake(serverAccount: "web", expected: "web")
        guard case .success = verdict else { return XCTFail("the right server was refused: \(verdict)") }
        XCTAssertGreaterThan(bytes, 0, "the HTTP/2 preface follows the verdict")
    }
}
