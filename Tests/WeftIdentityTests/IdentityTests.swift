import Foundation
import Glibc
import WeftCore
import XCTest
@testable import WeftIdentity

final class SpiffeIDTests: XCTestCase {
    func testParsesAndPrintsWorkloadIdentities() throws {
        let id = try SpiffeID(parsing: "spiffe://weft.local/ns/default/sa/payments")
        XCTAssertEqual(id.trustDomain, "weft.local")
        XCTAssertEqual(id.namespace, "default")
        XCTAssertEqual(id.serviceAccount, "payments")
        XCTAssertEqual(id.description, "spiffe://weft.local/ns/default/sa/payments")
        XCTAssertEqual(try SpiffeID.workload(trustDomain: "weft.local", namespace: "default", serviceAccount: "payments"), id)
        XCTAssertEqual(try SpiffeID(parsing: "spiffe://weft.local").segments, [])
    }

    func testRefusesWhatTheSpecForbids() {
        for bad in ["http://weft.local/ns/a", "spiffe://", "spiffe://Weft.local/x", "spiffe://weft.local:8080/x",
                    "spiffe://user@weft.local/x", "spiffe://weft.local/ns//sa", "spiffe://weft.local/ns/a/", "spiffe://weft.local/../x",
                    "spiffe://weft.local/ns/a?b", "spiffe://weft.local/ns/a#b", "spiffe://weft.local/ns/ä"] {
            XCTAssertThrowsError(try SpiffeID(parsing: bad), bad)
        }
    }
}

