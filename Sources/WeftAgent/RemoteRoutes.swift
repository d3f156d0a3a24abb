import Foundation
import WeftControl
import WeftCore
import WeftNetns

/// Host routes to other nodes' pod blocks (`ip route replace BLOCK via NODE-ADDRESS`), so a
/// proxy here reaches a remote pod's tunnel port (15008) directly; every other port of a
/// remote pod is only ever reached through that tunnel (the capture rules see to it).
struct RemoteRoutes {
    private(set) var installed: [CIDR: IPAddress] = [:]

    /// What to add and remove to go from `installed` to `wanted` (pure).
    static func plan(installed: [CIDR: IPAddress], wanted: [CIDR: IPAddress]) -> (add: [(CIDR, IPAddress)], remove: [(CIDR, IPAddress)]) {
        let add = wanted.filter { installed[$0.key] != $0.value }.sorted { $0.key.description < $1.key.description }.map { ($0.key, $0.value) }
        let remove = installed.filter { wanted[$0.key] == nil }.sorted { $0.key.description < $1.key.description }.map { ($0.key, $0.value) }
        return (add, remove)
    }

    /// Applies `wanted`; returns one line per failure (the rest still applied).
    mutating func apply(_ wanted: [CIDR: IPAddress]) -> [String] {
        var problems: [String] = []
        let (add, remove) = Self.plan(installed: installed, wanted: wanted)
        for (block, via) in remove {
            _ = try? HostCommand.run("ip", package: "iproute2", ["route", "del", block.description, "via", via.description])
            installed[block] = nil
        }
        for (block, via) in add {
            do {
                let r = try HostCommand.run("ip", package: "iproute2", ["route", "replace", block.description, "via", via.description])
                guard r.status == 0 else {
                    problems.append("route \(block) via \(via): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
                    continue
                }
                installed[block] = via
            } catch {
                problems.append("route \(block) via \(via): \(error)")
            }
        }
        return problems
    }

    /// Whether this host forwards IPv4 (needed for remote pods to reach local ones).
    static var forwardingEnabled: Bool {
        (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_forward", encoding: .utf8))?.hasPrefix("1") ?? false
    }
}
