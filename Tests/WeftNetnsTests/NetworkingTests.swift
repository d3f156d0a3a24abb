import Foundation
import WeftCore
import XCTest
@testable import WeftNetns

final class PodAddressPoolTests: XCTestCase {
    func netns(_ s: String) -> NetnsName { try! NetnsName(s) }

    func testAllocatesAfterGatewayAndIsStablePerNetns() throws {
        var pool = try PodAddressPool(cidr: CIDR("10.231.0.77/24")!)
        XCTAssertEqual(pool.cidr.description, "10.231.0.0/24")
        XCTAssertEqual(pool.gateway, IPAddress("10.231.0.1"))
        XCTAssertEqual(try pool.allocate(for: netns("a")), IPAddress("10.231.0.2"))
        XCTAssertEqual(try pool.allocate(for: netns("b")), IPAddress("10.231.0.3"))
        XCTAssertEqual(try pool.allocate(for: netns("a")), IPAddress("10.231.0.2"))
        pool.release(netns("a"))
        XCTAssertEqual(try pool.allocate(for: netns("c")), IPAddress("10.231.0.4"), "a freed address is not reused at once")
        XCTAssertEqual(pool.capacity, 253)
    }

    /// Sequential with wrap-around: a freed address comes back only after the others had
    /// their turn (neighbour caches of callers still point at the old pod's MAC).
    func testFreedAddressesAreReusedLast() throws {
        var pool = try PodAddressPool(cidr: CIDR("10.9.9.0/29")!)  // .2 ... .6
        for n in ["a", "b", "c", "d", "e"] { _ = try pool.allocate(for: netns(n)) }
        pool.release(netns("b"))
        pool.release(netns("d"))
        XCTAssertEqual(try pool.allocate(for: netns("f")), IPAddress("10.9.9.3"), "wraps to the first free one")
        XCTAssertEqual(try pool.allocate(for: netns("g")), IPAddress("10.9.9.5"))
        XCTAssertThrowsError(try pool.allocate(for: netns("h")))
        var restored = try PodAddressPool(cidr: CIDR("10.9.9.0/29")!)
        try restored.reserve(IPAddress("10.9.9.4")!, for: netns("x"))
        XCTAssertEqual(try restored.allocate(for: netns("y")), IPAddress("10.9.9.5"), "after what was restored")
    }

    func testExhaustionIsAClearError() throws {
        var pool = try PodAddressPool(cidr: CIDR("10.9.9.0/30")!)
        XCTAssertEqual(try pool.allocate(for: netns("one")), IPAddress("10.9.9.2"))
        XCTAssertThrowsError(try pool.allocate(for: netns("two"))) { error in
            let e = error as! WeftError
            XCTAssertEqual(e.code, .exhausted)
            XCTAssertTrue(e.message.contains("10.9.9.0/30"))
        }
    }

    func testRejectsUnusableBlocks() {
        XCTAssertThrowsError(try PodAddressPool(cidr: CIDR("10.0.0.0/31")!))
        XCTAssertThrowsError(try PodAddressPool(cidr: CIDR("fd00::/64")!))
    }

    func testIPv6AddressFollowsTheIPv4One() {
        let prefix = CIDR("fd77:7765:6674::/64")!
        XCTAssertEqual(PodAddressPool.ipv6(for: IPAddress("10.231.0.5")!, in: prefix)?.description, "fd77:7765:6674::ae7:5")
        XCTAssertEqual(PodAddressPool.ipv6Gateway(in: prefix)?.description, "fd77:7765:6674::1")
        XCTAssertNil(PodAddressPool.ipv6(for: IPAddress("10.231.0.5")!, in: CIDR("fd00::/120")!), "needs 32 host bits")
        XCTAssertNil(PodAddressPool.ipv6(for: IPAddress("fd00::5")!, in: prefix))
    }

    func testHostVethNameFitsIFNAMSIZ() throws {
        let long = try NetnsName(String(repeating: "x", count: 64))
        let name = PodNetworking.hostVethName(for: long)
        XCTAssertLessThanOrEqual(name.utf8.count, 15)
        XCTAssertNotEqual(PodNetworking.hostVethName(for: netns("a")), PodNetworking.hostVethName(for: netns("b")))
    }
}

