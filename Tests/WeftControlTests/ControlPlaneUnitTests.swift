import Foundation
import Logging
import NIOSSL
import WeftConfig
import WeftCore
import WeftIdentity
import X509
import XCTest
@testable import WeftControl

final class JoinTokenTests: XCTestCase {
    func testTokensAreCheckedByHashAndExpire() throws {
        var tokens = JoinTokens()
        let now = Date()
        let (token, expires) = try tokens.create(ttl: 60, now: now)
        XCTAssertTrue(token.hasPrefix("weft-"))
        XCTAssertEqual(expires, now.addingTimeInterval(60))
        XCTAssertNoThrow(try tokens.check(token, now: now.addingTimeInterval(30)))
        XCTAssertThrowsError(try tokens.check(token, now: now.addingTimeInterval(61))) {
            XCTAssertTrue("\($0)".contains("join token expired"), "\($0)")
        }
        XCTAssertThrowsError(try tokens.check("weft-guess", now: now)) { XCTAssertTrue("\($0)".contains("unknown join token")) }
        XCTAssertFalse(tokens.records.contains { $0.sha256.contains(token) })
        XCTAssertThrowsError(try tokens.create(ttl: 0))
        XCTAssertThrowsError(try tokens.create(ttl: 8 * 24 * 3600))
        // Expired records are dropped when the next token is made.
        _ = try tokens.create(ttl: 60, now: now.addingTimeInterval(120))
        XCTAssertEqual(tokens.records.count, 1)
    }

    func testTokensPersistWithTightPermissions() throws {
        let dir = NSTemporaryDirectory() + "weft-tokens-\(UUID().uuidString)"
        try SecretFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var tokens = JoinTokens()
        let (token, _) = try tokens.create(ttl: 600)
        try tokens.save(to: dir + "/tokens.json")
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: dir + "/tokens.json")[.posixPermissions] as? Int, 0o600)
        XCTAssertFalse(try String(contentsOfFile: dir + "/tokens.json", encoding: .utf8).contains(token))
        XCTAssertNoThrow(try JoinTokens.load(from: dir + "/tokens.json").check(token))
        try "garbage".write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try JoinTokens.load(from: dir + "/bad.json")) { XCTAssertTrue("\($0)".contains("unreadable")) }
    }
}

final class SyncPolicyTests: XCTestCase {
    func testEmptySnapshotFromAnotherStoreIsRefusedWhileServingConfig() {
        let empty = ConfigSnapshot(version: 0, documents: [], store: "new")
        XCTAssertEqual(SnapshotPolicy.decide(followedStore: nil, currentResources: 0, snapshot: empty), .apply)
        XCTAssertEqual(SnapshotPolicy.decide(followedStore: "old", currentResources: 0, snapshot: empty), .apply)
        guard case .refuse(let why) = SnapshotPolicy.decide(followedStore: "old", currentResources: 3, snapshot: empty) else {
            return XCTFail("an empty store must not wipe a serving agent's config")
        }
        XCTAssertTrue(why.contains("3 resource(s)") && why.contains("old"), why)
        // Same store: deleting everything is a legitimate change.
        XCTAssertEqual(SnapshotPolicy.decide(followedStore: "new", currentResources: 3, snapshot: empty), .apply)
        let full = ConfigSnapshot(version: 1, documents: ["x"], store: "new")
        XCTAssertEqual(SnapshotPolicy.decide(followedStore: "old", currentResources: 3, snapshot: full), .apply)
    }

    func testBackoffGrowsIsCappedAndJittered() {
        let b = Backoff(base: .milliseconds(500), cap: .seconds(30))
        XCTAssertEqual(b.ceiling(attempt: 0), .milliseconds(500))
        XCTAssertEqual(b.ceiling(attempt: 3), .seconds(4))
        XCTAssertEqual(b.ceiling(attempt: 10), .seconds(30))
        XCTAssertEqual(b.ceiling(attempt: 1000), .seconds(30))
        XCTAssertEqual(b.delay(attempt: 3, random: 0.5), .seconds(2))
        XCTAssertEqual(b.delay(attempt: 3, random: 0), .milliseconds(50), "never a zero delay (no busy loop)")
        let delays = Set((0..<50).map { _ in b.delay(attempt: 5) })
        XCTAssertGreaterThan(delays.count, 10, "jittered")
        XCTAssertTrue(delays.allSatisfy { $0 <= .seconds(16) })
    }
}

