/// Checks that need more than one resource: duplicates, subsets a route names but no
/// DestinationRule defines, weights, unreachable routes. Pure; returns diagnostics.
public enum ConfigValidator {
    /// Istio's short-name semantics: `web` in namespace `shop` is web.shop.svc.cluster.local;
    /// `web.blog` is web.blog.svc.cluster.local; names with more dots are taken as written.
    public static func fqdn(_ host: String, namespace: String) -> String {
        let h = host.lowercased()
        if h.hasSuffix(".svc.cluster.local") || h == "*" || h.hasPrefix("*.") { return h }
        let dots = h.filter { $0 == "." }.count
        switch dots {
        case 0: return "\(h).\(namespace).svc.cluster.local"
        case 1: return "\(h).svc.cluster.local"
        default: return h.hasSuffix(".svc") ? "\(h).cluster.local" : h
        }
    }

    public static func validate(_ resources: [Resource]) -> [Diagnostic] {
        var out: [Diagnostic] = []
        var seen: [String: SourceLocation] = [:]
        for r in resources {
            let id = "\(r.kind)/\(r.metadata.namespace)/\(r.metadata.name)"
            if let first = seen[id] {
                out.append(Diagnostic(.error, at: r.location, "\(r.kind) \(r.metadata.name) in namespace \(r.metadata.namespace) is defined twice (first at \(first))"))
            } else {
                seen[id] = r.location
            }
        }
        var meshConfigs: [MeshConfigPolicy] = []
        for case .meshConfig(let m) in resources { meshConfigs.append(m) }
        meshConfigs.sort { ($0.metadata.namespace, $0.metadata.name) < ($1.metadata.namespace, $1.metadata.name) }
        for m in meshConfigs.dropFirst() {
            out.append(Diagnostic(.error, at: m.location, "more than one MeshConfig (\(meshConfigs[0].metadata.namespace)/\(meshConfigs[0].metadata.name) at \(meshConfigs[0].location))",
                                  why: "MeshConfig is mesh-wide: two would make the egress policy depend on names; keep one"))
        }
        var rulesByHost: [String: [DestinationRule]] = [:]
        for case .destinationRule(let d) in resources {
            rulesByHost[fqdn(d.host, namespace: d.metadata.namespace), default: []].append(d)
        }
        for (host, rules) in rulesByHost where rules.count > 1 {
            for d in rules.dropFirst() {
                out.append(Diagnostic(.warning, at: d.location, "more than one DestinationRule for \(host)",
                                      why: "only one is applied; which one depends on order, so subsets may vanish unexpectedly"))
            }
        }
        for (_, rules) in rulesByHost {
            for d in rules { out += validateSubsets(d) }
        }
        var hostOwners: [String: VirtualService] = [:]
        let services = resources.compactMap { r -> VirtualService? in if case .virtualService(let v) = r { v } else { nil } }
        for vs in services.sorted(by: { ($0.metadata.namespace, $0.metadata.name) < ($1.metadata.namespace, $1.metadata.name) }) {
            for host in vs.hosts {
                let full = fqdn(host, namespace: vs.metadata.namespace)
                if let owner = hostOwners[full] {
                    out.append(Diagnostic(.warning, at: vs.location, "host \(host) is also claimed by VirtualService \(owner.metadata.namespace)/\(owner.metadata.name) (\(owner.location))",
                                          why: "only one VirtualService's routes apply to a host (the first by namespace/name); these rules are ignored"))
                } else {
                    hostOwners[full] = vs
                }
            }
        }
        for case .virtualService(let vs) in resources {
            out += validateRoutes(vs, rulesByHost: rulesByHost)
        }
        for case .rateLimitPolicy(let p) in resources {
            let host = fqdn(p.host, namespace: p.metadata.namespace)
            let names = Set(hostOwners[host]?.http.compactMap(\.name) ?? [])
            for limit in p.limits {
                guard let route = limit.route, !names.contains(route) else { continue }
                out.append(Diagnostic(.warning, at: limit.location, "limit \(limit.name) of RateLimitPolicy \(p.metadata.name) names route '\(route)', which no VirtualService for \(p.host) has",
                                      why: "a limit for a route that does not exist limits nothing"))
            }
        }
        return out
    }

    /// Subsets that select every endpoint, or the same endpoints as another subset.
    static func validateSubsets(_ d: DestinationRule) -> [Diagnostic] {
        var out: [Diagnostic] = []
        var byLabels: [[String: String]: Subset] = [:]
        for subset in d.subsets {
            if subset.labels.isEmpty {
                out.append(Diagnostic(.warning, at: subset.location, "subset \(subset.name) has no labels",
                                      why: "it selects every endpoint of \(d.host), so routing to it is no different from routing to the host"))
            } else if let twin = byLabels[subset.labels] {
                out.append(Diagnostic(.warning, at: subset.location, "subsets \(twin.name) and \(subset.name) select the same labels",
                                      why: "a split between them sends every request to the same endpoints"))
            } else {
                byLabels[subset.labels] = subset
            }
        }
        return out
    }

