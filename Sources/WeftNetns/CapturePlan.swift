import Glibc
import Foundation
import WeftCore

/// How the proxy's own sockets are told apart from the app's so they are never captured.
public enum ProxyExclusion: Sendable, Equatable {
    /// SO_MARK on every proxy socket (the agent's default; needs CAP_NET_ADMIN, which the
    /// agent has and wrapped apps never do).
    case mark(UInt32)
    /// Sockets owned by a uid and/or gid (for proxies that run as their own user).
    case owner(uid: UInt32?, gid: UInt32?)
}

/// Everything `weft init` needs to know to capture a netns's TCP traffic.
public struct CaptureOptions: Sendable, Equatable {
    public var outboundPort: UInt16 = 15001
    /// Port 53 (UDP and TCP) goes here; nil: DNS is not captured.
    public var dnsPort: UInt16? = 15053
    public var inboundPort: UInt16 = 15006
    public var tunnelPort: UInt16 = 15008
    public var exclusion: ProxyExclusion = .mark(0x539)
    public var excludeInboundPorts: [UInt16] = []
    public var excludeOutboundPorts: [UInt16] = []
    public var excludeOutboundCIDRs: [CIDR] = []
    /// Empty means every destination.
    public var includeOutboundCIDRs: [CIDR] = []
    /// NFQUEUE number that new non-TCP flows (UDP other than captured DNS, ICMP echo, other
    /// protocols) are queued to for the agent's verdict; nil: they leave unchecked. Without
    /// `--queue-bypass`: with nobody reading the queue (agent down), they are dropped.
    public var egressQueue: UInt16? = 15009

    public init() {}

    public init(_ settings: CaptureSettings) {
        outboundPort = settings.outboundPort
        inboundPort = settings.inboundPort
        tunnelPort = settings.tunnelPort
        exclusion = .mark(settings.proxyMark)
        dnsPort = settings.dnsPort
        egressQueue = settings.egressQueue
    }
}

/// One rule of the plan, kept as data so it can be printed, compared and tested.
public struct CaptureRule: Sendable, Equatable, CustomStringConvertible {
    public let chain: String
    public let match: [String]
    public let target: [String]
    public let comment: String

    /// The rule in iptables-restore syntax, without the leading `-A`.
    public var description: String {
        ([chain] + match + ["-m", "comment", "--comment", "\"weft: \(comment)\""] + target).joined(separator: " ")
    }
}

/// The capture rules for one address family, and the scripts that install or remove them.
/// Pure: it reads an `iptables-save` dump and writes iptables-restore input; running them is
/// someone else's job (CaptureInstaller). Both scripts are applied with `--noflush` in one
/// transaction, so either all of a change lands or none of it.
public struct CapturePlan: Sendable, Equatable {
    public static let inboundChain = "WEFT_INBOUND"
    public static let outboundChain = "WEFT_OUTPUT"
    public static let ourChains = [inboundChain, outboundChain]
    /// In the filter table: new non-TCP flows to the agent's NFQUEUE.
    public static let egressChain = "WEFT_EGRESS"
    /// ICMPv6 the kernel itself sends for neighbour discovery and multicast listening
    /// (router/neighbour solicitation and advertisement, redirect, MLD): never queued.
    static let icmpv6Housekeeping = ["130", "131", "132", "133", "134", "135", "136", "137", "143"]

    public let family: IPFamily
    public let options: CaptureOptions

    public init(family: IPFamily, options: CaptureOptions) {
        self.family = family
        self.options = options
    }

