import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import WeftCore
import WeftIdentity

/// A workload's certificate, key and trust bundle, as issued by the CA.
public struct WorkloadCredentials: Sendable {
    public var identity: SpiffeID
    /// Leaf first, then intermediates.
    public var chainPEM: [String]
    public var keyPEM: String
    public var bundlePEM: String

    public init(identity: SpiffeID, chainPEM: [String], keyPEM: String, bundlePEM: String) {
        self.identity = identity
        self.chainPEM = chainPEM
        self.keyPEM = keyPEM
        self.bundlePEM = bundlePEM
    }
}

/// The TLS side of a workload's identity: the contexts its mesh tunnel uses, swapped whole
/// when the certificate is renewed. A connection keeps the context it started with, so a
/// rotation never drops an established connection; new connections use the new certificate.
///
/// Both sides: TLS 1.3 only, a certificate required from the peer and verified against the
/// bundle (chain, validity dates); the peer's SPIFFE ID is checked after the handshake
/// (TunnelPeer), since TLS hostname checks do not apply to URI SANs.
public final class WorkloadTLS: Sendable {
    private struct Contexts {
        let credentials: WorkloadCredentials
        let server: NIOSSLContext
        let client: NIOSSLContext
    }

    private let current = NIOLockedValueBox<Contexts?>(nil)

    public init() {}

    public func update(_ credentials: WorkloadCredentials) throws {
        let chain = try credentials.chainPEM.map { try NIOSSLCertificate(bytes: Array($0.utf8), format: .pem) }
        let key = try NIOSSLPrivateKey(bytes: Array(credentials.keyPEM.utf8), format: .pem)
        let roots = try NIOSSLCertificate.fromPEMBytes(Array(credentials.bundlePEM.utf8))
        func configure(_ c: inout TLSConfiguration) {
            c.minimumTLSVersion = .tlsv13
            c.certificateVerification = .noHostnameVerification
            c.trustRoots = .certificates(roots)
            c.certificateChain = chain.map { .certificate($0) }
            c.privateKey = .privateKey(key)
            c.applicationProtocols = ["h2"]
            // Closing sends close_notify without waiting long for the peer's (HTTP/2 already
            // marks where every stream ends; a stopping workload must not hang on its peers).
            c.shutdownTimeout = .milliseconds(100)
        }
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configure(&server)
        var client = TLSConfiguration.makeClientConfiguration()
        configure(&client)
        let contexts = Contexts(credentials: credentials, server: try NIOSSLContext(configuration: server),
                                client: try NIOSSLContext(configuration: client))
        current.withLockedValue { $0 = contexts }
    }

    public var identity: SpiffeID? { current.withLockedValue { $0?.credentials.identity } }
    public var trustDomain: String? { identity?.trustDomain }
    var serverContext: NIOSSLContext? { current.withLockedValue { $0?.server } }
    var clientContext: NIOSSLContext? { current.withLockedValue { $0?.client } }
}

/// Reading the peer's SPIFFE ID once a handshake finished.
enum TunnelPeer {
    static func identity(of channel: Channel, trustDomain: String) throws -> SpiffeID {
        guard let cert = try channel.pipeline.syncOperations.nioSSL_peerCertificate() else {
            throw WeftError(.permissionDenied, "peer presented no certificate")
        }
        let id = try SVID.identity(ofDER: try cert.toDERBytes())
        guard id.trustDomain == trustDomain else {
            throw WeftError(.permissionDenied, "peer identity \(id) is outside trust domain \(trustDomain)")
        }
        return id
    }
}
