import Crypto
import Foundation
import SwiftASN1
import WeftCore
import X509

/// A workload's key pair, made by the agent; only its CSR leaves the agent.
public struct WorkloadKey: Sendable {
    private let key: Certificate.PrivateKey

    public init() {
        key = Certificate.PrivateKey(P256.Signing.PrivateKey())
    }

    /// A key stored earlier with `privateKeyPEM()`.
    public init(pem: String) throws {
        do { key = try Certificate.PrivateKey(pemEncoded: pem) } catch {
            throw WeftError(.invalidArgument, "not a PEM private key: \(error)")
        }
    }

    /// A short-lived self-signed certificate for this key, naming no identity: what an
    /// agent shows the control plane while it joins (before it has a node certificate).
    public func bootstrapCertificatePEM(commonName: String, now: Date = Date()) throws -> String {
        let name = try DistinguishedName { OrganizationName("weft"); CommonName(commonName) }
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(3600),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.clientAuth])
            },
            issuerPrivateKey: key)
        return try cert.serializeAsPEM().pemString
    }

    /// A CSR asking for exactly `identity` (URI SAN), signed by this key.
    public func csrPEM(for identity: SpiffeID) throws -> String {
        let subject = try DistinguishedName { OrganizationName("weft") }
        let extensions = try Certificate.Extensions {
            SubjectAlternativeNames([.uniformResourceIdentifier(identity.description)])
        }
        let attributes = try CertificateSigningRequest.Attributes([.init(ExtensionRequest(extensions: extensions))])
        let csr = try CertificateSigningRequest(version: .v1, subject: subject, privateKey: key, attributes: attributes,
                                                signatureAlgorithm: .ecdsaWithSHA256)
        return try csr.serializeAsPEM().pemString
    }

    /// PKCS#8 PEM, for the TLS stack. Kept in memory; written only with SecretFile.
    public func privateKeyPEM() throws -> String {
        try key.serializeAsPEM().pemString
    }

    public func matches(_ certificatePEM: String) -> Bool {
        (try? Certificate(pemEncoded: certificatePEM).publicKey) == key.publicKey
    }
}

/// Reading identities out of peer certificates.
public enum SVID {
    /// The SPIFFE ID of an X.509 SVID: its one URI SAN, which must be a SPIFFE ID.
    public static func identity(ofDER der: [UInt8]) throws -> SpiffeID {
        let cert: Certificate
        do { cert = try Certificate(derEncoded: der) } catch {
            throw WeftError(.invalidArgument, "peer certificate is not valid DER X.509 (\(error))")
        }
        return try identity(of: cert)
    }

    public static func identity(of cert: Certificate) throws -> SpiffeID {
        guard let names = try? cert.extensions.subjectAlternativeNames else {
            throw WeftError(.permissionDenied, "peer certificate has no subjectAltName (not a SPIFFE SVID)")
        }
        let uris = names.compactMap { name -> String? in
            if case .uniformResourceIdentifier(let u) = name { return u }
            return nil
        }
        guard uris.count == 1 else {
            throw WeftError(.permissionDenied, "peer certificate has \(uris.count) URI SANs; an SVID has exactly one")
        }
        return try SpiffeID(parsing: uris[0])
    }
}
