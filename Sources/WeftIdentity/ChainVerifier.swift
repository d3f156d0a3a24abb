import Crypto
import Foundation
import SwiftASN1
import WeftCore
import X509

/// Certificate chain checks done by Weft itself (where the TLS stack's verification is
/// replaced by a callback, as on the control plane's port): the leaf, through the
/// intermediates the peer sent, must be signed by one of `roots`, every certificate valid
/// at `now`, intermediates must be CAs and the leaf must not be one.
public enum ChainVerifier {
    public static let maxDepth = 5

    /// Returns the leaf's SPIFFE ID when the chain is good; throws the precise reason.
    @discardableResult
    public static func verify(_ chain: [Certificate], roots: [Certificate], now: Date = Date()) throws -> SpiffeID {
        guard let leaf = chain.first else { throw WeftError(.permissionDenied, "no certificate presented") }
        try checkDates(leaf, now: now, what: "certificate")
        if let constraints = try? leaf.extensions.basicConstraints, case .isCertificateAuthority = constraints {
            throw WeftError(.permissionDenied, "certificate \(leaf.subject) is a CA certificate, not an identity")
        }
        var current = leaf
        var intermediates = Array(chain.dropFirst())
        for _ in 0..<maxDepth {
            if let root = roots.first(where: { $0.subject == current.issuer && $0.publicKey.isValidSignature(current.signature, for: current) }) {
                try checkDates(root, now: now, what: "root")
                return try SVID.identity(of: leaf)
            }
            guard let index = intermediates.firstIndex(where: {
                $0.subject == current.issuer && $0.publicKey.isValidSignature(current.signature, for: current)
            }) else {
                throw WeftError(.permissionDenied, "certificate \(current.subject) is not signed by a trusted root (issuer \(current.issuer))")
            }
            let next = intermediates.remove(at: index)
            guard let constraints = try? next.extensions.basicConstraints, case .isCertificateAuthority = constraints else {
                throw WeftError(.permissionDenied, "certificate \(next.subject) signs others but is not a CA")
            }
            try checkDates(next, now: now, what: "intermediate")
            current = next
        }
        throw WeftError(.permissionDenied, "certificate chain longer than \(maxDepth)")
    }

    /// Whether `cert` is self-issued and self-signed (an agent's bootstrap certificate).
    public static func isSelfSigned(_ cert: Certificate) -> Bool {
        cert.subject == cert.issuer && cert.publicKey.isValidSignature(cert.signature, for: cert)
    }

    /// `sha256:<hex>` of the certificate's DER: how operators pin a CA root (`--ca-pin`).
    public static func pin(of cert: Certificate) throws -> String {
        var serializer = DER.Serializer()
        try serializer.serialize(cert)
        return "sha256:" + SHA256.hash(data: serializer.serializedBytes).map { String(format: "%02x", $0) }.joined()
    }

    private static func checkDates(_ cert: Certificate, now: Date, what: String) throws {
        if now < cert.notValidBefore {
            throw WeftError(.permissionDenied, "\(what) \(cert.subject) is not valid yet (notBefore \(cert.notValidBefore))")
        }
        if now > cert.notValidAfter {
            throw WeftError(.permissionDenied, "\(what) \(cert.subject) expired at \(cert.notValidAfter)")
        }
    }
}
