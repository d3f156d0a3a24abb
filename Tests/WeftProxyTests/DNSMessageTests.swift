import WeftCore
import XCTest
@testable import WeftProxy

final class DNSMessageTests: XCTestCase {
    func query(_ name: String, type: UInt16 = 1, id: UInt16 = 0xBEEF, flags: UInt16 = 0x0100) -> [UInt8] {
        var b: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), UInt8(flags >> 8), UInt8(flags & 0xff), 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") { b.append(UInt8(label.utf8.count)); b += Array(label.utf8) }
        b += [0, UInt8(type >> 8), UInt8(type & 0xff), 0, 1]
        return b
    }

    let vip = IPAddress("240.240.0.7")!
    let vip6 = IPAddress("fd77:7765:6674:ffff::f0f0:7")!
    func lookup(_ name: String, _ ns: String) -> (vip: IPAddress, vip6: IPAddress?)? {
        name == "web" && ns == "shop" ? (vip, vip6) : nil
    }

    func testParsesAQuestion() throws {
        let q = try DNSQuery(parsing: query("Web.Shop.svc.cluster.local", type: 28))
        XCTAssertEqual(q.name, "web.shop.svc.cluster.local")
        XCTAssertEqual(q.type, 28)
        XCTAssertEqual(q.id, 0xBEEF)
    }

    func testRejectsWhatIsNotASingleQuestionQuery() {
        XCTAssertThrowsError(try DNSQuery(parsing: [0, 1, 2]))
        var two = query("a.b"); two[5] = 2
        XCTAssertThrowsError(try DNSQuery(parsing: two))
        XCTAssertThrowsError(try DNSQuery(parsing: query("a.b", flags: 0x8180)), "a response is not a query")
        var pointer = query("a.b"); pointer[12] = 0xC0
        XCTAssertThrowsError(try DNSQuery(parsing: pointer), "compression pointers are refused")
        XCTAssertThrowsError(try DNSQuery(parsing: Array(query("web.shop").dropLast(3))), "truncated")
        XCTAssertThrowsError(try DNSQuery(parsing: query(String(repeating: "a", count: 64))), "label over 63")
    }

    func testAnswersMeshNamesWithTheVIPs() throws {
        guard case .answer(let a) = DNSAnswers.decide(query("web.shop"), callerNamespace: .default, lookup: lookup) else {
            return XCTFail("expected an answer")
        }
        XCTAssertEqual(Array(a[0..<2]), [0xBE, 0xEF])
        XCTAssertEqual(a[3] & 0x0F, 0, "NOERROR")
        XCTAssertEqual(a[2] & 0x84, 0x84, "QR and AA")
        XCTAssertEqual(Array(a[6..<8]), [0, 1], "one answer")
        XCTAssertEqual(Array(a.suffix(4)), vip.bytes)
        guard case .answer(let six) = DNSAnswers.decide(query("web", type: 28), callerNamespace: try MeshNamespace("shop"), lookup: lookup) else {
            return XCTFail("short name in the caller's namespace")
        }
        XCTAssertEqual(Array(six.suffix(16)), vip6.bytes)
        guard case .answer(let mx) = DNSAnswers.decide(query("web.shop", type: 15), callerNamespace: .default, lookup: lookup) else {
            return XCTFail("expected NODATA")
        }
        XCTAssertEqual(Array(mx[6..<8]), [0, 0], "no records of other types, but the name exists")
    }

    func testForwardsOutsideNamesAndOwnsTheClusterZone() {
        XCTAssertEqual(DNSAnswers.decide(query("example.com"), callerNamespace: .default, lookup: lookup), .forward)
        XCTAssertEqual(DNSAnswers.decide(query("web"), callerNamespace: .default, lookup: lookup), .forward,
                       "web.default does not exist: the name may mean something outside the mesh")
        guard case .answer(let nx) = DNSAnswers.decide(query("nope.shop.svc.cluster.local"), callerNamespace: .default, lookup: lookup) else {
            return XCTFail("expected NXDOMAIN from the mesh")
        }
        XCTAssertEqual(nx[3] & 0x0F, 3)
        guard case .answer(let formerr) = DNSAnswers.decide([1, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 7], callerNamespace: .default, lookup: lookup) else {
            return XCTFail("expected FORMERR")
        }
        XCTAssertEqual(formerr[3] & 0x0F, 1)
        XCTAssertEqual(DNSAnswers.decide([1, 2, 3], callerNamespace: .default, lookup: lookup), .drop)
    }

    /// Hostile bytes never trap: 20,000 random and mutated messages.
    func testRandomInputNeverCrashes() {
        var rng = SystemRandomNumberGenerator()
        let seed = query("web.shop.svc.cluster.local")
        for i in 0..<20_000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                bytes = seed
                for _ in 0..<Int.random(in: 1...4, using: &rng) { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
                if Bool.random(using: &rng) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng))) }
            }
            _ = DNSAnswers.decide(bytes, callerNamespace: .default, lookup: lookup)
        }
    }
}