    /// The rules of our own chains, in evaluation order. The first matching RETURN wins, so
    /// every exemption comes before the REDIRECT.
    public var chainRules: [CaptureRule] {
        let o = options
        var rules: [CaptureRule] = []
        let inb = Self.inboundChain, out = Self.outboundChain
        rules.append(.init(chain: inb, match: ["-p", "tcp", "--dport", "\(o.tunnelPort)"], target: ["-j", "RETURN"],
                           comment: "mesh tunnel port is never captured"))
        if !o.excludeInboundPorts.isEmpty {
            rules.append(.init(chain: inb, match: ["-p", "tcp", "-m", "multiport", "--dports", Self.ports(o.excludeInboundPorts)],
                               target: ["-j", "RETURN"], comment: "excluded inbound ports"))
        }
        rules.append(.init(chain: inb, match: ["-p", "tcp"], target: ["-j", "REDIRECT", "--to-ports", "\(o.inboundPort)"],
                           comment: "inbound TCP to the workload proxy"))

        switch o.exclusion {
        case .mark(let mark):
            rules.append(.init(chain: out, match: ["-m", "mark", "--mark", "0x" + String(mark, radix: 16)],
                               target: ["-j", "RETURN"], comment: "proxy's own sockets (SO_MARK)"))
        case .owner(let uid, let gid):
            if let uid {
                rules.append(.init(chain: out, match: ["-m", "owner", "--uid-owner", "\(uid)"], target: ["-j", "RETURN"],
                                   comment: "proxy's own sockets (uid)"))
            }
            if let gid {
                rules.append(.init(chain: out, match: ["-m", "owner", "--gid-owner", "\(gid)"], target: ["-j", "RETURN"],
                                   comment: "proxy's own sockets (gid)"))
            }
        }
        if let dns = o.dnsPort {
            // Before the loopback exemption: resolvers such as 127.0.0.53 are on loopback.
            for proto in ["udp", "tcp"] {
                rules.append(.init(chain: out, match: ["-p", proto, "--dport", "53"], target: ["-j", "REDIRECT", "--to-ports", "\(dns)"],
                                   comment: "DNS to the workload's DNS proxy"))
            }
            rules.append(.init(chain: out, match: ["!", "-p", "tcp"], target: ["-j", "RETURN"],
                               comment: "other non-TCP traffic is not proxied"))
        }
        rules.append(.init(chain: out, match: ["-o", "lo"], target: ["-j", "RETURN"],
                           comment: "loopback app-to-app traffic"))
        rules.append(.init(chain: out, match: ["-p", "tcp", "--dport", "\(o.tunnelPort)"], target: ["-j", "RETURN"],
                           comment: "mesh tunnel port is never captured"))
        if !o.excludeOutboundPorts.isEmpty {
            rules.append(.init(chain: out, match: ["-p", "tcp", "-m", "multiport", "--dports", Self.ports(o.excludeOutboundPorts)],
                               target: ["-j", "RETURN"], comment: "excluded outbound ports"))
        }
        for cidr in o.excludeOutboundCIDRs where cidr.family == family {
            rules.append(.init(chain: out, match: ["-d", cidr.description], target: ["-j", "RETURN"],
                               comment: "excluded outbound CIDR"))
        }
        let redirect = ["-j", "REDIRECT", "--to-ports", "\(o.outboundPort)"]
        if o.includeOutboundCIDRs.isEmpty {
            rules.append(.init(chain: out, match: ["-p", "tcp"], target: redirect, comment: "outbound TCP to the workload proxy"))
        } else {
            for cidr in o.includeOutboundCIDRs where cidr.family == family {
                rules.append(.init(chain: out, match: ["-p", "tcp", "-d", cidr.description], target: redirect,
                                   comment: "included outbound CIDR to the workload proxy"))
            }
        }
        return rules
    }

    /// The jumps from the built-in chains into ours.
    public var jumpRules: [CaptureRule] {
        var jumps: [CaptureRule] = [
            .init(chain: "PREROUTING", match: ["-p", "tcp"], target: ["-j", Self.inboundChain],
                  comment: "inbound capture"),
            .init(chain: "OUTPUT", match: ["-p", "tcp"], target: ["-j", Self.outboundChain],
                  comment: "outbound capture"),
        ]
        if options.dnsPort != nil {
            jumps.append(.init(chain: "OUTPUT", match: ["-p", "udp", "--dport", "53"], target: ["-j", Self.outboundChain],
                               comment: "DNS capture"))
        }
        return jumps
    }

