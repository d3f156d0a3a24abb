import Glibc
import Foundation
import WeftCore

/// Applies and removes capture plans inside a netns with iptables-save / iptables-restore
/// (and the ip6tables pair). One restore per family, each a single transaction; if IPv6
/// fails after IPv4 succeeded, IPv4 is rolled back so a netns is never half captured.
public struct CaptureInstaller: Sendable {
    public let netns: NetnsName

    public init(netns: NetnsName) {
        self.netns = netns
    }

    /// Families the kernel has in this netns (IPv6 can be disabled at boot).
    public static var families: [IPFamily] {
        FileManager.default.fileExists(atPath: "/proc/sys/net/ipv6") ? [.v4, .v6] : [.v4]
    }

    public func current(_ family: IPFamily) throws -> IptablesSave {
        let result = try HostCommand.run(tools(family).save, package: "iptables", [], netns: netns)
        guard result.status == 0 else {
            throw WeftError(.system, "\(tools(family).save) in netns \(netns) failed: \(result.stderr.trimmed)")
        }
        return IptablesSave(parsing: result.stdout)
    }

    /// Installs the plan for every family. Returns the scripts that were applied.
    @discardableResult
    public func apply(_ options: CaptureOptions) throws -> [IPFamily: String] {
        try ensureNetnsExists()
        var applied: [IPFamily: String] = [:]
        for family in Self.families {
            let script = CapturePlan(family: family, options: options).applyScript(current: try current(family))
            do {
                try restore(family, script)
            } catch {
                if !applied.isEmpty { _ = try? remove() }
                throw error
            }
            applied[family] = script
        }
        return applied
    }

    /// Deletes exactly what Weft added, in every family. Returns whether anything was there.
    @discardableResult
    public func remove() throws -> Bool {
        try ensureNetnsExists()
        var removedAny = false
        for family in Self.families {
            if let script = CapturePlan.removeScript(current: try current(family)) {
                try restore(family, script)
                removedAny = true
            }
        }
        return removedAny
    }

    private func restore(_ family: IPFamily, _ script: String) throws {
        let tool = tools(family).restore
        let result = try HostCommand.run(tool, package: "iptables", ["--noflush", "--wait"], netns: netns, input: script)
        guard result.status == 0 else {
            throw WeftError(.system, "\(tool) in netns \(netns) rejected the rules: \(result.stderr.trimmed)",
                            hint: "run `weft init --netns \(netns) --dry-run` to see the rules")
        }
    }

    private func ensureNetnsExists() throws {
        guard FileManager.default.fileExists(atPath: netns.path) else {
            throw WeftError(.netnsNotFound, "network namespace '\(netns)' does not exist (\(netns.path))",
                            hint: "create it with `ip netns add \(netns)` or let `weft run` create one")
        }
    }

    private func tools(_ family: IPFamily) -> (save: String, restore: String) {
        family == .v4 ? ("iptables-save", "iptables-restore") : ("ip6tables-save", "ip6tables-restore")
    }
}

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
