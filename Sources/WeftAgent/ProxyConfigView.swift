import Foundation
import WeftConfig
import WeftCore

/// `weft proxy-config WORKLOAD listeners|routes|clusters|endpoints|secrets`: what one
/// workload's proxy runs with, as rows (istioctl proxy-config's shape). Pure: built from what
/// the local API returns, so every view is a unit test.
public enum ProxyConfigView {
    public struct Listener: Codable, Sendable, Equatable {
        public var address: String
        public var port: UInt16
        public var kind: String
        public var detail: String
    }

    public static func listeners(_ w: WorkloadStatus, capture: CaptureSettings, hasIdentity: Bool,
                                 peerAuthentication: [PeerAuthenticationPolicy]) -> [Listener] {
        var out = [Listener(address: "127.0.0.1", port: capture.outboundPort, kind: "outbound", detail: "every outbound TCP connection (REDIRECT), HTTP detected or declared"),
                   Listener(address: "0.0.0.0", port: capture.inboundPort, kind: "inbound", detail: "plaintext to the workload's ports (REDIRECT)")]
        if hasIdentity {
            out.append(Listener(address: "0.0.0.0", port: capture.tunnelPort, kind: "tunnel", detail: "mTLS from meshed callers (HTTP/2 CONNECT), never redirected"))
        }
        if let dns = capture.dnsPort {
            out.append(Listener(address: "127.0.0.1", port: dns, kind: "dns", detail: "UDP and TCP; port 53 captured"))
        }
        for p in w.spec.ports {
            let mode = PeerAuthenticationPolicy.mode(namespace: w.spec.namespace.rawValue, labels: w.spec.labels, port: p.targetPort,
                                                     policies: peerAuthentication)
            out.append(Listener(address: "app", port: p.targetPort, kind: "app",
                                detail: "\(p.proto?.rawValue ?? "detected") (service port \(p.port)); plaintext \(mode == .STRICT ? "refused (STRICT)" : "accepted (\(mode.rawValue))")"))
        }
        return out
    }

    public struct Route: Codable, Sendable, Equatable {
        public var host: String
        public var name: String
        public var match: String
        public var destinations: String
        public var timeout: String
        public var retries: String
        public var virtualService: String
    }

    public static func routes(_ resources: [Resource]) -> [Route] {
        var out: [Route] = []
        for case .virtualService(let vs) in resources {
            for (i, r) in vs.http.enumerated() {
                let match = r.match.isEmpty ? "*" : r.match.map(describe).joined(separator: " | ")
                let dests = r.route.map { d in
                    "\(d.destination.host)\(d.destination.subset.map { "/\($0)" } ?? "")\(d.weight.map { " \($0)%" } ?? "")"
                }.joined(separator: ", ")
                out.append(Route(host: vs.hosts.joined(separator: ","), name: r.name ?? "#\(i)", match: match, destinations: dests,
                                 timeout: r.timeout.map(IstioDuration.format) ?? "-",
                                 retries: r.retries.map { "\($0.attempts)× \($0.retryOn.joined(separator: ","))" } ?? "-",
                                 virtualService: "\(vs.metadata.namespace)/\(vs.metadata.name)"))
            }
        }
        return out
    }

    static func describe(_ m: HTTPMatchRequest) -> String {
        var parts: [String] = []
        func s(_ x: StringMatch) -> String {
            switch x {
            case .exact(let v): return "=\(v)"
            case .prefix(let v): return "\(v)*"
            case .regex(let v): return "~\(v)"
            }
        }
        if let u = m.uri { parts.append("uri \(s(u))") }
        if let me = m.method { parts.append("method \(s(me))") }
        for (k, v) in m.headers.sorted(by: { $0.key < $1.key }) { parts.append("\(k) \(s(v))") }
        if let p = m.port { parts.append("port \(p)") }
        return parts.isEmpty ? "*" : parts.joined(separator: " ")
    }

    public struct Cluster: Codable, Sendable, Equatable {
        public var service: String
        public var virtualIP: String
        public var ports: String
        public var endpoints: Int
        public var loadBalancer: String
        public var circuitBreaker: String
        public var destinationRule: String
    }

    public static func clusters(_ services: [ServiceStatus], resources: [Resource]) -> [Cluster] {
        var rules: [String: DestinationRule] = [:]
        for case .destinationRule(let d) in resources {
            let fqdn = ConfigValidator.fqdn(d.host, namespace: d.metadata.namespace)
            if rules[fqdn] == nil { rules[fqdn] = d }
        }
        return services.map { s in
            let rule = rules[s.key.fqdn]
            var lb = "LEAST_REQUEST"
            switch rule?.trafficPolicy?.loadBalancer {
            case .simple(let simple)?: lb = simple.rawValue
            case .consistentHash(let key)?:
                switch key {
                case .header(let h): lb = "CONSISTENT_HASH header \(h)"
                case .cookie(let name, _): lb = "CONSISTENT_HASH cookie \(name)"
                case .sourceIP: lb = "CONSISTENT_HASH source IP"
                }
            case nil: break
            }
            return Cluster(service: s.key.fqdn, virtualIP: "\(s.vip)", ports: s.ports.map(\.description).joined(separator: ","),
                           endpoints: s.endpoints.count, loadBalancer: lb, circuitBreaker: s.breaker ?? "-",
                           destinationRule: rule.map { "\($0.metadata.namespace)/\($0.metadata.name)" } ?? "-")
        }
    }

    public struct Endpoint: Codable, Sendable, Equatable {
        public var endpoint: String
        public var service: String
        public var workload: String
        public var status: String
        public var labels: String
    }

    public static func endpoints(_ services: [ServiceStatus]) -> [Endpoint] {
        services.flatMap { s in
            s.endpoints.map { e in
                let status = s.ejected.contains(e.workload) ? "EJECTED" : s.unhealthy.contains(e.workload) ? "UNHEALTHY" : "HEALTHY"
                let port = e.ports.first.map { ":\($0.targetPort)" } ?? ""
                return Endpoint(endpoint: "\(e.ip)\(port)", service: s.key.fqdn, workload: e.workload, status: status,
                                labels: e.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))
            }
        }
    }

    public struct Secret: Codable, Sendable, Equatable {
        public var resource: String
        public var identity: String
        public var serial: String
        public var notBefore: Date
        public var notAfter: Date
        public var renewAt: Date
    }

    public static func secrets(_ certs: CertificatesReply?, workload: String) -> [Secret] {
        guard let certs else { return [] }
        return certs.workloads.filter { $0.workload == workload || $0.netns == workload }.map {
            Secret(resource: "default", identity: $0.identity, serial: $0.serial, notBefore: $0.notBefore, notAfter: $0.notAfter, renewAt: $0.renewAt)
        }
    }
}
