import Foundation
import WeftCore
import WeftIdentity
import WeftControl
import WeftProxy

/// Workload identities on this node. Each workload gets its own P-256 key, made here; only
/// its CSR leaves, to whoever signs: the agent's embedded CA (no `--control`), or the control
/// plane (which signs only workloads this node registered). Either way the identity is the
/// one the registry gives the workload.
public struct WorkloadIdentities: Sendable {
    public enum Signer: Sendable {
        /// The agent's own CA, and the lifetime it gives.
        case local(CertificateAuthority, lifetime: Duration)
        /// The control plane, through the agent's link (it decides the lifetime). Issued
        /// certificates are kept in `directory`, so an agent restarted while the control plane
        /// is away still has them.
        case control(ControlLink, directory: String)
    }

    public let signer: Signer
    public let trustDomain: String

    public init(ca: CertificateAuthority, lifetime: Duration) {
        signer = .local(ca, lifetime: lifetime)
        trustDomain = ca.trustDomain
    }

    public init(control: ControlLink, trustDomain: String, directory: String) {
        signer = .control(control, directory: directory)
        self.trustDomain = trustDomain
    }

    /// The embedded CA (nil when the control plane signs).
    public var ca: CertificateAuthority? {
        if case .local(let ca, _) = signer { return ca }
        return nil
    }

    public var bundlePEM: String {
        get async {
            switch signer {
            case .local(let ca, _): return ca.bundlePEM
            case .control(let link, _): return await link.bundlePEM
            }
        }
    }

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
    public func issue(for spec: WorkloadSpec, now: Date = Date()) async throws -> (WorkloadCredentials, IssuedCertificate) {
        let id = try identity(of: spec)
        let key = WorkloadKey()
        let csr = try key.csrPEM(for: id)
        let issued: IssuedCertificate
        let bundle: String
        switch signer {
        case .local(let ca, let lifetime):
            issued = try ca.sign(csrPEM: csr, as: id, lifetime: lifetime, now: now)
            bundle = ca.bundlePEM
        case .control(let link, let directory):
            let reply: SignReply
            do {
                reply = try await link.sign(workload: spec.netns.rawValue, csrPEM: csr)
            } catch let error as WeftError where error.code == .agentUnavailable {
                // The control plane is away: a certificate issued earlier, while still valid.
                guard let stored = StoredCertificate.load(directory, netns: spec.netns.rawValue), stored.issued.identity == id,
                      stored.issued.notAfter > now.addingTimeInterval(30) else { throw error }
                return (stored.credentials, stored.issued)
            }
            guard reply.certificate.identity == id else {
                throw WeftError(.permissionDenied, "the control plane issued \(reply.certificate.identity) for \(spec.name), expected \(id)")
            }
            issued = reply.certificate
            bundle = reply.bundlePEM
            let credentials = WorkloadCredentials(identity: id, chainPEM: issued.chainPEM, keyPEM: try key.privateKeyPEM(), bundlePEM: bundle)
            try StoredCertificate(issued: issued, keyPEM: credentials.keyPEM, bundlePEM: bundle).save(directory, netns: spec.netns.rawValue)
            return (credentials, issued)
        }
        let credentials = WorkloadCredentials(identity: id, chainPEM: issued.chainPEM, keyPEM: try key.privateKeyPEM(), bundlePEM: bundle)
        return (credentials, issued)
    }

    /// Forgets a detached workload's stored certificate (control-plane mode).
    public func forget(netns: String) {
        if case .control(_, let directory) = signer { try? FileManager.default.removeItem(atPath: directory + "/" + netns + ".json") }
    }
}

/// A workload's certificate and key as the agent keeps them in `STATE/certs/NETNS.json` (0600,
/// directory 0700) when the control plane issued them.
struct StoredCertificate: Codable {
    var issued: IssuedCertificate
    var keyPEM: String
    var bundlePEM: String

    var credentials: WorkloadCredentials {
        WorkloadCredentials(identity: issued.identity, chainPEM: issued.chainPEM, keyPEM: keyPEM, bundlePEM: bundlePEM)
    }

    func save(_ directory: String, netns: String) throws {
        try SecretFile.makeDirectory(directory)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        try SecretFile.write(String(decoding: try encoder.encode(self), as: UTF8.self), to: directory + "/" + netns + ".json")
    }

    static func load(_ directory: String, netns: String) -> StoredCertificate? {
        guard let data = FileManager.default.contents(atPath: directory + "/" + netns + ".json") else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(StoredCertificate.self, from: data)
    }
}
