import WeftCore
import Yams

/// `weft.dev/v1alpha1 MeshConfig`.
extension ConfigParser {
    static func meshConfig(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> MeshConfigPolicy? {
        guard let f = r.fields(spec, "MeshConfig.spec", allowed: ["outboundTrafficPolicy"]) else { return nil }
        var config = MeshConfigPolicy(metadata: meta, location: loc)
        guard let otp = f["outboundTrafficPolicy"] else { return config }
        guard let o = r.fields(otp, "MeshConfig.spec.outboundTrafficPolicy", allowed: ["mode", "allowedDestinations"]) else { return nil }
        if let m = o["mode"] {
            guard let text = r.string(m, "outboundTrafficPolicy.mode") else { return nil }
            guard let mode = MeshConfigPolicy.OutboundMode(rawValue: text) else {
                r.error(m, "outboundTrafficPolicy.mode '\(text)' must be ALLOW_ANY or REGISTRY_ONLY")
                return nil
            }
            config.outboundMode = mode
        }
        if let list = o["allowedDestinations"] {
            guard let items = r.list(list, "outboundTrafficPolicy.allowedDestinations") else { return nil }
            for (i, item) in items.enumerated() {
                let what = "allowedDestinations[\(i)]"
                guard let d = r.fields(item, what, allowed: ["cidr", "ports", "protocol"]) else { return nil }
                guard let c = d["cidr"], let text = r.string(c, "\(what).cidr") else {
                    r.error(item, "\(what) needs a cidr (an address such as 192.0.2.10 or a block such as 10.0.0.0/8)")
                    return nil
                }
                guard let cidr = CIDR(text) else {
                    r.error(c, "\(what).cidr '\(text)' is not an IPv4 or IPv6 address or address block")
                    return nil
                }
                var proto = MeshConfigPolicy.EgressProtocol.ANY
                if let p = d["protocol"] {
                    guard let t = r.string(p, "\(what).protocol") else { return nil }
                    guard let parsed = MeshConfigPolicy.EgressProtocol(rawValue: t.uppercased()) else {
                        r.error(p, "\(what).protocol '\(t)' must be TCP, UDP, ICMP or ANY")
                        return nil
                    }
                    proto = parsed
                }
                var ports: [UInt16] = []
                if let p = d["ports"] {
                    guard let nodes = r.list(p, "\(what).ports") else { return nil }
                    for (j, n) in nodes.enumerated() {
                        guard let v = r.int(n, "\(what).ports[\(j)]", 1...65535) else { return nil }
                        ports.append(UInt16(v))
                    }
                    if proto == .ICMP, !ports.isEmpty {
                        r.error(p, "\(what): ICMP has no ports", why: "leave out ports, or use protocol TCP or UDP")
                        return nil
                    }
                }
                config.allowedDestinations.append(.init(cidr: cidr, ports: ports, proto: proto))
            }
            if config.outboundMode == .ALLOW_ANY, !config.allowedDestinations.isEmpty {
                r.warning(list, "allowedDestinations under ALLOW_ANY",
                          why: "every destination is allowed already; the list only matters with mode REGISTRY_ONLY")
            }
        }
        return config
    }
}
