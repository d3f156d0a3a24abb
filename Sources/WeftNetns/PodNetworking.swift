import Glibc
import CWeftLinux
import Foundation
import WeftCore

/// The L2/L3 plumbing of a pod netns, through netlink (libmnl): a host bridge whose address
/// is the pods' gateway, and for each netns a veth pair with `eth0` inside.
public enum PodNetworking {
    /// Host-side veth name: "wv" + 8 hex digits of a hash of the netns name (≤ 15 chars).
    public static func hostVethName(for netns: NetnsName) -> String {
        var hash: UInt32 = 2_166_136_261
        for byte in netns.rawValue.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let hex = String(hash, radix: 16)
        return "wv" + String(repeating: "0", count: 8 - hex.count) + hex
    }

    /// Creates the bridge if missing and gives it the gateway address. Idempotent.
    public static func ensureBridge(_ name: String, gateway: IPAddress, prefixLength: Int,
                                    gatewayV6: IPAddress? = nil, prefixLengthV6: Int = 64) throws {
        var rc = weft_link_add_bridge(-1, name)
        guard rc == 0 || rc == -EEXIST else { throw netlinkError("create bridge \(name)", rc) }
        rc = weft_addr_add(-1, name, AF_INET, gateway.bytes, Int32(prefixLength))
        guard rc == 0 || rc == -EEXIST else { throw netlinkError("add \(gateway)/\(prefixLength) to \(name)", rc) }
        if let gatewayV6 {
            rc = weft_addr_add_flags(-1, name, AF_INET6, gatewayV6.bytes, Int32(prefixLengthV6), UInt32(WEFT_IFA_F_NODAD))
            guard rc == 0 || rc == -EEXIST else { throw netlinkError("add \(gatewayV6)/\(prefixLengthV6) to \(name)", rc) }
        }
        rc = weft_link_up(-1, name, 0)
        guard rc == 0 else { throw netlinkError("bring up \(name)", rc) }
    }

    public static func deleteBridge(_ name: String) {
        _ = weft_link_delete(-1, name)
    }

    /// Wires a netns to the bridge: veth pair, `eth0` inside with the pod address, loopback
    /// up, default route through the gateway. On failure nothing is left behind.
    public static func connect(_ netns: NetnsHandle, network: PodNetwork) throws {
        let host = hostVethName(for: netns.name)
        let bridgeIndex = weft_link_index(-1, network.bridge)
        guard bridgeIndex > 0 else {
            throw WeftError(.notFound, "bridge \(network.bridge) does not exist", hint: "is `weft agent` running?")
        }
        var rc = weft_link_add_veth(host, "eth0", netns.fd)
        if rc == -EEXIST {
            throw WeftError(.alreadyExists, "interface \(host) (or eth0 in netns \(netns.name)) already exists")
        }
        guard rc == 0 else { throw netlinkError("create veth \(host)", rc) }
        do {
            rc = weft_link_up(-1, host, bridgeIndex)
            guard rc == 0 else { throw netlinkError("attach \(host) to \(network.bridge)", rc) }
            rc = weft_link_up(netns.fd, "lo", 0)
            guard rc == 0 else { throw netlinkError("bring up lo in \(netns.name)", rc) }
            rc = weft_addr_add(netns.fd, "eth0", AF_INET, network.podIP.bytes, Int32(network.prefixLength))
            guard rc == 0 else { throw netlinkError("add \(network.podIP) to eth0 in \(netns.name)", rc) }
            rc = weft_link_up(netns.fd, "eth0", 0)
            guard rc == 0 else { throw netlinkError("bring up eth0 in \(netns.name)", rc) }
            rc = weft_route_add_default4(netns.fd, network.gateway.bytes)
            guard rc == 0 else { throw netlinkError("add default route via \(network.gateway) in \(netns.name)", rc) }
            if let v6 = network.podIPv6, let gw6 = network.gatewayV6 {
                // NODAD: duplicate address detection would keep the address unusable for
                // a second or two; the agent's allocation already guarantees uniqueness.
                rc = weft_addr_add_flags(netns.fd, "eth0", AF_INET6, v6.bytes, Int32(network.prefixLengthV6 ?? 64),
                                         UInt32(WEFT_IFA_F_NODAD))
                guard rc == 0 else { throw netlinkError("add \(v6) to eth0 in \(netns.name)", rc) }
                rc = weft_route_add_default(netns.fd, AF_INET6, gw6.bytes)
                guard rc == 0 else { throw netlinkError("add default route via \(gw6) in \(netns.name)", rc) }
            }
        } catch {
            _ = weft_link_delete(-1, host)
            throw error
        }
    }

    /// Removes the veth pair (deleting one end deletes both). Missing is fine.
    public static func disconnect(_ netns: NetnsName) throws {
        let rc = weft_link_delete(-1, hostVethName(for: netns))
        guard rc == 0 || rc == -ENODEV || rc == -ENOENT else {
            throw netlinkError("delete veth \(hostVethName(for: netns))", rc)
        }
    }

    static func netlinkError(_ what: String, _ rc: Int32) -> WeftError {
        WeftError(.system, "netlink: cannot \(what): \(errnoText(-rc))")
    }
}
