import WeftCore
import Yams

/// security.istio.io kinds.
extension ConfigParser {
    public static let securityVersions = ["security.istio.io/v1beta1", "security.istio.io/v1"]

    static func peerAuthentication(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> PeerAuthenticationPolicy? {
        guard let f = r.fields(spec, "PeerAuthentication.spec", allowed: ["selector", "mtls", "portLevelMtls"]) else { return nil }
        var selector: [String: String]?
        if let s = f["selector"] {
            guard let sf = r.fields(s, "PeerAuthentication.spec.selector", allowed: ["matchLabels"]),
                  let ml = sf["matchLabels"], let labels = r.stringMap(ml, "selector.matchLabels") else { return nil }
            guard !labels.isEmpty else {
                r.error(ml, "selector.matchLabels is empty: it would select every workload of the namespace",
                        why: "leave out the selector for a namespace-wide policy")
                return nil
            }
            selector = labels
        }
        var mode = PeerAuthenticationPolicy.Mode.UNSET
        if let m = f["mtls"] {
            guard let parsed = Self.mtlsMode(m, "PeerAuthentication.spec.mtls", r) else { return nil }
            mode = parsed
        }
        var ports: [UInt16: PeerAuthenticationPolicy.Mode] = [:]
        if let pl = f["portLevelMtls"] {
            guard selector != nil else {
                r.error(pl, "portLevelMtls needs a selector (Istio's rule: port numbers are a workload's ports)")
                return nil
            }
            guard let mapping = pl.mapping else {
                r.error(pl, "portLevelMtls must map port numbers to {mode: ...}")
                return nil
            }
            for (k, v) in mapping {
                guard let text = k.scalar?.string, let port = UInt16(text), port > 0 else {
                    r.error(k, "portLevelMtls key '\(k.scalar?.string ?? "?")' must be a port number 1-65535")
                    return nil
                }
                guard let parsed = Self.mtlsMode(v, "portLevelMtls.\(port)", r) else { return nil }
                ports[port] = parsed
            }
        }
        if meta.namespace == PeerAuthenticationPolicy.rootNamespace, selector != nil {
            r.warning(spec, "PeerAuthentication \(meta.name) in the root namespace has a selector",
                      why: "it then applies only to workloads of \(PeerAuthenticationPolicy.rootNamespace) with those labels, not mesh-wide")
        }
        return PeerAuthenticationPolicy(metadata: meta, selector: selector, mode: mode, portModes: ports, location: loc)
    }

    private static func mtlsMode(_ node: Node, _ what: String, _ r: NodeReader) -> PeerAuthenticationPolicy.Mode? {
        guard let f = r.fields(node, what, allowed: ["mode"]) else { return nil }
        guard let m = f["mode"] else { return .UNSET }
        guard let text = r.string(m, "\(what).mode") else { return nil }
        guard let mode = PeerAuthenticationPolicy.Mode(rawValue: text) else {
            r.error(m, "\(what).mode '\(text)' must be one of STRICT, PERMISSIVE, DISABLE, UNSET")
            return nil
        }
        return mode
    }
}

extension ConfigParser {
    static func authorizationPolicy(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> AuthorizationPolicy? {
        guard let f = r.fields(spec, "AuthorizationPolicy.spec", allowed: ["selector", "action", "rules"],
                               unsupported: ["provider": "CUSTOM actions (external authorizers) are not supported",
                                             "targetRef": "targetRef is not supported; use selector",
                                             "targetRefs": "targetRefs is not supported; use selector"]) else { return nil }
        var selector: [String: String]?
        if let s = f["selector"] {
            guard let sf = r.fields(s, "AuthorizationPolicy.spec.selector", allowed: ["matchLabels"]),
                  let ml = sf["matchLabels"], let labels = r.stringMap(ml, "selector.matchLabels") else { return nil }
            selector = labels
        }
        var action = AuthorizationPolicy.Action.ALLOW
        if let a = f["action"], let text = r.string(a, "action") {
            guard let parsed = AuthorizationPolicy.Action(rawValue: text) else {
                r.error(a, "action '\(text)' is not supported (ALLOW or DENY; AUDIT and CUSTOM are not supported)")
                return nil
            }
            action = parsed
        }
        var rules: [AuthorizationPolicy.Rule]?
        if let rn = f["rules"] {
            guard let list = r.list(rn, "rules") else { return nil }
            rules = []
            for (i, node) in list.enumerated() {
                guard let rule = authorizationRule(node, "rules[\(i)]", r) else { return nil }
                rules?.append(rule)
            }
        }
        if action == .ALLOW, rules == nil {
            r.warning(spec, "ALLOW policy \(meta.name) has no rules: it allows nothing",
                      why: "with any ALLOW policy in force a request must match one; this one matches none, so it denies every request to the workloads it selects")
        }
        return AuthorizationPolicy(metadata: meta, selector: selector, action: action, rules: rules, location: loc)
    }

    private static func authorizationRule(_ node: Node, _ what: String, _ r: NodeReader) -> AuthorizationPolicy.Rule? {
        guard let f = r.fields(node, what, allowed: ["from", "to", "when"]) else { return nil }
        var rule = AuthorizationPolicy.Rule()
        if let fromNode = f["from"] {
            guard let list = r.list(fromNode, "\(what).from") else { return nil }
            rule.from = []
            for (i, item) in list.enumerated() {
                guard let itemFields = r.fields(item, "\(what).from[\(i)]", allowed: ["source"]), let s = itemFields["source"],
                      let sf = r.fields(s, "\(what).from[\(i)].source",
                                        allowed: ["principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks"],
                                        unsupported: ["requestPrincipals": "JWT (RequestAuthentication) is not supported",
                                                      "notRequestPrincipals": "JWT (RequestAuthentication) is not supported",
                                                      "remoteIpBlocks": "remoteIpBlocks is not supported (no ingress gateway)",
                                                      "notRemoteIpBlocks": "notRemoteIpBlocks is not supported (no ingress gateway)"]) else { return nil }
                var source = AuthorizationPolicy.Source()
                source.principals = sf["principals"].flatMap { r.stringList($0, "principals") }
                source.notPrincipals = sf["notPrincipals"].flatMap { r.stringList($0, "notPrincipals") }
                source.namespaces = sf["namespaces"].flatMap { r.stringList($0, "namespaces") }
                source.notNamespaces = sf["notNamespaces"].flatMap { r.stringList($0, "notNamespaces") }
                for key in ["ipBlocks", "notIpBlocks"] {
                    guard let n = sf[key] else { continue }
                    guard let texts = r.stringList(n, key) else { return nil }
                    var blocks: [CIDR] = []
                    for t in texts {
                        guard let block = CIDR(t.contains("/") ? t : (t.contains(":") ? t + "/128" : t + "/32")) else {
                            r.error(n, "\(key): '\(t)' is not an IP address or CIDR block")
                            return nil
                        }
                        blocks.append(block)
                    }
                    if key == "ipBlocks" { source.ipBlocks = blocks } else { source.notIpBlocks = blocks }
                }
                rule.from?.append(source)
            }
        }
        if let toNode = f["to"] {
            guard let list = r.list(toNode, "\(what).to") else { return nil }
            rule.to = []
            for (i, item) in list.enumerated() {
                guard let itemFields = r.fields(item, "\(what).to[\(i)]", allowed: ["operation"]), let o = itemFields["operation"],
                      let of = r.fields(o, "\(what).to[\(i)].operation",
                                        allowed: ["methods", "notMethods", "paths", "notPaths", "ports", "notPorts", "hosts", "notHosts"]) else { return nil }
                var op = AuthorizationPolicy.Operation()
                op.methods = of["methods"].flatMap { r.stringList($0, "methods") }
                op.notMethods = of["notMethods"].flatMap { r.stringList($0, "notMethods") }
                op.paths = of["paths"].flatMap { r.stringList($0, "paths") }
                op.notPaths = of["notPaths"].flatMap { r.stringList($0, "notPaths") }
                op.hosts = of["hosts"].flatMap { r.stringList($0, "hosts") }
                op.notHosts = of["notHosts"].flatMap { r.stringList($0, "notHosts") }
                for key in ["ports", "notPorts"] {
                    guard let n = of[key] else { continue }
                    guard let texts = r.stringList(n, key) else { return nil }
                    var ports: [UInt16] = []
                    for t in texts {
                        guard let p = UInt16(t), p > 0 else {
                            r.error(n, "\(key): '\(t)' is not a port number (Istio writes ports as strings: \"8080\")")
                            return nil
                        }
                        ports.append(p)
                    }
                    if key == "ports" { op.ports = ports } else { op.notPorts = ports }
                }
                rule.to?.append(op)
            }
        }
        if let whenNode = f["when"] {
            guard let list = r.list(whenNode, "\(what).when") else { return nil }
            rule.when = []
            for (i, item) in list.enumerated() {
                guard let cf = r.fields(item, "\(what).when[\(i)]", allowed: ["key", "values", "notValues"]),
                      let k = cf["key"], let key = r.string(k, "when.key") else { return nil }
                let known = ["source.principal", "source.namespace", "source.ip", "destination.port"]
                guard known.contains(key) || (key.hasPrefix("request.headers[") && key.hasSuffix("]") && key.count > 17) else {
                    r.error(k, "when.key '\(key)' is not supported (known: request.headers[NAME], \(known.joined(separator: ", ")))")
                    return nil
                }
                let values = cf["values"].flatMap { r.stringList($0, "values") }
                let notValues = cf["notValues"].flatMap { r.stringList($0, "notValues") }
                guard values != nil || notValues != nil else {
                    r.error(item, "when[\(i)] needs values or notValues")
                    return nil
                }
                rule.when?.append(.init(key: key, values: values, notValues: notValues))
            }
        }
        return rule
    }
}
