import WeftConfig
import WeftCore
import XCTest
@testable import WeftProxy

final class BalancerTests: XCTestCase {
    func endpoints(_ names: [String]) -> [ServiceEndpoint] {
        names.enumerated().map { ServiceEndpoint(workload: $1, ip: IPAddress("10.0.0.\($0 + 2)")!, ipv6: nil, ports: [], labels: [:]) }
    }

    func testRingMovesOnlyTheKeysOfTheEndpointThatLeft() {
        let keys = (0..<2000).map { "user-\($0)" }
        let before = HashRing(["a", "b", "c"])
        let owners = keys.map { ["a", "b", "c"][before.owner(of: $0)] }
        let share = Dictionary(grouping: owners, by: { $0 }).mapValues { Double($0.count) / 2000 }
        XCTAssertTrue(share.values.allSatisfy { (0.2...0.47).contains($0) }, "roughly even: \(share)")

        let without = HashRing(["a", "c"])
        for (key, owner) in zip(keys, owners) where owner != "b" {
            XCTAssertEqual(["a", "c"][without.owner(of: key)], owner, "\(key) moved although its endpoint stayed")
        }
        let joined = HashRing(["a", "b", "c", "d"])
        for (key, owner) in zip(keys, owners) {
            let now = ["a", "b", "c", "d"][joined.owner(of: key)]
            XCTAssertTrue(now == owner || now == "d", "\(key) moved between old endpoints")
        }
        XCTAssertEqual(HashRing.hash("x"), HashRing.hash("x"), "stable across calls and processes")
    }

    func testLeastRequestPicksTheLessBusyOfTwo() {
        let eps = endpoints(["busy", "idle"])
        var draws = [0, 0, 1, 0].makeIterator()
        for _ in 0..<2 {
            let i = Balancer.pick(.simple(.LEAST_REQUEST), endpoints: eps, turn: 0, hashKey: nil,
                                  random: { _ in draws.next()! }, inflight: { $0.workload == "busy" ? 5 : 0 })
            XCTAssertEqual(eps[i].workload, "idle")
        }
        XCTAssertEqual(Balancer.pick(nil, endpoints: endpoints(["only"]), turn: 7, hashKey: nil, random: { _ in 0 }, inflight: { _ in 0 }), 0)
    }

    func testRoundRobinRandomAndHashKeys() {
        let eps = endpoints(["a", "b", "c"])
        XCTAssertEqual((0..<6).map { Balancer.pick(.simple(.ROUND_ROBIN), endpoints: eps, turn: $0, hashKey: nil, random: { _ in 0 }, inflight: { _ in 0 }) },
                       [0, 1, 2, 0, 1, 2])
        XCTAssertEqual(Balancer.pick(.simple(.RANDOM), endpoints: eps, turn: 0, hashKey: nil, random: { _ in 2 }, inflight: { _ in 0 }), 2)
        let same = (0..<5).map { _ in Balancer.pick(.consistentHash(.header("x-user")), endpoints: eps, turn: Int.random(in: 0...99),
                                                    hashKey: "alice", random: { _ in Int.random(in: 0..<3) }, inflight: { _ in 0 }) }
        XCTAssertEqual(Set(same).count, 1)

        let facts = RequestFacts(method: "GET", path: "/", headers: ["x-user": "alice", "cookie": "a=1; session=xyz"], port: 80,
                                 sourceIP: IPAddress("10.0.0.9"))
        XCTAssertEqual(Balancer.hashKey(.consistentHash(.header("x-user")), facts: facts), "alice")
        XCTAssertEqual(Balancer.hashKey(.consistentHash(.cookie(name: "session", ttl: nil)), facts: facts), "xyz")
        XCTAssertEqual(Balancer.hashKey(.consistentHash(.sourceIP), facts: facts), "10.0.0.9")
        XCTAssertNil(Balancer.hashKey(.simple(.RANDOM), facts: facts))
    }
}