final class VocabularyTests: XCTestCase {
    func testPortMappingParsing() throws {
        XCTAssertEqual(try PortMapping(parsing: "3000"), PortMapping(port: 3000))
        XCTAssertEqual(try PortMapping(parsing: "80:3000/http"), PortMapping(port: 80, targetPort: 3000, proto: .http))
        XCTAssertEqual(try PortMapping(parsing: "9000/TCP").proto, .tcp)
        XCTAssertEqual(try PortMapping(parsing: "80:3000/http").description, "80:3000/http")
        for bad in ["", "0", "70000", "80:", "a:b", "80/ftp", "1:2:3"] {
            XCTAssertThrowsError(try PortMapping(parsing: bad), bad) { error in
                XCTAssertTrue((error as! WeftError).message.hasPrefix("--port \(bad)"), "\(error)")
            }
        }
    }

    func testNamesAreValidated() {
        XCTAssertNoThrow(try NetnsName("web-1.v2_x"))
        for bad in ["", "a/b", "..", "has space", String(repeating: "n", count: 65)] {
            XCTAssertThrowsError(try NetnsName(bad), bad)
        }
        XCTAssertNoThrow(try ServiceName("payments"))
        for bad in ["Payments", "-x", "x-", "a.b", ""] { XCTAssertThrowsError(try ServiceName(bad), bad) }
        XCTAssertThrowsError(try Label(parsing: "novalue"))
        XCTAssertEqual(try Label(parsing: "version=v2").value, "v2")
    }

    func testAddressesAndCIDRs() {
        XCTAssertEqual(IPAddress("10.1.2.3")?.description, "10.1.2.3")
        XCTAssertNil(IPAddress("10.1.2"))
        XCTAssertNil(IPAddress("10.1.2.256"))
        XCTAssertNil(IPAddress("01.1.2.3"))
        XCTAssertEqual(IPAddress("fd00:0:0:0:0:0:0:1")?.description, "fd00::1")
        XCTAssertEqual(IPAddress("::1")?.isLoopback, true)
        XCTAssertEqual(IPAddress("127.9.9.9")?.isLoopback, true)
        XCTAssertNil(IPAddress("1::2::3"))
        XCTAssertTrue(CIDR("10.0.0.0/8")!.contains(IPAddress("10.200.1.1")!))
        XCTAssertFalse(CIDR("10.0.0.0/8")!.contains(IPAddress("11.0.0.1")!))
        XCTAssertFalse(CIDR("10.0.0.0/8")!.contains(IPAddress("::1")!))
        XCTAssertTrue(CIDR("fd00::/8")!.contains(IPAddress("fd12::1")!))
        XCTAssertNil(CIDR("10.0.0.0/33"))
        XCTAssertEqual(CIDR("10.0.0.1")?.prefixLength, 32)
    }
}

final class HostCommandTests: XCTestCase {
    /// A missing system tool (iptables on a fresh machine) is named with the package to install.
    func testMissingToolNamesThePackage() {
        XCTAssertThrowsError(try HostCommand.require("weft-no-such-tool", package: "iptables")) { error in
            let e = error as! WeftError
            XCTAssertEqual(e.code, .toolMissing)
            XCTAssertEqual(e.message, "weft-no-such-tool is not installed")
            XCTAssertEqual(e.hint, "install it with: apt-get install -y iptables")
        }
        XCTAssertThrowsError(try HostCommand.run("weft-no-such-tool", package: "iptables", ["-t", "nat"]))
    }

    func testRunCapturesOutputAndStatus() throws {
        let r = try HostCommand.run("sh", package: "dash", ["-c", "echo out; echo err >&2; exit 3"])
        XCTAssertEqual(r.status, 3)
        XCTAssertEqual(r.stdout, "out\n")
        XCTAssertEqual(r.stderr, "err\n")
    }
}

final class NameCodingTests: XCTestCase {
    /// Names travel as bare strings in the local API and state files, and are re-validated.
    func testNamesEncodeAsStringsAndDecodeThroughValidation() throws {
        let data = try JSONEncoder().encode([try NetnsName("web-1")])
        XCTAssertEqual(String(decoding: data, as: UTF8.self), #"["web-1"]"#)
        XCTAssertEqual(String(decoding: try JSONEncoder().encode(try MeshNamespace("shop")), as: UTF8.self), #""shop""#)
        XCTAssertThrowsError(try JSONDecoder().decode(ServiceName.self, from: Data(#""Bad Name""#.utf8)))
        XCTAssertEqual(try JSONDecoder().decode(ServiceName.self, from: Data(#""payments""#.utf8)).description, "payments")
    }
}
