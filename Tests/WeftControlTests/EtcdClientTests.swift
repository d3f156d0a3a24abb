import Foundation
import NIOPosix
import WeftCore
import XCTest
@testable import WeftControl

/// Against a real etcd (one member on loopback, its own data directory), started and stopped
/// by the test.
final class EtcdClientTests: XCTestCase {
    func testParseStoreURLs() throws {
        XCTAssertEqual(try EtcdClient.parse("etcd://h1:2379,h2,10.0.0.3:2380").map(\.description), ["h1:2379", "h2:2379", "10.0.0.3:2380"])
        XCTAssertThrowsError(try EtcdClient.parse("http://h1:2379"))
        XCTAssertThrowsError(try EtcdClient.parse("etcd://h1:notaport"))
        XCTAssertEqual(EtcdClient.prefixEnd("weft/"), "weft0")
    }

    func testGetPutPrefixCompareAndPutAndFailover() async throws {
        guard let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("SKIPPED: etcd is not installed; run scripts/setup-deps")
        }
        let dir = NSTemporaryDirectory() + "weft-etcd-\(UUID().uuidString.prefix(8))"
        let client = Int.random(in: 30000...39999), peer = client + 10000
        let p = Process()
        p.executableURL = URL(fileURLWithPath: etcd)
        p.arguments = ["--name", "t", "--data-dir", dir, "--listen-client-urls", "http://127.0.0.1:\(client)",
                       "--advertise-client-urls", "http://127.0.0.1:\(client)", "--listen-peer-urls", "http://127.0.0.1:\(peer)",
                       "--initial-advertise-peer-urls", "http://127.0.0.1:\(peer)", "--initial-cluster", "t=http://127.0.0.1:\(peer)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer {
            p.terminate()
            p.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        }
        // A dead endpoint first: the client moves on to the live one.
        let etcdClient = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: 1), .init(host: "127.0.0.1", port: client)],
                                    group: MultiThreadedEventLoopGroup.singleton)
        var ready = false
        for _ in 0..<100 where !ready {
            do {
                _ = try await etcdClient.getPrefix("probe")
                ready = true
            } catch {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        XCTAssertTrue(ready, "etcd did not come up")

        let missing = try await etcdClient.get("weft/none")
        XCTAssertNil(missing)
        try await etcdClient.put("weft/a", Array("one".utf8))
        let fetched = try await etcdClient.get("weft/a")
        let a = try XCTUnwrap(fetched)
        XCTAssertEqual(String(decoding: a.value, as: UTF8.self), "one")
        // Compare-and-put: only against the revision last seen.
        let swapped = try await etcdClient.compareAndPut("weft/a", Array("two".utf8), expectedModRevision: a.modRevision)
        XCTAssertTrue(swapped)
        let stale = try await etcdClient.compareAndPut("weft/a", Array("three".utf8), expectedModRevision: a.modRevision)
        XCTAssertFalse(stale, "a write based on an old revision must fail")
        let created = try await etcdClient.compareAndPut("weft/b", Array("new".utf8), expectedModRevision: 0)
        XCTAssertTrue(created)
        let again = try await etcdClient.compareAndPut("weft/b", Array("dup".utf8), expectedModRevision: 0)
        XCTAssertFalse(again, "create-if-absent refuses an existing key")
        try await etcdClient.put("other/c", Array("x".utf8))
        let listed = try await etcdClient.getPrefix("weft/")
        XCTAssertEqual(listed.map(\.key), ["weft/a", "weft/b"])
        XCTAssertEqual(listed.map { String(decoding: $0.value, as: UTF8.self) }, ["two", "new"])

        // Everything down: one error naming every endpoint.
        let dead = EtcdClient(endpoints: [.init(host: "127.0.0.1", port: 1), .init(host: "127.0.0.1", port: 2)],
                              group: MultiThreadedEventLoopGroup.singleton, timeout: .milliseconds(500))
        do {
            _ = try await dead.get("weft/a")
            XCTFail("no etcd, yet an answer")
        } catch {
            XCTAssertTrue("\(error)".contains("etcd is unreachable (127.0.0.1:1: ") && "\(error)".contains("127.0.0.1:2: "), "\(error)")
        }
    }
}
