import Glibc
import ArgumentParser
import Foundation
import WeftCore
import WeftNetns

/// `weft init`: the init helper alone. Plans the capture rules as data, then applies them
/// atomically (iptables-restore) inside one netns, or removes exactly what Weft added.
struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Program (or remove) the traffic capture rules inside a network namespace.",
        discussion: """
            TCP leaving the netns is redirected to the workload proxy's outbound port, TCP \
            arriving from the network to its inbound port, for IPv4 and IPv6. The mesh tunnel \
            port, loopback traffic and the proxy's own sockets are never captured. Running it \
            twice changes nothing; every rule carries a comment starting with "weft:".
            """
    )

    @Option(help: "The network namespace (a name under /run/netns).") var netns: String
    @Flag(help: "Print the iptables-restore input instead of applying it (no root needed).") var dryRun = false
    @Flag(help: "Delete exactly the rules and chains Weft added.") var remove = false
    @Option(help: "Port of the proxy's outbound listener.") var outboundPort: UInt16 = 15001
    @Option(help: "Port of the proxy's inbound listener.") var inboundPort: UInt16 = 15006
    @Option(help: "Mesh tunnel port, never captured.") var tunnelPort: UInt16 = 15008
    @Option(help: "Port of the DNS proxy that port 53 (UDP and TCP) is redirected to.") var dnsPort: UInt16 = 15053
    @Flag(help: "Leave DNS alone (no port 53 redirect).") var noDns = false
    @Option(help: "NFQUEUE number that new non-TCP flows (UDP, ICMP, other protocols) are queued to for the agent's verdict, or none (they leave unchecked). With nobody reading it, they are dropped.")
    var egressQueue: String = "15009"
    @Option(help: "SO_MARK of the proxy's sockets, excluded from capture (default 0x539).") var proxyMark: String?
    @Option(help: "Exclude sockets owned by this uid instead of a mark.") var proxyUid: UInt32?
    @Option(help: "Exclude sockets owned by this gid instead of a mark.") var proxyGid: UInt32?
    @Option(help: "Inbound ports not captured (comma-separated, repeatable).") var excludeInboundPorts: [String] = []
    @Option(help: "Outbound ports not captured.") var excludeOutboundPorts: [String] = []
    @Option(help: "Outbound destinations not captured (CIDRs).") var excludeOutboundCidrs: [String] = []
    @Option(help: "Capture only these outbound destinations (CIDRs; default all).") var includeOutboundCidrs: [String] = []

    func options() throws -> CaptureOptions {
        var o = CaptureOptions()
        o.outboundPort = outboundPort
        o.inboundPort = inboundPort
        o.tunnelPort = tunnelPort
        o.dnsPort = noDns ? nil : dnsPort
        o.egressQueue = try EgressQueueFlag.parse(egressQueue)
        if proxyMark != nil && (proxyUid != nil || proxyGid != nil) {
            throw WeftError(.invalidArgument, "--proxy-mark and --proxy-uid/--proxy-gid exclude the proxy two ways; pick one")
        }
        if proxyUid != nil || proxyGid != nil {
            o.exclusion = .owner(uid: proxyUid, gid: proxyGid)
        } else if let proxyMark {
            let text = proxyMark.lowercased()
            let value = text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
            guard let value, value != 0 else {
                throw WeftError(.invalidArgument, "--proxy-mark \(proxyMark): expected a non-zero number (e.g. 0x539)")
            }
            o.exclusion = .mark(value)
        }
        o.excludeInboundPorts = try ListParsing.ports(excludeInboundPorts, flag: "--exclude-inbound-ports")
        o.excludeOutboundPorts = try ListParsing.ports(excludeOutboundPorts, flag: "--exclude-outbound-ports")
        o.excludeOutboundCIDRs = try ListParsing.cidrs(excludeOutboundCidrs, flag: "--exclude-outbound-cidrs")
        o.includeOutboundCIDRs = try ListParsing.cidrs(includeOutboundCidrs, flag: "--include-outbound-cidrs")
        let ports = [outboundPort, inboundPort, tunnelPort]
        guard Set(ports).count == 3 else {
            throw WeftError(.invalidArgument, "--outbound-port, --inbound-port and --tunnel-port must differ")
        }
        return o
    }

    func run() throws {
        do {
            let name = try NetnsName(netns)
            let options = try options()
            if dryRun && !remove {
                for family in [IPFamily.v4, .v6] {
                    print("# \(family == .v4 ? "iptables-restore" : "ip6tables-restore") --noflush  (netns \(name))")
                    print(CapturePlan(family: family, options: options).applyScript(current: IptablesSave()), terminator: "")
                }
                return
            }
            try requireRoot("weft init (it changes iptables inside netns \(name))")
            let installer = CaptureInstaller(netns: name)
            if remove {
                if dryRun {
                    for family in CaptureInstaller.families {
                        let script = CapturePlan.removeScript(current: try installer.current(family))
                        print("# \(family): " + (script == nil ? "nothing of Weft's to remove" : ""))
                        if let script { print(script, terminator: "") }
                    }
                    return
                }
                let removed = try installer.remove()
                print(removed ? "removed Weft's capture rules from netns \(name)" : "netns \(name) had no Weft capture rules")
            } else {
                try installer.apply(options)
                print("capture rules in place in netns \(name) (outbound → \(outboundPort), inbound → \(inboundPort))")
            }
        } catch {
            fail(error)
        }
    }
}

/// `--egress-queue N|none`, shared by `weft init` and `weft agent`.
enum EgressQueueFlag {
    static func parse(_ text: String) throws -> UInt16? {
        if text == "none" { return nil }
        guard let n = UInt16(text) else {
            throw WeftError(.invalidArgument, "--egress-queue \(text): expected an NFQUEUE number 0-65535, or none")
        }
        return n
    }
}
