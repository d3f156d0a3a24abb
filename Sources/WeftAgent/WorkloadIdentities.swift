import Foundation
import WeftCore
import WeftIdentity
import WeftProxy

/// Workload identities on this node: the embedded CA (the control plane's, when the agent
/// runs without `--control`) and the client side of it. Each workload gets its own P-256
/// key, made here; only its CSR goes to the CA, and the CA signs only the identity the
/// agent's registry says the workload has.
public struct WorkloadIdentities: Sendable {
    public let ca: CertificateAuthority
    public let lifetime: Duration

    public init(ca: CertificateAuthority, lifetime: Duration) {
        self.ca = ca
        self.lifetime = lifetime
    }

    public var trustDomain: String { ca.trustDomain }

    /// The CA as configured: the operator's files, else the agent's own root in STATE/ca.
    public static func loadCA(_ config: AgentConfiguration) throws -> CertificateAuthority {
        if let cert = config.caCertPath, let key = config.caKeyPath {
            return try CertificateAuthority.load(certPath: cert, keyPath: key, bundlePath: config.caBundlePath, trustDomain: config.trustDomain)
        }
        return try CertificateAuthority.loadOrCreate(directory: config.stateDirectory + "/ca", trustDomain: config.trustDomain)
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service account, default the service name>`.
    public func identity(of spec: WorkloadSpec) throws -> SpiffeID {
        try SpiffeID.workload(trustDomain: trustDomain, namespace: spec.namespace.rawValue,
                              serviceAccount: spec.serviceAccount ?? spec.service.rawValue)
    }

    /// A fresh key and a certificate for it.
    public func issue(for spec: WorkloadSpec, now: Date = Date()) throws -> (WorkloadCredentials, IssuedCertificate) {
        let id = try identity(of: spec)
        let key = WorkloadKey()
        let issued = try ca.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: lifetime, now: now)
        let credentials = WorkloadCredentials(identity: id, chainPEM: issued.chainPEM, keyPEM: try key.privateKeyPEM(),
                                              bundlePEM: ca.bundlePEM)
        return (credentials, issued)
    }
}
