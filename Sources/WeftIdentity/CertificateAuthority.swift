import Glibc
import Crypto
import Foundation
import SwiftASN1
import WeftCore
import X509

/// A certificate the CA issued: the leaf first, then the intermediates up to (not
/// including) the root, in PEM. The private key is not here: it never left the requester.
public struct IssuedCertificate: Sendable, Codable, Equatable {
    public var identity: SpiffeID
    public var chainPEM: [String]
    /// Hex, as `openssl x509 -serial` prints it.
    public var serial: String
    public var notBefore: Date
    public var notAfter: Date

    /// Renew at half life (SPIFFE and Istio practice): a certificate never gets close to
    /// expiring while its holder is healthy, and a CA outage of up to half a lifetime is
    /// invisible.
    public var renewAt: Date { notBefore.addingTimeInterval(notAfter.timeIntervalSince(notBefore) / 2) }
}

/// The mesh's certificate authority (ECDSA P-256): signs workload certificates (X.509
/// SVIDs) from CSRs. Either self-generated on first start (root key kept with 0600
/// permissions in its directory), or an operator-supplied root or intermediate.
public final class CertificateAuthority: Sendable {
    public let trustDomain: String
    private let signingCertificate: Certificate
    private let signingKey: Certificate.PrivateKey
    /// Certificates between the signing certificate and a root, signing certificate first
    /// (empty when the signing certificate is itself a root).
    private let intermediates: [Certificate]
    /// The roots workloads trust: the CA's own root plus any other configured (during a
    /// root rotation both old and new are trusted).
    public let roots: [Certificate]
    public static let minimumLifetime: Duration = .seconds(60)
    public static let maximumLifetime: Duration = .seconds(90 * 24 * 3600)
    /// Issued certificates start this much in the past, so a peer whose clock is a little
    /// behind does not see them as not yet valid.
    public static let backdate: TimeInterval = 30

    init(trustDomain: String, signingCertificate: Certificate, signingKey: Certificate.PrivateKey,
         intermediates: [Certificate], roots: [Certificate]) {
        self.trustDomain = trustDomain
        self.signingCertificate = signingCertificate
        self.signingKey = signingKey
        self.intermediates = intermediates
        self.roots = roots
    }