    /// The filter-table rules of the egress chain: what is not TCP and not the proxy's own goes,
    /// on its first packet (conntrack NEW), to the agent's queue. Empty without a queue.
    public var egressRules: [CaptureRule] {
        guard let queue = options.egressQueue else { return [] }
        let chain = Self.egressChain
        var rules: [CaptureRule] = [
            .init(chain: chain, match: ["-o", "lo"], target: ["-j", "RETURN"], comment: "loopback"),
            // REDIRECT keeps the original route's output device: match the NAT instead.
            .init(chain: chain, match: ["-m", "conntrack", "--ctstate", "DNAT"], target: ["-j", "RETURN"],
                  comment: "redirected to the proxy (captured DNS)"),
            .init(chain: chain, match: ["-p", "tcp"], target: ["-j", "RETURN"], comment: "TCP is the proxy's (nat capture)"),
        ]
        switch options.exclusion {
        case .mark(let mark):
            rules.append(.init(chain: chain, match: ["-m", "mark", "--mark", "0x" + String(mark, radix: 16)], target: ["-j", "RETURN"],
                               comment: "proxy's own sockets (SO_MARK)"))
        case .owner(let uid, let gid):
            if let uid {
                rules.append(.init(chain: chain, match: ["-m", "owner", "--uid-owner", "\(uid)"], target: ["-j", "RETURN"], comment: "proxy's own sockets (uid)"))
            }
            if let gid {
                rules.append(.init(chain: chain, match: ["-m", "owner", "--gid-owner", "\(gid)"], target: ["-j", "RETURN"], comment: "proxy's own sockets (gid)"))
            }
        }
        if family == .v6 {
            for type in Self.icmpv6Housekeeping {
                rules.append(.init(chain: chain, match: ["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", type], target: ["-j", "RETURN"],
                                   comment: "neighbour discovery and MLD"))
            }
        }
        rules.append(.init(chain: chain, match: ["-m", "conntrack", "--ctstate", "NEW"], target: ["-j", "NFQUEUE", "--queue-num", "\(queue)"],
                           comment: "new non-TCP flows: the agent decides"))
        return rules
    }

    public var egressJump: CaptureRule? {
        options.egressQueue == nil ? nil
            : .init(chain: "OUTPUT", match: [], target: ["-j", Self.egressChain], comment: "egress control")
    }