    static func validateRoutes(_ vs: VirtualService, rulesByHost: [String: [DestinationRule]]) -> [Diagnostic] {
        var out: [Diagnostic] = []
        let ns = vs.metadata.namespace
        var catchAll: HTTPRoute?
        for route in vs.http {
            if let earlier = catchAll {
                out.append(Diagnostic(.warning, at: route.location, "route \(route.name ?? "") is never reached",
                                      why: "the route at \(earlier.location) matches every request and the first match wins"))
            }
            if route.match.isEmpty && catchAll == nil { catchAll = route }
            let weights = route.route.map { $0.weight }
            if route.route.count > 1 || weights.contains(where: { $0 != nil }) {
                let total = weights.reduce(0) { $0 + ($1 ?? 0) }
                if route.route.count > 1 && total != 100 {
                    out.append(Diagnostic(.error, at: route.location, "route weights add up to \(total), not 100",
                                          why: "a split must say where every request goes"))
                } else if route.route.count == 1, let w = weights[0], w != 100 {
                    out.append(Diagnostic(.warning, at: route.route[0].location, "the only destination has weight \(w)",
                                          why: "a lone destination receives all traffic whatever its weight"))
                }
            }
            for dest in route.route {
                guard let subset = dest.destination.subset else { continue }
                let host = fqdn(dest.destination.host, namespace: ns)
                let rules = rulesByHost[host] ?? []
                let defined = rules.flatMap { $0.subsets.map(\.name) }
                if !defined.contains(subset) {
                    let known = rules.isEmpty ? "no DestinationRule defines subsets for \(host)"
                        : "defined: \(defined.isEmpty ? "none" : defined.joined(separator: ", "))"
                    out.append(Diagnostic(.error, at: dest.destination.location, "unknown subset '\(subset)' of \(dest.destination.host) (\(known))",
                                          why: "requests routed to it would have no endpoints"))
                }
            }
            if let retries = route.retries, retries.attempts > 0, !onlySafeMethods(route.match),
               retries.retryOn.contains(where: { ["5xx", "gateway-error", "reset", "retriable-status-codes", "internal", "unavailable"].contains($0) }) {
                out.append(Diagnostic(.warning, at: route.location, "retries on \(retries.retryOn.joined(separator: ",")) also apply to non-idempotent requests (POST, PATCH)",
                                      why: "a request that failed after the upstream acted on it runs again; match safe methods or make the handler idempotent"))
            }
            if let retries = route.retries, let perTry = retries.perTryTimeout, let timeout = route.timeout,
               retries.attempts > 0, perTry * (retries.attempts + 1) > timeout {
                out.append(Diagnostic(.warning, at: route.location, "timeout \(timeout) is shorter than perTryTimeout × attempts",
                                      why: "the last retries can never finish; the whole-request timeout cuts them off"))
            }
        }
        return out
    }

    /// Whether every match of a route pins the method to GET, HEAD or OPTIONS.
    static func onlySafeMethods(_ matches: [HTTPMatchRequest]) -> Bool {
        guard !matches.isEmpty else { return false }
        return matches.allSatisfy { m in
            switch m.method {
            case .exact(let method)?: return ["GET", "HEAD", "OPTIONS"].contains(method.uppercased())
            case .regex(let r)?: return r.range(of: "POST|PUT|PATCH|DELETE", options: .caseInsensitive) == nil && !r.contains(".")
            default: return false
            }
        }
    }
}

/// Reads files or directories of YAML (*.yaml, *.yml, sorted) and runs parse + validate.
public enum ConfigLoader {
    public struct Report: Sendable {
        public var resources: [Resource]
        public var diagnostics: [Diagnostic]
        public var errorCount: Int { diagnostics.filter { $0.severity == .error }.count }
        public var warningCount: Int { diagnostics.filter { $0.severity == .warning }.count }
    }

    public static func load(paths: [String], read: (String) throws -> String, list: (String) -> [String]?) -> Report {
        var resources: [Resource] = []
        var diagnostics: [Diagnostic] = []
        for path in paths {
            let files = list(path).map { $0.filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted() } ?? [path]
            for file in files {
                do {
                    let result = ConfigParser.parse(yaml: try read(file), file: file)
                    resources += result.resources
                    diagnostics += result.diagnostics
                } catch {
                    diagnostics.append(Diagnostic(.error, at: SourceLocation(file: file, line: 0, column: 0), "cannot read: \(error)"))
                }
            }
        }
        diagnostics += ConfigValidator.validate(resources)
        return Report(resources: resources, diagnostics: diagnostics)
    }
}
