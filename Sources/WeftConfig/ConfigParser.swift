import WeftCore
import Yams

/// Parses multi-document YAML into resources, strictly. Every problem is a diagnostic with
/// file:line:column; a document with errors yields no resource, the others still do (so a
/// lint run reports everything at once, and an apply can refuse the whole file).
public enum ConfigParser {
    public static let networkingVersions = ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"]

    public struct Result: Sendable {
        public var resources: [Resource] = []
        /// Each resource's document, re-serialised (what the agent stores and shows).
        public var sources: [String] = []
        public var diagnostics: [Diagnostic] = []
        public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    }

    public static func parse(yaml: String, file: String) -> Result {
        var result = Result()
        var documents: [Node] = []
        do {
            // YamlSequence stores an error met mid-stream in `.error` and just ends: iterate
            // by hand, or a broken document would silently disappear.
            var sequence = try compose_all(yaml: yaml)
            while let node = sequence.next() { documents.append(node) }
            if let error = sequence.error { throw error }
        } catch let e as YamlError {
            result.diagnostics.append(Diagnostic(.error, at: yamlErrorLocation(e, file: file), "invalid YAML: \(yamlErrorText(e))"))
            return result
        } catch {
            result.diagnostics.append(Diagnostic(.error, at: SourceLocation(file: file, line: 0, column: 0), "invalid YAML: \(error)"))
            return result
        }
        for doc in documents {
            let reader = NodeReader(file: file)
            if let resource = parseDocument(doc, reader) {
                result.resources.append(resource)
                result.sources.append((try? Yams.serialize(node: doc)) ?? "")
            }
            result.diagnostics += reader.diagnostics
        }
        return result
    }

    static func parseDocument(_ doc: Node, _ r: NodeReader) -> Resource? {
        if doc.mapping?.isEmpty ?? false { return nil }
        guard let top = r.fields(doc, "document", allowed: ["apiVersion", "kind", "metadata", "spec"], ignored: ["status"]) else { return nil }
        guard let kindNode = top["kind"], let kind = r.string(kindNode, "kind") else {
            r.error(doc, "document has no kind")
            return nil
        }
        guard let versionNode = top["apiVersion"], let version = r.string(versionNode, "apiVersion") else {
            r.error(doc, "\(kind) has no apiVersion")
            return nil
        }
        switch kind {
        case "VirtualService", "DestinationRule":
            guard networkingVersions.contains(version) else {
                r.error(versionNode, "\(kind): apiVersion \(version) is not one of \(networkingVersions.joined(separator: ", "))")
                return nil
            }
        case "RateLimitPolicy", "HealthCheck", "CircuitBreaker", "RetryBudget", "MeshConfig":
            guard version == "weft.dev/v1alpha1" else {
                r.error(versionNode, "\(kind): apiVersion \(version) is not weft.dev/v1alpha1")
                return nil
            }
        case "PeerAuthentication", "AuthorizationPolicy":
            guard securityVersions.contains(version) else {
                r.error(versionNode, "\(kind): apiVersion \(version) is not one of \(securityVersions.joined(separator: ", "))")
                return nil
            }
        case "RequestAuthentication":
            r.error(kindNode, "kind \(kind) (JWT, security.istio.io) is not supported by Weft")
            return nil
        case "Gateway", "ServiceEntry", "Sidecar", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup", "ProxyConfig", "Telemetry", "WasmPlugin":
            r.error(kindNode, "kind \(kind) is not supported by Weft")
            return nil
        default:
            r.error(kindNode, "unknown kind '\(kind)' (supported: VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RateLimitPolicy, HealthCheck, CircuitBreaker, RetryBudget, MeshConfig)")
            return nil
        }
        guard let metaNode = top["metadata"], let meta = metadata(metaNode, kind, r) else {
            if top["metadata"] == nil { r.error(doc, "\(kind) has no metadata.name") }
            return nil
        }
        guard let spec = top["spec"] else {
            r.error(doc, "\(kind) \(meta.name) has no spec")
            return nil
        }
        let errorsBefore = r.diagnostics.filter { $0.severity == .error }.count
        let resource: Resource?
        if kind == "AuthorizationPolicy" {
            resource = authorizationPolicy(spec, meta, r, at: r.location(doc)).map(Resource.authorizationPolicy)
        } else if kind == "PeerAuthentication" {
            resource = peerAuthentication(spec, meta, r, at: r.location(doc)).map(Resource.peerAuthentication)
        } else if kind == "VirtualService" {
            resource = virtualService(spec, meta, r, at: r.location(doc)).map(Resource.virtualService)
        } else if kind == "RetryBudget" {
            resource = retryBudget(spec, meta, r, at: r.location(doc)).map(Resource.retryBudget)
        } else if kind == "MeshConfig" {
            resource = meshConfig(spec, meta, r, at: r.location(doc)).map(Resource.meshConfig)
        } else if kind == "CircuitBreaker" {
            resource = circuitBreaker(spec, meta, r, at: r.location(doc)).map(Resource.circuitBreaker)
        } else if kind == "HealthCheck" {
            resource = healthCheck(spec, meta, r, at: r.location(doc)).map(Resource.healthCheck)
        } else if kind == "RateLimitPolicy" {
            resource = rateLimitPolicy(spec, meta, r, at: r.location(doc)).map(Resource.rateLimitPolicy)
        } else {
            resource = destinationRule(spec, meta, r, at: r.location(doc)).map(Resource.destinationRule)
        }
        return r.diagnostics.filter { $0.severity == .error }.count == errorsBefore ? resource : nil
    }

    static func metadata(_ node: Node, _ kind: String, _ r: NodeReader) -> ObjectMeta? {
        guard let f = r.fields(node, "\(kind).metadata", allowed: ["name", "namespace"],
                               ignored: ["labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp"]) else { return nil }
        guard let nameNode = f["name"], let name = r.string(nameNode, "metadata.name") else {
            r.error(node, "\(kind) has no metadata.name")
            return nil
        }
        guard isDNSSubdomain(name) else {
            r.error(nameNode, "metadata.name '\(name)' must be lowercase letters, digits, '-' and '.' (DNS-1123)")
            return nil
        }
        var namespace = "default"
        if let nsNode = f["namespace"], let ns = r.string(nsNode, "metadata.namespace") {
            guard (try? MeshNamespaceCheck.validate(ns)) != nil else {
                r.error(nsNode, "metadata.namespace '\(ns)' must be a DNS label")
                return nil
            }
            namespace = ns
        }
        return ObjectMeta(name: name, namespace: namespace)
    }

    static func isDNSSubdomain(_ s: String) -> Bool {
        guard let first = s.first, let last = s.last, s.count <= 253 else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-" || $0 == ".") }
            && (first.isLetter || first.isNumber) && (last.isLetter || last.isNumber)
    }

    static func yamlErrorLocation(_ e: YamlError, file: String) -> SourceLocation {
        switch e {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return SourceLocation(file: file, line: mark.line, column: mark.column)
        default:
            return SourceLocation(file: file, line: 0, column: 0)
        }
    }

    static func yamlErrorText(_ e: YamlError) -> String {
        switch e {
        case .scanner(let context, let problem, _, _), .parser(let context, let problem, _, _), .composer(let context, let problem, _, _):
            return [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ", ")
        default:
            return "\(e)"
        }
    }
}

enum MeshNamespaceCheck {
    static func validate(_ s: String) throws {
        _ = try MeshNamespace(s)
    }
}