final class CertificateAuthorityTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "weft-ca-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func identity(_ sa: String = "payments", td: String = "weft.local") throws -> SpiffeID {
        try .workload(trustDomain: td, namespace: "default", serviceAccount: sa)
    }

    func testSelfGeneratedRootIsKeptPrivateAndReused() throws {
        let ca = try CertificateAuthority.loadOrCreate(directory: dir + "/ca", trustDomain: "weft.local")
        var st = stat()
        XCTAssertEqual(stat(dir + "/ca/root-key.pem", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(stat(dir + "/ca", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        let again = try CertificateAuthority.loadOrCreate(directory: dir + "/ca", trustDomain: "weft.local")
        XCTAssertEqual(ca.rootSerials, again.rootSerials, "a restart keeps the same root")
    }

    func testIssuesAnSVIDForTheRequestedIdentity() throws {
        let ca = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let key = WorkloadKey()
        let id = try identity()
        let now = Date()
        let issued = try ca.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: .seconds(120), now: now)
        XCTAssertEqual(issued.identity, id)
        XCTAssertEqual(issued.chainPEM.count, 1)
        XCTAssertTrue(key.matches(issued.chainPEM[0]))
        XCTAssertEqual(issued.notAfter.timeIntervalSince1970, now.addingTimeInterval(120).timeIntervalSince1970, accuracy: 1)
        XCTAssertLessThan(issued.notBefore, now)
        XCTAssertEqual(try SVID.identity(of: try .init(pemEncoded: issued.chainPEM[0])), id)
        XCTAssertGreaterThan(issued.renewAt, now)
        XCTAssertLessThan(issued.renewAt, issued.notAfter)
    }

    func testRefusesCSRsItMustNotSign() throws {
        let ca = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let key = WorkloadKey()
        let id = try identity()
        // Asks for another workload's identity.
        let other = try key.csrPEM(for: try identity("admin"))
        XCTAssertThrowsError(try ca.sign(csrPEM: other, as: id, lifetime: .seconds(3600))) { error in
            XCTAssertTrue("\(error)".contains("may only obtain \(id)"), "\(error)")
        }
        // Wrong trust domain.
        let foreign = try identity(td: "evil.example")
        XCTAssertThrowsError(try ca.sign(csrPEM: try key.csrPEM(for: foreign), as: foreign, lifetime: .seconds(3600))) { error in
            XCTAssertTrue("\(error)".contains("trust domain weft.local"), "\(error)")
        }
        // Lifetimes out of range.
        XCTAssertThrowsError(try ca.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: .seconds(10)))
        // Garbage and a tampered CSR.
        XCTAssertThrowsError(try ca.sign(csrPEM: "not a csr", as: id, lifetime: .seconds(3600))) { error in
            XCTAssertTrue("\(error)".contains("malformed CSR"), "\(error)")
        }
        var pem = try key.csrPEM(for: id)
        let lines = pem.split(separator: "\n").map(String.init)
        var body = Array(lines[2])
        body[10] = body[10] == "A" ? "B" : "A"
        pem = ([lines[0], lines[1], String(body)] + lines[3...]).joined(separator: "\n")
        XCTAssertThrowsError(try ca.sign(csrPEM: pem, as: id, lifetime: .seconds(3600)))
    }

    func testRootRotationTrustsBothRootsUntilFinished() throws {
        let before = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let newSerial = try CertificateAuthority.beginRotation(directory: dir, trustDomain: "weft.local")
        let during = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        XCTAssertEqual(Set(during.rootSerials), Set(before.rootSerials + [newSerial]), "old and new root trusted")
        var st = stat()
        XCTAssertEqual(stat(dir + "/root-key.pem", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "the new key is private too")
        try CertificateAuthority.finishRotation(directory: dir)
        let after = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        XCTAssertEqual(after.rootSerials, [newSerial])
        XCTAssertThrowsError(try CertificateAuthority.finishRotation(directory: dir))
    }

    func testOperatorSuppliedCAMustKeepItsKeyPrivate() throws {
        let (cert, key) = try CertificateAuthority.generateRoot(trustDomain: "corp.example")
        try SecretFile.makeDirectory(dir)
        try SecretFile.write(try cert.serializeAsPEM().pemString, to: dir + "/ca.pem", mode: 0o644)
        try SecretFile.write(try key.serializeAsPEM().pemString, to: dir + "/ca.key", mode: 0o644)
        XCTAssertThrowsError(try CertificateAuthority.load(certPath: dir + "/ca.pem", keyPath: dir + "/ca.key", bundlePath: nil, trustDomain: "corp.example")) { error in
            XCTAssertTrue("\(error)".contains("readable by group or others"), "\(error)")
        }
        chmod(dir + "/ca.key", 0o600)
        let ca = try CertificateAuthority.load(certPath: dir + "/ca.pem", keyPath: dir + "/ca.key", bundlePath: nil, trustDomain: "corp.example")
        XCTAssertEqual(ca.roots, [cert])
        // The key must belong to the certificate.
        let (_, otherKey) = try CertificateAuthority.generateRoot(trustDomain: "corp.example")
        try SecretFile.write(try otherKey.serializeAsPEM().pemString, to: dir + "/other.key")
        XCTAssertThrowsError(try CertificateAuthority.load(certPath: dir + "/ca.pem", keyPath: dir + "/other.key", bundlePath: nil, trustDomain: "corp.example"))
    }
}

/// An independent validator: openssl must accept the issued SVID against the bundle, for
/// both TLS client and server use, and see the SPIFFE ID as the URI SAN.
final class OpenSSLAcceptsSVIDTests: XCTestCase {
    func testOpenSSLVerifiesTheSVIDAgainstTheBundle() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else {
            throw XCTSkip("openssl not installed (scripts/setup-deps installs it)")
        }
        let dir = NSTemporaryDirectory() + "weft-ossl-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let id = try SpiffeID.workload(trustDomain: "weft.local", namespace: "shop", serviceAccount: "cart")
        let issued = try ca.sign(csrPEM: try WorkloadKey().csrPEM(for: id), as: id, lifetime: .seconds(3600))
        try ca.bundlePEM.write(toFile: dir + "/bundle.pem", atomically: true, encoding: .utf8)
        try issued.chainPEM.joined(separator: "\n").write(toFile: dir + "/svid.pem", atomically: true, encoding: .utf8)
        for purpose in ["sslclient", "sslserver"] {
            let out = try run("/usr/bin/openssl", ["verify", "-purpose", purpose, "-CAfile", dir + "/bundle.pem", dir + "/svid.pem"])
            XCTAssertEqual(out.status, 0, out.output)
            XCTAssertTrue(out.output.contains(": OK"), out.output)
        }
        let text = try run("/usr/bin/openssl", ["x509", "-noout", "-ext", "subjectAltName,basicConstraints", "-serial", "-in", dir + "/svid.pem"])
        XCTAssertTrue(text.output.contains("URI:spiffe://weft.local/ns/shop/sa/cart"), text.output)
        XCTAssertTrue(text.output.contains("CA:FALSE"), text.output)
        XCTAssertTrue(text.output.contains("serial=\(issued.serial)"), text.output)
        // A certificate from another CA is not accepted against this bundle.
        let rogue = try CertificateAuthority.loadOrCreate(directory: dir + "/rogue", trustDomain: "weft.local")
        let forged = try rogue.sign(csrPEM: try WorkloadKey().csrPEM(for: id), as: id, lifetime: .seconds(3600))
        try forged.chainPEM.joined(separator: "\n").write(toFile: dir + "/forged.pem", atomically: true, encoding: .utf8)
        XCTAssertNotEqual(try run("/usr/bin/openssl", ["verify", "-CAfile", dir + "/bundle.pem", dir + "/forged.pem"]).status, 0)
    }

    private func run(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
