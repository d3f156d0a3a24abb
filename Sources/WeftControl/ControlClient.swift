import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import WeftCore
import WeftIdentity
import X509

/// The client side of 15012, for agents (and the propagation benchmark's simulated agents):
/// one gRPC client per exchange over TLS, showing `chain`/`keyPEM` (a node certificate, or a
/// bootstrap one while joining) and, when `verify` is given, requiring the server to chain to
/// those roots *and* to be exactly the control plane's identity of that trust domain.
public struct ControlClient: Sendable {
    public let host: String
    public let port: Int
    public let logger: Logger

    public init(host: String, port: Int, logger: Logger) {
        self.host = host
        self.port = port
        self.logger = logger
    }

    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The trust a client needs: roots, and the trust domain whose control identity to expect.
    public struct Trust: Sendable {
        public var roots: [Certificate]
        public var trustDomain: String

        public init(roots: [Certificate], trustDomain: String) {
            self.roots = roots
            self.trustDomain = trustDomain
        }
    }

    public static var callOptions: CallOptions {
        var options = CallOptions.defaults
        options.waitForReady = false
        options.maxResponseMessageBytes = ControlAPI.maxMessageBytes
        options.maxRequestMessageBytes = ControlAPI.maxMessageBytes
        return options
    }

    /// One unary call (15 s limit); a refusal becomes a WeftError naming the method and why.
    public func unary<Request: Codable & Sendable, Reply: Codable & Sendable>(
        _ method: MethodDescriptor, _ message: Request, chain: [String], keyPEM: String, trust: Trust?
    ) async throws -> Reply {
        let options = { var o = Self.callOptions; o.timeout = .seconds(15); return o }()
        do {
            return try await withClient(chain: chain, keyPEM: keyPEM, trust: trust) { client in
                try await client.unary(request: ClientRequest(message: message), descriptor: method, serializer: JSONCoder<Request>(),
                                       deserializer: JSONCoder<Reply>(), options: options) { try $0.message }
            }
        } catch let error as RPCError {
            let code: WeftError.Code = [.permissionDenied, .unauthenticated].contains(error.code) ? .permissionDenied
                : error.code == .invalidArgument ? .invalidArgument : .agentUnavailable
            throw WeftError(code, "the control plane at \(address) answered \(method.method): \(error.message)")
        }
    }

    /// A client for one exchange (its connection lives as long as `body`). `trust` nil only
    /// for fetching the bundle that is then checked against the pin.
    public func withClient<T: Sendable>(chain: [String], keyPEM: String, trust: Trust?,
                                        _ body: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        let logger = self.logger
        let expected = try trust.map { try ControlPlane.controlIdentity(trustDomain: $0.trustDomain) }
        let rootsPEM = try trust.map { try $0.roots.map { try $0.serializeAsPEM().pemString } } ?? []
        let security = HTTP2ClientTransport.Posix.TransportSecurity.mTLS(
            certificateChain: chain.map { .bytes(Array($0.utf8), format: .pem) },
            privateKey: .bytes(Array(keyPEM.utf8), format: .pem)
        ) { tls in
            if let trust, let expected {
                tls.trustRoots = .certificates(rootsPEM.map { .bytes(Array($0.utf8), format: .pem) })
                tls.serverCertificateVerification = .noHostnameVerification
                tls.customVerificationCallback = ControlTLS.serverVerifier(roots: trust.roots, expected: expected, logger: logger)
            } else {
                tls.serverCertificateVerification = .noVerification
            }
        }
        let target: any ResolvableTarget
        if IPAddress(host) != nil {
            target = host.contains(":") ? ResolvableTargets.IPv6.ipv6(address: host, port: port) : ResolvableTargets.IPv4.ipv4(address: host, port: port)
        } else {
            target = ResolvableTargets.DNS(host: host, port: port)
        }
        let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: security, config: .defaults { c in
            c.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: true)
            c.backoff = .init(initial: .milliseconds(200), max: .seconds(2), multiplier: 2, jitter: 0.2)
        })
        return try await withGRPCClient(transport: transport) { client in try await body(client) }
    }

    /// Bundle (unverified TLS) → checked against `pin` → Join with `token` over verified TLS.
    /// Returns the trust and the node's chain.
    public func join(node: String, token: String, pin: String, key: WorkloadKey) async throws -> (Trust, JoinReply) {
        let keyPEM = try key.privateKeyPEM()
        let bootstrapCert = try key.bootstrapCertificatePEM(commonName: "weft-join-\(node)")
        let bundle: BundleReply = try await unary(ControlAPI.bundle, BundleRequest(), chain: [bootstrapCert], keyPEM: keyPEM, trust: nil)
        let roots = try PEMFiles.certificates(pem: bundle.bundlePEM, what: "the control plane's trust bundle")
        let pins = roots.compactMap { try? ChainVerifier.pin(of: $0) }
        guard pins.contains(pin.lowercased()) else {
            throw WeftError(.permissionDenied, "the control plane at \(address) presents a CA that does not match --ca-pin \(pin) (it has \(pins.joined(separator: ", ")))",
                            hint: "check the pin printed by `weft control token create`; do not join a control plane you cannot verify")
        }
        let trust = Trust(roots: roots, trustDomain: bundle.trustDomain)
        let csr = try key.csrPEM(for: try ControlPlane.nodeIdentity(trustDomain: bundle.trustDomain, node: node))
        let reply: JoinReply = try await unary(ControlAPI.join, JoinRequest(token: token, node: node, csrPEM: csr),
                                               chain: [bootstrapCert], keyPEM: keyPEM, trust: trust)
        return (trust, reply)
    }

    public static func describe(_ error: Error) -> String {
        if let rpc = error as? RPCError { return "\(rpc.code): \(rpc.message)" }
        return "\(error)"
    }
}
