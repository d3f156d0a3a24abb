import WeftCore

/// `security.istio.io AuthorizationPolicy`: who may call a workload, and what. Evaluated by
/// the destination's proxy with the caller's proven identity (mTLS) or none (plaintext).
public struct AuthorizationPolicy: Sendable, Equatable {
    public enum Action: String, Sendable, Equatable {
        case ALLOW, DENY
    }

    public struct Source: Sendable, Equatable {
        public var principals: [String]?
        public var notPrincipals: [String]?
        public var namespaces: [String]?
        public var notNamespaces: [String]?
        public var ipBlocks: [CIDR]?
        public var notIpBlocks: [CIDR]?
        public init() {}
    }

    public struct Operation: Sendable, Equatable {
        public var methods: [String]?
        public var notMethods: [String]?
        public var paths: [String]?
        public var notPaths: [String]?
        public var ports: [UInt16]?
        public var notPorts: [UInt16]?
        public var hosts: [String]?
        public var notHosts: [String]?
        public init() {}

        /// Fields only an HTTP request has.
        var isHTTPOnly: Bool {
            methods != nil || notMethods != nil || paths != nil || notPaths != nil || hosts != nil || notHosts != nil
        }
    }

    public struct Condition: Sendable, Equatable {
        /// `request.headers[NAME]`, `source.principal`, `source.namespace`, `source.ip`,
        /// `destination.port`.
        public var key: String
        public var values: [String]?
        public var notValues: [String]?
        public init(key: String, values: [String]?, notValues: [String]?) {
            self.key = key
            self.values = values
            self.notValues = notValues
        }

        var isHTTPOnly: Bool { key.hasPrefix("request.headers[") }
    }

    public struct Rule: Sendable, Equatable {
        public var from: [Source]?
        public var to: [Operation]?
        public var when: [Condition]?
        public init(from: [Source]? = nil, to: [Operation]? = nil, when: [Condition]? = nil) {
            self.from = from
            self.to = to
            self.when = when
        }
    }

    public var metadata: ObjectMeta
    public var selector: [String: String]?
    public var action: Action
    /// nil: no rules (an ALLOW policy then allows nothing; a DENY policy denies nothing).
    public var rules: [Rule]?
    public var location: SourceLocation

    public init(metadata: ObjectMeta, selector: [String: String]?, action: Action, rules: [Rule]?, location: SourceLocation) {
        self.metadata = metadata
        self.selector = selector
        self.action = action
        self.rules = rules
        self.location = location
    }

    /// Whether any rule needs the HTTP request (so the proxy must look at HTTP).
    public var needsHTTP: Bool {
        (rules ?? []).contains { ($0.to ?? []).contains(where: \.isHTTPOnly) || ($0.when ?? []).contains(where: \.isHTTPOnly) }
    }

    public func applies(toNamespace namespace: String, labels: [String: String]) -> Bool {
        guard metadata.namespace == namespace || metadata.namespace == PeerAuthenticationPolicy.rootNamespace else { return false }
        return selector.map { sel in sel.allSatisfy { labels[$0.key] == $0.value } } ?? true
    }
}

/// What a request (or connection) looks like to authorization.
public struct AuthorizationRequest: Sendable {
    /// `spiffe://td/ns/x/sa/y`; nil for plaintext callers.
    public var principal: String?
    public var sourceIP: IPAddress?
    /// The workload port the caller dialled.
    public var port: UInt16
    /// nil for a connection that is not HTTP (or not inspected as HTTP).
    public var http: HTTP?

    public struct HTTP: Sendable {
        public var method: String
        public var path: String
        public var host: String
        /// Lower-case names.
        public var headers: [String: String]

        public init(method: String, path: String, host: String, headers: [String: String]) {
            self.method = method
            self.path = path
            self.host = host
            self.headers = headers
        }
    }

    public init(principal: String?, sourceIP: IPAddress?, port: UInt16, http: HTTP? = nil) {
        self.principal = principal
        self.sourceIP = sourceIP
        self.port = port
        self.http = http
    }

    /// Istio's principal form: the SPIFFE ID without `spiffe://`.
    var principalName: String? {
        principal.map { $0.hasPrefix("spiffe://") ? String($0.dropFirst(9)) : $0 }
    }

    /// `ns/<namespace>/…` of the principal.
    var namespace: String? {
        guard let p = principalName else { return nil }
        let parts = p.split(separator: "/")
        guard let i = parts.firstIndex(of: "ns"), i + 1 < parts.count else { return nil }
        return String(parts[i + 1])
    }
}

public enum AuthorizationDecision: Equatable, Sendable {
    case allow
    /// The policy that decided, `namespace/name`, and why.
    case deny(policy: String, reason: String)
}

