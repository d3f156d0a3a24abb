import Foundation
import NIOCertificateReloading
import NIOConcurrencyHelpers
import NIOSSL
import WeftIdentity

/// The control plane's own TLS certificate on 15012, short-lived and replaced while it runs:
/// NIOSSL asks for it at every handshake, so a renewed one applies to the next connection and
/// established agent streams keep theirs.
final class ServingCertificate: CertificateReloader {
    private struct Current {
        var chain: [NIOSSLCertificateSource]
        var key: NIOSSLPrivateKeySource
        var issued: IssuedCertificate
    }

    private let current: NIOLockedValueBox<Current>

    init(issued: IssuedCertificate, keyPEM: String) throws {
        current = NIOLockedValueBox(try Self.load(issued, keyPEM))
    }

    private static func load(_ issued: IssuedCertificate, _ keyPEM: String) throws -> Current {
        let chain = try issued.chainPEM.map { NIOSSLCertificateSource.certificate(try NIOSSLCertificate(bytes: Array($0.utf8), format: .pem)) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        return Current(chain: chain, key: key, issued: issued)
    }

    var sslContextConfigurationOverride: NIOSSLContextConfigurationOverride {
        let c = current.withLockedValue { $0 }
        var override = NIOSSLContextConfigurationOverride()
        override.certificateChain = c.chain
        override.privateKey = c.key
        return override
    }

    var issued: IssuedCertificate { current.withLockedValue { $0.issued } }

    func replace(with issued: IssuedCertificate, keyPEM: String) throws {
        let next = try Self.load(issued, keyPEM)
        current.withLockedValue { $0 = next }
    }

    /// Whether it is time to renew (half life, like every certificate of the mesh).
    static func due(_ issued: IssuedCertificate, now: Date) -> Bool { now >= issued.renewAt }
}