    public var bundlePEM: String {
        roots.compactMap { try? $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
    }

    public var rootSerials: [String] { roots.map { Self.hex($0.serialNumber) } }

    // MARK: - issuing

    /// Signs `csrPEM` as `identity`, valid for `lifetime` from `now` (backdated slightly,
    /// and never past the CA's own expiry). The CSR must be signed by its key (proof of
    /// possession), use ECDSA P-256 or P-384, and ask for no name other than `identity`.
    public func sign(csrPEM: String, as identity: SpiffeID, lifetime: Duration, now: Date = Date()) throws -> IssuedCertificate {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: csrPEM)
        } catch {
            throw WeftError(.invalidArgument, "malformed CSR for \(identity): \(error)")
        }
        return try sign(csr, as: identity, lifetime: lifetime, now: now)
    }

    public func sign(_ csr: CertificateSigningRequest, as identity: SpiffeID, lifetime: Duration, now: Date = Date()) throws -> IssuedCertificate {
        guard identity.trustDomain == trustDomain else {
            throw WeftError(.permissionDenied, "CSR for \(identity) refused: this CA signs only for trust domain \(trustDomain)")
        }
        guard lifetime >= Self.minimumLifetime, lifetime <= Self.maximumLifetime else {
            throw WeftError(.invalidArgument, "certificate lifetime \(lifetime) refused: must be between 1 minute and 90 days")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw WeftError(.permissionDenied, "CSR for \(identity) refused: its signature does not match its public key (no proof of possession)")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil || P384.Signing.PublicKey(csr.publicKey) != nil else {
            throw WeftError(.invalidArgument, "CSR for \(identity) refused: key must be ECDSA P-256 or P-384")
        }
        if let requested = try? csr.attributes.extensionRequest?.extensions.subjectAlternativeNames {
            for name in requested {
                guard case .uniformResourceIdentifier(let uri) = name, uri == identity.description else {
                    throw WeftError(.permissionDenied, "CSR refused: it asks for \(name), but its requester may only obtain \(identity)")
                }
            }
        }
        let notBefore = now.addingTimeInterval(-Self.backdate)
        let caExpiry = signingCertificate.notValidAfter
        let notAfter = min(now.addingTimeInterval(TimeInterval(lifetime.components.seconds)), caExpiry)
        guard notAfter > now else {
            throw WeftError(.system, "the CA certificate expired at \(caExpiry); it cannot issue certificates", hint: "rotate the CA")
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true, keyAgreement: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectAlternativeNames([.uniformResourceIdentifier(identity.description)])
            SubjectKeyIdentifier(hash: csr.publicKey)
            if let ski = try signingCertificate.extensions.subjectKeyIdentifier {
                AuthorityKeyIdentifier(keyIdentifier: ski.keyIdentifier)
            }
        }
        let subject = try DistinguishedName {
            OrganizationName("weft")
            CommonName(identity.serviceAccount.map { "\($0).\(identity.namespace ?? "")" } ?? identity.description)
        }
        let leaf = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: csr.publicKey,
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: signingCertificate.subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions, issuerPrivateKey: signingKey)
        let chain = try ([leaf] + intermediates).map { try $0.serializeAsPEM().pemString }
        return IssuedCertificate(identity: identity, chainPEM: chain, serial: Self.hex(leaf.serialNumber),
                                 notBefore: leaf.notValidBefore, notAfter: leaf.notValidAfter)
    }

    static func hex(_ serial: Certificate.SerialNumber) -> String {
        serial.bytes.map { String(format: "%02X", $0) }.joined()
    }

    // MARK: - creating and loading

    /// Makes a new self-signed root for `trustDomain`, valid for `years`.
    public static func generateRoot(trustDomain: String, years: Int = 10, now: Date = Date()) throws -> (Certificate, Certificate.PrivateKey) {
        try SpiffeID.checkTrustDomain(trustDomain)
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            OrganizationName("weft")
            CommonName("weft root CA \(trustDomain)")
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
            Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            SubjectKeyIdentifier(hash: key.publicKey)
            SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://\(trustDomain)")])
        }
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-backdate), notValidAfter: now.addingTimeInterval(TimeInterval(years) * 365 * 86400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions, issuerPrivateKey: key)
        return (cert, key)
    }

    /// The agent's embedded CA: `<directory>/root-cert.pem` and `root-key.pem` (0600, in a
    /// 0700 directory), made on first start. `bundle.pem` there, if present, lists further
    /// roots to trust (a previous root during a rotation).
    public static func loadOrCreate(directory: String, trustDomain: String, now: Date = Date()) throws -> CertificateAuthority {
        let certPath = directory + "/root-cert.pem"
        let keyPath = directory + "/root-key.pem"
        let fm = FileManager.default
        if !fm.fileExists(atPath: certPath) {
            try SecretFile.makeDirectory(directory)
            let (cert, key) = try generateRoot(trustDomain: trustDomain, now: now)
            try SecretFile.write(try key.serializeAsPEM().pemString, to: keyPath)
            try SecretFile.write(try cert.serializeAsPEM().pemString, to: certPath, mode: 0o644)
        }
        let extra = fm.fileExists(atPath: directory + "/bundle.pem") ? directory + "/bundle.pem" : nil
        return try load(certPath: certPath, keyPath: keyPath, bundlePath: extra, trustDomain: trustDomain)
    }

    /// Starts a root rotation of the self-generated CA in `directory`: the current root joins
    /// `bundle.pem` (still trusted), a new root replaces it (signs from now on). Returns the
    /// new root's serial.
    public static func beginRotation(directory: String, trustDomain: String, now: Date = Date()) throws -> String {
        let certPath = directory + "/root-cert.pem", bundlePath = directory + "/bundle.pem"
        let old = try PEMFiles.certificates(at: certPath)
        var trusted = FileManager.default.fileExists(atPath: bundlePath) ? try PEMFiles.certificates(at: bundlePath) : []
        for cert in old where !trusted.contains(cert) { trusted.append(cert) }
        let (cert, key) = try generateRoot(trustDomain: trustDomain, now: now)
        // Order matters for a crash in between: first trust the old root from the bundle,
        // then switch the signing root (key first, so the pair never mismatches for long).
        try SecretFile.write(try trusted.map { try $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n", to: bundlePath, mode: 0o644)
        try SecretFile.write(try key.serializeAsPEM().pemString, to: directory + "/root-key.pem")
        try SecretFile.write(try cert.serializeAsPEM().pemString, to: certPath, mode: 0o644)
        return hex(cert.serialNumber)
    }

    /// Ends a rotation: the previous roots are no longer trusted.
    public static func finishRotation(directory: String) throws {
        let bundlePath = directory + "/bundle.pem"
        guard FileManager.default.fileExists(atPath: bundlePath) else {
            throw WeftError(.notFound, "no rotation in progress (no \(bundlePath))", hint: "start one with `weft ca rotate`")
        }
        guard unlink(bundlePath) == 0 else {
            throw WeftError(.system, "cannot remove \(bundlePath): \(String(cString: strerror(errno)))")
        }
    }

    /// An operator-supplied CA: `certPath` holds the signing certificate, then any
    /// intermediates, optionally ending with the root; `keyPath` its private key (must not be
    /// readable by group or others); `bundlePath` the roots to trust (default: the
    /// self-signed certificate at the end of `certPath`).
    public static func load(certPath: String, keyPath: String, bundlePath: String?, trustDomain: String) throws -> CertificateAuthority {
        try SpiffeID.checkTrustDomain(trustDomain)
        let chain = try PEMFiles.certificates(at: certPath)
        guard let signing = chain.first else { throw WeftError(.invalidArgument, "\(certPath): no certificate in it") }
        try SecretFile.checkPrivate(keyPath)
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: try String(contentsOfFile: keyPath, encoding: .utf8))
        } catch let error as WeftError {
            throw error
        } catch {
            throw WeftError(.invalidArgument, "\(keyPath): not a PEM private key (\(error))")
        }
        guard key.publicKey == signing.publicKey else {
            throw WeftError(.invalidArgument, "\(keyPath) is not the key of the first certificate in \(certPath)")
        }
        guard let constraints = try? signing.extensions.basicConstraints, case .isCertificateAuthority = constraints else {
            throw WeftError(.invalidArgument, "\(certPath): the first certificate is not a CA certificate (basicConstraints CA:TRUE missing)")
        }
        if let usage = try? signing.extensions.keyUsage, !usage.keyCertSign {
            throw WeftError(.invalidArgument, "\(certPath): the first certificate may not sign certificates (keyUsage lacks keyCertSign)")
        }
        var roots: [Certificate] = []
        var intermediates = chain
        if let last = chain.last, last.issuer == last.subject {
            roots.append(last)
            intermediates.removeLast()
        }
        if let bundlePath {
            for root in try PEMFiles.certificates(at: bundlePath) where !roots.contains(root) { roots.append(root) }
        }
        guard !roots.isEmpty else {
            throw WeftError(.invalidArgument, "no root to trust: \(certPath) does not end with a self-signed root",
                            hint: "pass the root with --ca-bundle")
        }
        if signing.notValidAfter < Date() {
            throw WeftError(.invalidArgument, "\(certPath): the CA certificate expired at \(signing.notValidAfter)")
        }
        return CertificateAuthority(trustDomain: trustDomain, signingCertificate: signing, signingKey: key,
                                    intermediates: intermediates, roots: roots)
    }
}

public enum PEMFiles {
    /// Every certificate in a PEM text (a bundle, a chain).
    public static func certificates(pem text: String, what: String) throws -> [Certificate] {
        do {
            let list = try PEMDocument.parseMultiple(pemString: text).map { try Certificate(pemDocument: $0) }
            guard !list.isEmpty else { throw WeftError(.invalidArgument, "\(what): no certificate") }
            return list
        } catch let error as WeftError {
            throw error
        } catch {
            throw WeftError(.invalidArgument, "\(what): not PEM certificates (\(error))")
        }
    }

    public static func certificates(at path: String) throws -> [Certificate] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw WeftError(.notFound, "cannot read \(path): \(error.localizedDescription)")
        }
        do {
            return try PEMDocument.parseMultiple(pemString: text).map { try Certificate(pemDocument: $0) }
        } catch {
            throw WeftError(.invalidArgument, "\(path): not PEM certificates (\(error))")
        }
    }
}