/// Istio's evaluation: any matching DENY policy denies; otherwise, when ALLOW policies apply
/// to the workload, one of them must match; otherwise allow. Rules: `from` (any source),
/// `to` (any operation) and `when` (every condition) must all match; in a source or operation
/// every field given must match one of its values and none of its `not` values. For a
/// connection that is not HTTP, a rule that needs HTTP fields never matches in an ALLOW
/// policy, and its HTTP fields are ignored in a DENY policy (failing closed both ways).
public enum Authorization {
    public static func decide(_ request: AuthorizationRequest, policies: [AuthorizationPolicy]) -> AuthorizationDecision {
        let ordered = policies.sorted { ($0.metadata.namespace, $0.metadata.name) < ($1.metadata.namespace, $1.metadata.name) }
        for p in ordered where p.action == .DENY {
            if let rule = (p.rules ?? []).firstIndex(where: { matches($0, request, deny: true) }) {
                return .deny(policy: "\(p.metadata.namespace)/\(p.metadata.name)", reason: "DENY rule \(rule) matched")
            }
        }
        let allows = ordered.filter { $0.action == .ALLOW }
        guard !allows.isEmpty else { return .allow }
        for p in allows where (p.rules ?? []).contains(where: { matches($0, request, deny: false) }) {
            return .allow
        }
        let names = allows.map { "\($0.metadata.namespace)/\($0.metadata.name)" }.joined(separator: ",")
        return .deny(policy: names, reason: "no ALLOW rule matched")
    }

    static func matches(_ rule: AuthorizationPolicy.Rule, _ r: AuthorizationRequest, deny: Bool) -> Bool {
        if let from = rule.from, !from.contains(where: { matches($0, r) }) { return false }
        if let to = rule.to, !to.contains(where: { matches($0, r, deny: deny) }) { return false }
        for c in rule.when ?? [] where !matches(c, r, deny: deny) { return false }
        return true
    }

    static func matches(_ s: AuthorizationPolicy.Source, _ r: AuthorizationRequest) -> Bool {
        let principal = r.principalName ?? ""
        if let v = s.principals, !v.contains(where: { wildcard($0, principal) && !principal.isEmpty }) { return false }
        if let v = s.notPrincipals, v.contains(where: { wildcard($0, principal) && !principal.isEmpty }) { return false }
        let ns = r.namespace ?? ""
        if let v = s.namespaces, !v.contains(where: { wildcard($0, ns) && !ns.isEmpty }) { return false }
        if let v = s.notNamespaces, v.contains(where: { wildcard($0, ns) && !ns.isEmpty }) { return false }
        if let v = s.ipBlocks, !(r.sourceIP.map { ip in v.contains { $0.contains(ip) } } ?? false) { return false }
        if let v = s.notIpBlocks, r.sourceIP.map({ ip in v.contains { $0.contains(ip) } }) ?? false { return false }
        return true
    }

    static func matches(_ o: AuthorizationPolicy.Operation, _ r: AuthorizationRequest, deny: Bool) -> Bool {
        if let v = o.ports, !v.contains(r.port) { return false }
        if let v = o.notPorts, v.contains(r.port) { return false }
        guard let http = r.http else {
            // Not HTTP: HTTP fields cannot match an ALLOW; a DENY ignores them.
            return deny || !o.isHTTPOnly
        }
        if let v = o.methods, !v.contains(http.method) { return false }
        if let v = o.notMethods, v.contains(http.method) { return false }
        if let v = o.paths, !v.contains(where: { wildcard($0, http.path) }) { return false }
        if let v = o.notPaths, v.contains(where: { wildcard($0, http.path) }) { return false }
        let host = http.host.lowercased()
        if let v = o.hosts, !v.contains(where: { wildcard($0.lowercased(), host) }) { return false }
        if let v = o.notHosts, v.contains(where: { wildcard($0.lowercased(), host) }) { return false }
        return true
    }

    static func matches(_ c: AuthorizationPolicy.Condition, _ r: AuthorizationRequest, deny: Bool) -> Bool {
        let value: String?
        switch c.key {
        case "source.principal": value = r.principalName
        case "source.namespace": value = r.namespace
        case "source.ip": value = r.sourceIP.map { "\($0)" }
        case "destination.port": value = "\(r.port)"
        default:
            guard let http = r.http else { return deny }
            let name = c.key.dropFirst("request.headers[".count).dropLast().lowercased()
            value = http.headers[name]
        }
        if let v = c.values, !(value.map { x in v.contains { wildcard($0, x) } } ?? false) { return false }
        if let v = c.notValues, value.map({ x in v.contains { wildcard($0, x) } }) ?? false { return false }
        return true
    }

    /// Istio's string match: `*` alone, `prefix*`, `*suffix`, else exact.
    static func wildcard(_ pattern: String, _ value: String) -> Bool {
        if pattern == "*" { return true }
        if pattern.hasSuffix("*") { return value.hasPrefix(pattern.dropLast()) }
        if pattern.hasPrefix("*") { return value.hasSuffix(pattern.dropFirst()) }
        return pattern == value
    }
}