final class ControlPlaneStateTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "weft-cp-\(UUID().uuidString)"
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    static let vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: pay, namespace: default}
    spec:
      hosts: [payments]
      http:
      - route:
        - destination: {host: payments}
    """

    func plane() throws -> ControlPlane {
        try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", logger: Logger(label: "test"))
    }

    func testJoinNeedsATokenOrTheSameNodesCertificate() async throws {
        let p = try plane()
        let token = try await p.createToken(ttl: 60)
        let roots0 = await p.roots[0]
        XCTAssertEqual(token.caPin, try ChainVerifier.pin(of: roots0))
        let key = WorkloadKey()
        let id = try ControlPlane.nodeIdentity(trustDomain: "weft.local", node: "n1")
        let reply = try await p.join(JoinRequest(token: token.token, node: "n1", csrPEM: try key.csrPEM(for: id)),
                                     authenticatedNode: nil, address: nil)
        XCTAssertEqual(reply.identity, "spiffe://weft.local/weft-system/node/n1")
        let chain = try PEMFiles.certificates(pem: reply.chainPEM.joined(separator: "\n"), what: "chain")
        let roots = try PEMFiles.certificates(pem: reply.bundlePEM, what: "bundle")
        XCTAssertEqual(try ChainVerifier.verify(chain, roots: roots), id)
        let node = try await p.node(of: chain)
        XCTAssertEqual(node, "n1")

        // Renewal: the node's own certificate is the credential; another node's is not.
        let renewed = try await p.join(JoinRequest(token: "", node: "n1", csrPEM: try WorkloadKey().csrPEM(for: id)),
                                       authenticatedNode: "n1", address: nil)
        XCTAssertEqual(renewed.identity, id.description)
        do {
            _ = try await p.join(JoinRequest(token: "", node: "n2", csrPEM: try WorkloadKey().csrPEM(for: id)), authenticatedNode: "n1", address: nil)
            XCTFail("n1 must not obtain n2's certificate")
        } catch { XCTAssertTrue("\(error)".contains("only its own"), "\(error)") }
        // No token, bad token, bad name, a CSR for another identity.
        for (request, expected) in [
            (JoinRequest(token: "", node: "n3", csrPEM: try key.csrPEM(for: id)), "unknown join token"),
            (JoinRequest(token: token.token, node: "Bad Name", csrPEM: try key.csrPEM(for: id)), "node name"),
            (JoinRequest(token: token.token, node: "n3", csrPEM: try key.csrPEM(for: id)), "may only obtain"),
            (JoinRequest(token: token.token, node: "n3", csrPEM: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"), "malformed CSR"),
        ] {
            do {
                _ = try await p.join(request, authenticatedNode: nil, address: nil)
                XCTFail("accepted \(request.node)")
            } catch { XCTAssertTrue("\(error)".contains(expected), "\(error) should say \(expected)") }
        }
        // A bootstrap (self-signed) certificate names no node; a certificate from another CA fails.
        let bootstrap = try Certificate(pemEncoded: try key.bootstrapCertificatePEM(commonName: "weft-join-n1"))
        let none = try await p.node(of: [bootstrap])
        XCTAssertNil(none)
        let otherCA = try CertificateAuthority.loadOrCreate(directory: dir + "-other", trustDomain: "weft.local")
        defer { try? FileManager.default.removeItem(atPath: dir + "-other") }
        let foreign = try otherCA.sign(csrPEM: try key.csrPEM(for: id), as: id, lifetime: .seconds(3600))
        do {
            _ = try await p.node(of: try PEMFiles.certificates(pem: foreign.chainPEM.joined(separator: "\n"), what: "x"))
            XCTFail("a node certificate from another CA was accepted")
        } catch { XCTAssertTrue("\(error)".contains("not signed by a trusted root"), "\(error)") }
        await p.shutdown()
    }

    func testAConfigTooLargeForOneSnapshotIsRefusedWhole() async throws {
        let p = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", maxConfigBytes: 2048, logger: Logger(label: "test"))
        let many = (0..<20).map { Self.vs.replacingOccurrences(of: "name: pay", with: "name: pay\($0)")
                                    .replacingOccurrences(of: "payments", with: "payments\($0)") }.joined(separator: "\n---\n")
        let reply = await p.applyConfig([ConfigFile(name: "many.yaml", content: many)])
        XCTAssertTrue(reply.rejected)
        XCTAssertTrue(reply.diagnostics.joined().contains("KiB a snapshot may carry to agents; nothing was applied"), "\(reply.diagnostics)")
        let version = await p.snapshot.version
        XCTAssertEqual(version, 0)
        let small = await p.applyConfig([ConfigFile(name: "vs.yaml", content: Self.vs)])
        XCTAssertFalse(small.rejected)
        await p.shutdown()
    }

    func testSubscribersGetEverySnapshotAndAcksAreTracked() async throws {
        let p = try plane()
        let (id, stream) = await p.subscribe(node: "n1", address: "ipv4:10.0.0.1:1234")
        var it = stream.makeAsyncIterator()
        let first = await it.next()
        XCTAssertEqual(first?.version, 0)
        XCTAssertEqual(first?.documents, [])
        let applied = await p.applyConfig([ConfigFile(name: "vs.yaml", content: Self.vs)])
        XCTAssertFalse(applied.rejected, "\(applied.diagnostics)")
        let second = await it.next()
        XCTAssertEqual(second?.version, 1)
        XCTAssertEqual(second?.documents.count, 1)
        // A rejected apply publishes nothing and changes nothing.
        let bad = await p.applyConfig([ConfigFile(name: "bad.yaml", content: "kind: VirtualService\nspec: [")])
        XCTAssertTrue(bad.rejected)
        let v = await p.snapshot.version
        XCTAssertEqual(v, 1)

        await p.received(AgentMessage(hello: .init(agentVersion: "0.1.0", appliedVersion: 0)), from: "n1")
        await p.received(AgentMessage(nack: 1, reason: "cannot persist"), from: "n1")
        var statuses = await p.agentStatuses()
        var status = try XCTUnwrap(statuses.first)
        XCTAssertEqual(status.nackedVersion, 1)
        XCTAssertEqual(status.nackReason, "cannot persist")
        XCTAssertFalse(status.inSync)
        XCTAssertTrue(status.connected)
        await p.received(AgentMessage(ack: 1), from: "n1")
        statuses = await p.agentStatuses()
        status = try XCTUnwrap(statuses.first)
        XCTAssertTrue(status.inSync)
        XCTAssertNil(status.nackedVersion, "an ACK of that version clears the NACK")
        await p.unsubscribe(id)
        statuses = await p.agentStatuses()
        let afterwards = try XCTUnwrap(statuses.first)
        XCTAssertFalse(afterwards.connected)

        // A restart keeps the version and the store identity (agents never see them go back).
        let store = await p.storeID
        await p.shutdown()  // flushes the agent records (written at most once a second otherwise)
        let again = try plane()
        let againVersion = await again.snapshot.version, againStore = await again.storeID
        let nodes = await again.agentStatuses().map(\.node)
        XCTAssertEqual(againVersion, 1)
        XCTAssertEqual(againStore, store)
        XCTAssertEqual(nodes, ["n1"])
    }
}

final class ChainVerifierTests: XCTestCase {
    func testChainsAreCheckedToARootWithDates() throws {
        let dir = NSTemporaryDirectory() + "weft-chain-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try CertificateAuthority.loadOrCreate(directory: dir, trustDomain: "weft.local")
        let id = try SpiffeID.workload(trustDomain: "weft.local", namespace: "default", serviceAccount: "web")
        let now = Date()
        let issued = try ca.sign(csrPEM: try WorkloadKey().csrPEM(for: id), as: id, lifetime: .seconds(120), now: now)
        let chain = try PEMFiles.certificates(pem: issued.chainPEM.joined(separator: "\n"), what: "chain")
        XCTAssertEqual(try ChainVerifier.verify(chain, roots: ca.roots, now: now), id)
        XCTAssertThrowsError(try ChainVerifier.verify(chain, roots: ca.roots, now: now.addingTimeInterval(600))) {
            XCTAssertTrue("\($0)".contains("expired"))
        }
        XCTAssertThrowsError(try ChainVerifier.verify(chain, roots: ca.roots, now: now.addingTimeInterval(-600))) {
            XCTAssertTrue("\($0)".contains("not valid yet"))
        }
        XCTAssertThrowsError(try ChainVerifier.verify(ca.roots, roots: ca.roots, now: now)) { XCTAssertTrue("\($0)".contains("CA certificate")) }
        XCTAssertThrowsError(try ChainVerifier.verify([], roots: ca.roots))
        XCTAssertFalse(ChainVerifier.isSelfSigned(chain[0]))
        XCTAssertTrue(ChainVerifier.isSelfSigned(ca.roots[0]))
        let pin = try ChainVerifier.pin(of: ca.roots[0])
        XCTAssertTrue(pin.hasPrefix("sha256:") && pin.count == 7 + 64)
    }
}

final class WorkloadSigningTests: XCTestCase {
    func testNodesGetCertificatesOnlyForTheirOwnRegisteredWorkloads() async throws {
        let dir = NSTemporaryDirectory() + "weft-sign-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", workloadCertificateLifetime: .seconds(600), logger: Logger(label: "t"))
        var web = WorkloadSpec(name: "web-1", netns: try NetnsName("web-1"), service: try ServiceName("web"), ports: [], labels: [:], podIP: nil)
        web.serviceAccount = "frontend"
        _ = try await p.register([web], node: "n1")
        let id = try SpiffeID.workload(trustDomain: "weft.local", namespace: "default", serviceAccount: "frontend")
        let now = Date()
        let reply = try await p.sign(SignRequest(workload: "web-1", csrPEM: try WorkloadKey().csrPEM(for: id)), node: "n1", now: now)
        XCTAssertEqual(reply.certificate.identity, id)
        XCTAssertEqual(reply.certificate.notAfter.timeIntervalSince(now), 600, accuracy: 1, "the control plane's lifetime")
        let roots = await p.roots
        XCTAssertEqual(try ChainVerifier.verify(try PEMFiles.certificates(pem: reply.certificate.chainPEM.joined(separator: "\n"), what: "c"), roots: roots), id)

        for (node, workload, expected) in [("n2", "web-1", "attached to node n1, not to n2"), ("n1", "db-1", "has not registered a workload db-1")] {
            do {
                _ = try await p.sign(SignRequest(workload: workload, csrPEM: try WorkloadKey().csrPEM(for: id)), node: node)
                XCTFail("\(node) got a certificate for \(workload)")
            } catch { XCTAssertTrue("\(error)".contains(expected), "\(error)") }
        }
        // A CSR asking for another identity than the registration gives is refused.
        let other = try SpiffeID.workload(trustDomain: "weft.local", namespace: "default", serviceAccount: "admin")
        do {
            _ = try await p.sign(SignRequest(workload: "web-1", csrPEM: try WorkloadKey().csrPEM(for: other)), node: "n1")
            XCTFail("signed a CSR for another identity")
        } catch { XCTAssertTrue("\(error)".contains("may only obtain"), "\(error)") }
        // Registration replaces: once web-1 is gone from n1's list, no more certificates for it.
        _ = try await p.register([], node: "n1")
        do {
            _ = try await p.sign(SignRequest(workload: "web-1", csrPEM: try WorkloadKey().csrPEM(for: id)), node: "n1")
            XCTFail("signed for a deregistered workload")
        } catch { XCTAssertTrue("\(error)".contains("has not registered"), "\(error)") }
        await p.shutdown()
    }
}

final class RegistryTests: XCTestCase {
    func testRegistrationsAreStreamedAndPodBlocksMustNotOverlap() async throws {
        let dir = NSTemporaryDirectory() + "weft-reg-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", logger: Logger(label: "t"))
        let (_, stream) = await p.subscribe(node: "n2", address: nil)
        var it = stream.makeAsyncIterator()
        let first = await it.next()
        XCTAssertEqual(first?.nodes, [])
        let web = WorkloadSpec(name: "web-1", netns: try NetnsName("web-1"), service: try ServiceName("web"), ports: [], labels: [:],
                               podIP: IPAddress("10.1.1.2"))
        let route = NodeRoute(address: IPAddress("192.168.0.1")!, podCIDR: CIDR("10.1.1.0/24")!)
        _ = try await p.register([web], route: route, node: "n1")
        let second = await it.next()
        XCTAssertEqual(second?.version, 0, "the registry travels at the same config version")
        XCTAssertEqual(second?.nodes, [NodeWorkloads(node: "n1", route: route, workloads: [web])])
        // Another node claiming an overlapping pod block is refused; the registry is unchanged.
        do {
            _ = try await p.register([], route: NodeRoute(address: IPAddress("192.168.0.2")!, podCIDR: CIDR("10.1.0.0/16")!), node: "n3")
            XCTFail("overlapping pod block accepted")
        } catch { XCTAssertTrue("\(error)".contains("overlaps node n1's 10.1.1.0/24"), "\(error)") }
        // A node claiming an address outside its own block (another node's pod) is refused.
        var impostor = web
        impostor.name = "fake"
        do {
            _ = try await p.register([impostor], route: NodeRoute(address: IPAddress("192.168.0.2")!, podCIDR: CIDR("10.2.0.0/24")!), node: "n2")
            XCTFail("a pod address outside the node's block was accepted")
        } catch { XCTAssertTrue("\(error)".contains("outside its pod block 10.2.0.0/24: fake at 10.1.1.2"), "\(error)") }
        let registry = await p.registry
        XCTAssertEqual(registry.map(\.node), ["n1"])
        // An oversized registration is refused whole.
        let flood = try (0...ControlPlane.maxWorkloadsPerNode).map {
            WorkloadSpec(name: "w\($0)", netns: try NetnsName("w\($0)"), service: try ServiceName("flood"), ports: [], labels: [:], podIP: nil)
        }
        do {
            _ = try await p.register(flood, node: "n4")
            XCTFail("an oversized registration was accepted")
        } catch { XCTAssertTrue("\(error)".contains("at most 10000 per node"), "\(error)") }
        // The registry survives a restart of the control plane.
        await p.shutdown()
        let again = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", logger: Logger(label: "t"))
        let restored = await again.registry
        XCTAssertEqual(restored, registry)
        await again.shutdown()
    }
}

final class ServingCertificateTests: XCTestCase {
    func testAReplacedCertificateIsWhatTheNextHandshakeGets() async throws {
        let dir = NSTemporaryDirectory() + "weft-serving-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try ControlPlane(stateDirectory: dir, trustDomain: "weft.local", logger: Logger(label: "t"))
        let k1 = WorkloadKey(), k2 = WorkloadKey()
        let first = try await p.issueServingCertificate(key: k1, lifetime: .seconds(120))
        let reloader = try ServingCertificate(issued: first, keyPEM: try k1.privateKeyPEM())
        XCTAssertFalse(ServingCertificate.due(first, now: Date()))
        XCTAssertTrue(ServingCertificate.due(first, now: Date().addingTimeInterval(61)), "renewed at half life")
        let second = try await p.issueServingCertificate(key: k2, lifetime: .seconds(120))
        try reloader.replace(with: second, keyPEM: try k2.privateKeyPEM())
        XCTAssertEqual(reloader.issued.serial, second.serial)
        guard case .certificate(let leaf)? = reloader.sslContextConfigurationOverride.certificateChain?.first else {
            return XCTFail("no chain in the override")
        }
        let served = try Certificate(derEncoded: try leaf.toDERBytes())
        XCTAssertEqual(try SVID.identity(of: served).description, "spiffe://weft.local/weft-system/control")
        XCTAssertEqual(served.publicKey, try Certificate(pemEncoded: second.chainPEM[0]).publicKey)
        await p.shutdown()
    }
}