    /// iptables-restore input (for `--noflush`) that brings the nat table to the plan.
    /// Declaring our chains flushes them, so re-running replaces rather than appends; jumps
    /// already present are not added again. Idempotent by construction.
    public func applyScript(current: IptablesSave) -> String {
        var lines = ["*nat"]
        for chain in Self.ourChains { lines.append(":\(chain) - [0:0]") }
        for rule in chainRules { lines.append("-A \(rule)") }
        for jump in jumpRules where !current.hasRule(jump) {
            lines.append("-A \(jump)")
        }
        lines.append("COMMIT")
        // The filter table: declared (so flushed) even without a queue, so turning the
        // queue off on re-apply removes the rules; the jump only with a queue.
        if options.egressQueue != nil || current.filter.chains.contains(Self.egressChain) {
            lines.append("*filter")
            lines.append(":\(Self.egressChain) - [0:0]")
            for rule in egressRules { lines.append("-A \(rule)") }
            if let jump = egressJump, !current.filter.hasJump(from: "OUTPUT", to: Self.egressChain) {
                lines.append("-A \(jump)")
            } else if egressJump == nil {
                for rule in current.filter.rules where rule.chain == "OUTPUT" && rule.jumpTarget == Self.egressChain {
                    lines.append("-D " + rule.text)
                }
            }
            lines.append("COMMIT")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// iptables-restore input that deletes exactly what Weft added: every jump into a WEFT_
    /// chain, then the chains. nil when there is nothing of ours.
    public static func removeScript(current: IptablesSave) -> String? {
        var lines: [String] = []
        for rule in current.rules where !ourChains.contains(rule.chain) && rule.jumpTarget.map(ourChains.contains) == true {
            lines.append("-D " + rule.text)
        }
        for chain in ourChains where current.chains.contains(chain) {
            lines.append("-F \(chain)")
            lines.append("-X \(chain)")
        }
        var filter: [String] = []
        for rule in current.filter.rules where rule.chain != egressChain && rule.jumpTarget == egressChain {
            filter.append("-D " + rule.text)
        }
        if current.filter.chains.contains(egressChain) {
            filter += ["-F \(egressChain)", "-X \(egressChain)"]
        }
        if lines.isEmpty && filter.isEmpty { return nil }
        var script: [String] = []
        if !lines.isEmpty { script += ["*nat"] + lines + ["COMMIT"] }
        if !filter.isEmpty { script += ["*filter"] + filter + ["COMMIT"] }
        return script.joined(separator: "\n") + "\n"
    }

    private static func ports(_ ports: [UInt16]) -> String {
        Array(Set(ports)).sorted().map(String.init).joined(separator: ",")
    }
}

/// The nat and filter tables as `iptables-save` prints them.
public struct IptablesSave: Sendable, Equatable {
    public struct Rule: Sendable, Equatable {
        public let chain: String
        /// The rule after `-A `, exactly as printed (so `-D` + text deletes it).
        public let text: String
        public var jumpTarget: String? {
            let words = text.split(separator: " ")
            guard let j = words.firstIndex(of: "-j"), j + 1 < words.count else { return nil }
            return String(words[j + 1])
        }
    }

    /// One table's chains and rules.
    public struct Table: Sendable, Equatable {
        public var chains: Set<String> = []
        public var rules: [Rule] = []

        public init() {}

        public func hasJump(from chain: String, to target: String) -> Bool {
            rules.contains { $0.chain == chain && $0.jumpTarget == target }
        }
    }

    /// The nat table.
    public var chains: Set<String> = []
    public var rules: [Rule] = []
    /// The filter table (egress queue rules).
    public var filter = Table()

    public init() {}

    public init(parsing dump: String) {
        var table = ""
        for raw in dump.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            guard table == "nat" || table == "filter" else { continue }
            if line.hasPrefix(":") {
                if let name = line.dropFirst().split(separator: " ").first {
                    if table == "nat" { chains.insert(String(name)) } else { filter.chains.insert(String(name)) }
                }
            } else if line.hasPrefix("-A ") {
                let text = String(line.dropFirst(3))
                if let chain = text.split(separator: " ").first {
                    if table == "nat" { rules.append(Rule(chain: String(chain), text: text)) } else { filter.rules.append(Rule(chain: String(chain), text: text)) }
                }
            }
        }
    }

    /// Whether a rule with this chain, protocol and target is there (iptables-save adds
    /// implicit matches such as `-m tcp`, so the text is not compared as a whole).
    public func hasRule(_ rule: CaptureRule) -> Bool {
        let proto = rule.match.firstIndex(of: "-p").map { rule.match[$0 + 1] }
        return rules.contains { r in
            let words = r.text.split(separator: " ").map(String.init)
            let p = words.firstIndex(of: "-p").map { words[$0 + 1] }
            return r.chain == rule.chain && r.jumpTarget == rule.target[1] && p == proto
        }
    }

    public func hasJump(from chain: String, to target: String) -> Bool {
        rules.contains { $0.chain == chain && $0.jumpTarget == target }
    }

    /// True when our chains and jumps are all present (used by status checks and tests).
    public var isCaptured: Bool {
        CapturePlan.ourChains.allSatisfy(chains.contains)
            && hasJump(from: "OUTPUT", to: CapturePlan.outboundChain)
            && hasJump(from: "PREROUTING", to: CapturePlan.inboundChain)
    }
}

