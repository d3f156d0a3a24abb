import Yams

extension ConfigParser {
    static func virtualService(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> VirtualService? {
        guard let f = r.fields(spec, "VirtualService.spec", allowed: ["hosts", "http", "gateways"], unsupported: [
            "tcp": "TCP routes are not supported yet (L4 traffic is forwarded to its destination)",
            "tls": "TLS (SNI) routes are not supported yet",
            "exportTo": "all config is mesh-wide",
        ]) else { return nil }
        guard let hostsNode = f["hosts"], let hosts = r.stringList(hostsNode, "hosts"), !hosts.isEmpty else {
            r.error(spec, "VirtualService \(meta.name): spec.hosts must list at least one host")
            return nil
        }
        if let g = f["gateways"], let gateways = r.stringList(g, "gateways"), gateways != ["mesh"] {
            r.error(g, "gateways: only 'mesh' is supported (Weft has no ingress gateways)")
        }
        var routes: [HTTPRoute] = []
        if let h = f["http"], let list = r.list(h, "http") {
            for (i, node) in list.enumerated() {
                if let route = httpRoute(node, "http[\(i)]", r) { routes.append(route) }
            }
        }
        return VirtualService(metadata: meta, hosts: hosts, http: routes, location: loc)
    }

    static func httpRoute(_ node: Node, _ what: String, _ r: NodeReader) -> HTTPRoute? {
        guard let f = r.fields(node, what, allowed: ["name", "match", "route", "rewrite", "headers", "timeout", "retries", "fault"], unsupported: [
            "redirect": "redirects are not supported yet", "directResponse": "direct responses are not supported yet",
            "delegate": "delegation is not supported", "mirror": "mirroring is not supported yet",
            "mirrorPercentage": "mirroring is not supported yet", "mirrors": "mirroring is not supported yet",
            "corsPolicy": "CORS policies are not supported yet",
        ]) else { return nil }
        var route = HTTPRoute(name: nil, match: [], route: [], location: r.location(node))
        if let n = f["name"] { route.name = r.string(n, "\(what).name") }
        if let m = f["match"], let list = r.list(m, "\(what).match") {
            route.match = list.enumerated().compactMap { matchRequest($1, "\(what).match[\($0)]", r) }
        }
        guard let dest = f["route"], let list = r.list(dest, "\(what).route"), !list.isEmpty else {
            r.error(node, "\(what): route must list at least one destination")
            return nil
        }
        route.route = list.enumerated().compactMap { routeDestination($1, "\(what).route[\($0)]", r) }
        if let rw = f["rewrite"], let rf = r.fields(rw, "\(what).rewrite", allowed: ["uri", "authority"],
                                                    unsupported: ["uriRegexRewrite": "regex rewrites are not supported yet"]) {
            route.rewrite = HTTPRewrite(uri: rf["uri"].flatMap { r.string($0, "rewrite.uri") },
                                        authority: rf["authority"].flatMap { r.string($0, "rewrite.authority") })
            // They replace the request line's target and the Host header.
            if let uri = route.rewrite?.uri, !HTTPFieldSyntax.isRequestTarget(uri), let n = rf["uri"] {
                r.error(n, "\(what).rewrite.uri \(HTTPFieldSyntax.quoted(uri)) has a space or control character")
            }
            if let authority = route.rewrite?.authority, !HTTPFieldSyntax.isRequestTarget(authority) || authority.contains("/"), let n = rf["authority"] {
                r.error(n, "\(what).rewrite.authority \(HTTPFieldSyntax.quoted(authority)) is not a host[:port]")
            }
        }
        if let h = f["headers"] { route.headers = headers(h, "\(what).headers", r) }
        if let t = f["timeout"] { route.timeout = r.duration(t, "\(what).timeout") }
        if let rt = f["retries"], let rf = r.fields(rt, "\(what).retries", allowed: ["attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"]) {
            let attempts = rf["attempts"].flatMap { r.int($0, "retries.attempts", 0...100) } ?? 0
            var retryOn: [String] = []
            if let on = rf["retryOn"], let text = r.string(on, "retries.retryOn") {
                retryOn = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                for policy in retryOn where !knownRetryOn.contains(policy) && Int(policy) == nil {
                    r.error(on, "retries.retryOn: unknown policy '\(policy)'" + NodeReader.suggestion(policy, knownRetryOn.sorted()))
                }
            }
            route.retries = HTTPRetry(attempts: attempts, perTryTimeout: rf["perTryTimeout"].flatMap { r.duration($0, "retries.perTryTimeout") },
                                      retryOn: retryOn)
        }
        if let fl = f["fault"] { route.fault = fault(fl, "\(what).fault", r) }
        return route
    }

    static let knownRetryOn: Set<String> = [
        "5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx", "retriable-status-codes",
        "retriable-headers", "envoy-ratelimited",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    ]

    static func matchRequest(_ node: Node, _ what: String, _ r: NodeReader) -> HTTPMatchRequest? {
        let unsupported = ["scheme", "authority", "queryParams", "sourceLabels", "gateways", "withoutHeaders", "sourceNamespace", "statPrefix"]
        guard let f = r.fields(node, what, allowed: ["name", "uri", "method", "headers", "port", "ignoreUriCase"],
                               unsupported: Dictionary(uniqueKeysWithValues: unsupported.map { ($0, "this match condition is not supported yet") }))
        else { return nil }
        var m = HTTPMatchRequest(location: r.location(node))
        if let n = f["name"] { m.name = r.string(n, "\(what).name") }
        if let u = f["uri"] { m.uri = stringMatch(u, "\(what).uri", r) }
        if let u = f["method"] { m.method = stringMatch(u, "\(what).method", r) }
        if let i = f["ignoreUriCase"], r.bool(i, "\(what).ignoreUriCase") == true {
            r.error(i, "\(what).ignoreUriCase: true is not supported yet")
        }
        if let h = f["headers"], let mapping = h.mapping {
            for (k, v) in mapping {
                guard let name = k.scalar?.string else { continue }
                if let sm = stringMatch(v, "\(what).headers.\(name)", r) { m.headers[name.lowercased()] = sm }
            }
        } else if let h = f["headers"] {
            r.error(h, "\(what).headers must be a mapping of header name to exact/prefix/regex")
        }
        if let p = f["port"] { m.port = r.int(p, "\(what).port", 1...65535).map(UInt16.init) }
        return m
    }

    static func stringMatch(_ node: Node, _ what: String, _ r: NodeReader) -> StringMatch? {
        guard let f = r.fields(node, what, allowed: ["exact", "prefix", "regex"]) else { return nil }
        guard f.count == 1, let (kind, valueNode) = f.first, let value = r.string(valueNode, "\(what).\(kind)") else {
            if f.count != 1 { r.error(node, "\(what) must have exactly one of exact, prefix, regex") }
            return nil
        }
        switch kind {
        case "exact": return .exact(value)
        case "prefix": return .prefix(value)
        default:
            do {
                _ = try Regex(value)
            } catch {
                r.error(valueNode, "\(what).regex '\(value)' is not a valid regular expression: \(error)")
                return nil
            }
            return .regex(value)
        }
    }

    static func routeDestination(_ node: Node, _ what: String, _ r: NodeReader) -> HTTPRouteDestination? {
        guard let f = r.fields(node, what, allowed: ["destination", "weight", "headers"]) else { return nil }
        guard let d = f["destination"], let df = r.fields(d, "\(what).destination", allowed: ["host", "subset", "port"]) else {
            if f["destination"] == nil { r.error(node, "\(what) has no destination") }
            return nil
        }
        guard let hostNode = df["host"], let host = r.string(hostNode, "\(what).destination.host") else {
            r.error(d, "\(what).destination has no host")
            return nil
        }
        var dest = Destination(host: host, subset: nil, port: nil, location: r.location(d))
        if let s = df["subset"] { dest.subset = r.string(s, "\(what).destination.subset") }
        if let p = df["port"], let pf = r.fields(p, "\(what).destination.port", allowed: ["number"]),
           let n = pf["number"], let number = r.int(n, "\(what).destination.port.number", 1...65535) {
            dest.port = PortSelector(number: UInt16(number))
        }
        var out = HTTPRouteDestination(destination: dest, weight: nil, headers: nil, location: r.location(node))
        if let w = f["weight"] { out.weight = r.int(w, "\(what).weight", 0...100) }
        if let h = f["headers"] { out.headers = headers(h, "\(what).headers", r) }
        return out
    }

    static func headers(_ node: Node, _ what: String, _ r: NodeReader) -> Headers? {
        guard let f = r.fields(node, what, allowed: ["request", "response"]) else { return nil }
        func ops(_ n: Node, _ w: String) -> HeaderOperations? {
            guard let o = r.fields(n, w, allowed: ["set", "add", "remove"]) else { return nil }
            var h = HeaderOperations()
            if let s = o["set"] { h.set = checked(r.stringMap(s, "\(w).set") ?? [:], s, "\(w).set") }
            if let a = o["add"] { h.add = checked(r.stringMap(a, "\(w).add") ?? [:], a, "\(w).add") }
            if let rm = o["remove"] {
                h.remove = r.stringList(rm, "\(w).remove") ?? []
                for name in h.remove where !HTTPFieldSyntax.isToken(name) {
                    r.error(rm, "\(w).remove: \(HTTPFieldSyntax.quoted(name)) is not a valid header name")
                }
            }
            return h
        }
        // Names and values go onto the wire as written: one that is not a header name, or a
        // value with a line break or control character, would split or corrupt the message.
        func checked(_ map: [String: String], _ n: Node, _ w: String) -> [String: String] {
            for (name, value) in map.sorted(by: { $0.key < $1.key }) {
                if !HTTPFieldSyntax.isToken(name) {
                    r.error(n, "\(w): \(HTTPFieldSyntax.quoted(name)) is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
                } else if !HTTPFieldSyntax.isFieldValue(value) {
                    r.error(n, "\(w).\(name): the value \(HTTPFieldSyntax.quoted(value)) has a line break or control character")
                }
            }
            return map
        }
        return Headers(request: f["request"].flatMap { ops($0, "\(what).request") },
                       response: f["response"].flatMap { ops($0, "\(what).response") })
    }

    static func fault(_ node: Node, _ what: String, _ r: NodeReader) -> HTTPFaultInjection? {
        guard let f = r.fields(node, what, allowed: ["delay", "abort"]) else { return nil }
        func percentage(_ fields: [String: Node], _ w: String) -> Double {
            guard let p = fields["percentage"], let pf = r.fields(p, "\(w).percentage", allowed: ["value"]),
                  let v = pf["value"] else { return 100 }
            return r.double(v, "\(w).percentage.value", 0...100) ?? 100
        }
        var out = HTTPFaultInjection()
        if let d = f["delay"], let df = r.fields(d, "\(what).delay", allowed: ["fixedDelay", "percentage"],
                                                 unsupported: ["percent": "use percentage.value", "exponentialDelay": "not supported"]) {
            if let fd = df["fixedDelay"], let delay = r.duration(fd, "\(what).delay.fixedDelay") {
                out.delay = .init(fixedDelay: delay, percentage: percentage(df, "\(what).delay"))
            } else if df["fixedDelay"] == nil {
                r.error(d, "\(what).delay needs fixedDelay")
            }
        }
        if let a = f["abort"], let af = r.fields(a, "\(what).abort", allowed: ["httpStatus", "percentage"],
                                                 unsupported: ["grpcStatus": "not supported yet", "http2Error": "not supported yet"]) {
            if let s = af["httpStatus"], let status = r.int(s, "\(what).abort.httpStatus", 200...599) {
                out.abort = .init(httpStatus: status, percentage: percentage(af, "\(what).abort"))
            } else if af["httpStatus"] == nil {
                r.error(a, "\(what).abort needs httpStatus")
            }
        }
        return out
    }

    static func retryBudget(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> RetryBudgetPolicy? {
        guard let f = r.fields(spec, "RetryBudget.spec", allowed: ["host", "ratio", "minRetriesPerSecond", "retryNonIdempotent"]) else { return nil }
        var b = RetryBudgetPolicy(metadata: meta, host: f["host"].flatMap { r.string($0, "RetryBudget.spec.host") }, location: loc)
        if let n = f["ratio"] { b.ratio = r.double(n, "ratio", 0...10) }
        if let n = f["minRetriesPerSecond"] { b.minRetriesPerSecond = r.double(n, "minRetriesPerSecond", 0...1_000_000) }
        if let n = f["retryNonIdempotent"], let v = r.bool(n, "retryNonIdempotent") {
            b.retryNonIdempotent = v
            if v {
                r.warning(n, "retryNonIdempotent: true",
                          why: "POST, PATCH… are then repeated after reaching the upstream; only safe if the app deduplicates them (idempotency keys)")
            }
        }
        if b.ratio == 0, b.minRetriesPerSecond == 0 {
            r.warning(spec, "a retry budget of 0 and 0/s", why: "no request is ever retried; remove the route's retries instead, or allow some")
        }
        return b
    }

    static func circuitBreaker(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> CircuitBreakerPolicy? {
        guard let f = r.fields(spec, "CircuitBreaker.spec", allowed: ["host", "failureRatio", "minimumRequests", "window", "openDuration", "halfOpenRequests"])
        else { return nil }
        guard let h = f["host"], let host = r.string(h, "CircuitBreaker.spec.host") else {
            r.error(spec, "CircuitBreaker \(meta.name): spec.host is required")
            return nil
        }
        var c = CircuitBreakerPolicy(metadata: meta, host: host, location: loc)
        if let n = f["failureRatio"], let v = r.double(n, "failureRatio", 0.01...1) { c.failureRatio = v }
        if let n = f["minimumRequests"], let v = r.int(n, "minimumRequests", 1...1_000_000) { c.minimumRequests = v }
        if let n = f["window"], let d = r.duration(n, "window") {
            if d < .seconds(1) { r.error(n, "window must be at least 1s") } else { c.window = d }
        }
        if let n = f["openDuration"], let d = r.duration(n, "openDuration") { c.openDuration = d }
        if let n = f["halfOpenRequests"], let v = r.int(n, "halfOpenRequests", 1...1000) { c.halfOpenRequests = v }
        return c
    }

    static func healthCheck(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> HealthCheck? {
        guard let f = r.fields(spec, "HealthCheck.spec", allowed: ["host", "http", "interval", "timeout", "unhealthyThreshold", "healthyThreshold"],
                               unsupported: ["tcp": "only HTTP checks exist today", "grpc": "only HTTP checks exist today"])
        else { return nil }
        guard let h = f["host"], let host = r.string(h, "HealthCheck.spec.host") else {
            r.error(spec, "HealthCheck \(meta.name): spec.host is required")
            return nil
        }
        guard let hn = f["http"], let hf = r.fields(hn, "HealthCheck.spec.http", allowed: ["path", "port"]),
              let pn = hf["path"], let path = r.string(pn, "http.path") else {
            r.error(spec, "HealthCheck \(meta.name): spec.http.path is required")
            return nil
        }
        if !path.hasPrefix("/") { r.error(pn, "http.path must start with /") }
        var check = HealthCheck(metadata: meta, host: host, path: path, port: nil, interval: .seconds(5), timeout: .seconds(1),
                                unhealthyThreshold: 2, healthyThreshold: 1, location: loc)
        if let p = hf["port"], let port = r.int(p, "http.port", 1...65535) { check.port = UInt16(port) }
        if let n = f["interval"], let d = r.duration(n, "interval") {
            if d < .milliseconds(100) { r.error(n, "interval must be at least 100ms") } else { check.interval = d }
        }
        if let n = f["timeout"], let d = r.duration(n, "timeout") { check.timeout = d }
        if check.timeout > check.interval { r.error(f["timeout"] ?? spec, "timeout (\(check.timeout)) must not exceed interval (\(check.interval))") }
        if let n = f["unhealthyThreshold"], let v = r.int(n, "unhealthyThreshold", 1...100) { check.unhealthyThreshold = v }
        if let n = f["healthyThreshold"], let v = r.int(n, "healthyThreshold", 1...100) { check.healthyThreshold = v }
        return check
    }

    static func rateLimitPolicy(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> RateLimitPolicy? {
        guard let f = r.fields(spec, "RateLimitPolicy.spec", allowed: ["host", "mode", "limits"])
        else { return nil }
        guard let h = f["host"], let host = r.string(h, "RateLimitPolicy.spec.host") else {
            r.error(spec, "RateLimitPolicy \(meta.name): spec.host is required")
            return nil
        }
        var policy = RateLimitPolicy(metadata: meta, host: host, limits: [], location: loc)
        if let m = f["mode"], let text = r.string(m, "RateLimitPolicy.spec.mode") {
            if let mode = RateLimitPolicy.Mode(rawValue: text) { policy.mode = mode } else {
                r.error(m, "RateLimitPolicy \(meta.name): spec.mode '\(text)' is not one of local, global")
            }
        }
        guard let l = f["limits"], let list = r.list(l, "spec.limits"), !list.isEmpty else {
            r.error(spec, "RateLimitPolicy \(meta.name): spec.limits needs at least one limit")
            return nil
        }
        let perUnit: [String: Double] = ["second": 1, "minute": 60, "hour": 3600]
        for (i, node) in list.enumerated() {
            let what = "limits[\(i)]"
            guard let lf = r.fields(node, what, allowed: ["name", "key", "requestsPerUnit", "unit", "burst", "match", "route"]) else { continue }
            var key = RateLimitPolicy.Limit.Key.sourceIP
            if let k = lf["key"] {
                if let text = k.string {
                    switch text {
                    case "sourceIP": key = .sourceIP
                    case "service": key = .service
                    case "sourceIdentity": key = .sourceIdentity
                    default:
                        r.error(k, "\(what).key: '\(text)' is not one of sourceIP, sourceIdentity, service, {header: NAME}")
                    }
                } else if let kf = r.fields(k, "\(what).key", allowed: ["header"]), let hn = kf["header"], let name = r.string(hn, "\(what).key.header") {
                    key = .header(name.lowercased())
                }
            }
            guard let rn = lf["requestsPerUnit"], let rate = r.int(rn, "\(what).requestsPerUnit", 1...1_000_000_000) else {
                r.error(node, "\(what): requestsPerUnit is required")
                continue
            }
            var unit = "second"
            if let u = lf["unit"], let text = r.string(u, "\(what).unit") {
                if perUnit[text] == nil { r.error(u, "\(what).unit: '\(text)' is not one of second, minute, hour") } else { unit = text }
            }
            let burst = lf["burst"].flatMap { r.int($0, "\(what).burst", 1...1_000_000_000) } ?? rate
            var matches: [HTTPMatchRequest] = []
            if let m = lf["match"], let ml = r.list(m, "\(what).match") {
                matches = ml.enumerated().compactMap { matchRequest($0.element, "\(what).match[\($0.offset)]", r) }
            }
            let name = lf["name"].flatMap { r.string($0, "\(what).name") } ?? "limit-\(i)"
            policy.limits.append(.init(name: name, key: key, perSecond: Double(rate) / (perUnit[unit] ?? 1), requestsPerUnit: rate,
                                       unit: unit, burst: burst, match: matches,
                                       route: lf["route"].flatMap { r.string($0, "\(what).route") }, location: r.location(node)))
        }
        return policy
    }

    static func destinationRule(_ spec: Node, _ meta: ObjectMeta, _ r: NodeReader, at loc: SourceLocation) -> DestinationRule? {
        guard let f = r.fields(spec, "DestinationRule.spec", allowed: ["host", "trafficPolicy", "subsets"], unsupported: [
            "exportTo": "all config is mesh-wide", "workloadSelector": "not supported",
        ]) else { return nil }
        guard let h = f["host"], let host = r.string(h, "DestinationRule.spec.host") else {
            r.error(spec, "DestinationRule \(meta.name): spec.host is required")
            return nil
        }
        var rule = DestinationRule(metadata: meta, host: host, trafficPolicy: nil, subsets: [], location: loc)
        if let tp = f["trafficPolicy"] { rule.trafficPolicy = trafficPolicy(tp, "trafficPolicy", r) }
        if let s = f["subsets"], let list = r.list(s, "subsets") {
            for (i, node) in list.enumerated() {
                guard let sf = r.fields(node, "subsets[\(i)]", allowed: ["name", "labels", "trafficPolicy"]) else { continue }
                guard let n = sf["name"], let name = r.string(n, "subsets[\(i)].name") else {
                    r.error(node, "subsets[\(i)] has no name")
                    continue
                }
                if rule.subsets.contains(where: { $0.name == name }) { r.error(n, "subset '\(name)' is defined twice") }
                rule.subsets.append(Subset(name: name, labels: sf["labels"].flatMap { r.stringMap($0, "subsets[\(i)].labels") } ?? [:],
                                           trafficPolicy: sf["trafficPolicy"].flatMap { trafficPolicy($0, "subsets[\(i)].trafficPolicy", r) },
                                           location: r.location(node)))
            }
        }
        return rule
    }

    static func trafficPolicy(_ node: Node, _ what: String, _ r: NodeReader) -> TrafficPolicy? {
        guard let f = r.fields(node, what, allowed: ["loadBalancer", "outlierDetection", "connectionPool"], unsupported: [
            "tls": "mesh TLS is automatic; origination is not supported", "portLevelSettings": "not supported yet",
            "tunnel": "not supported", "proxyProtocol": "not supported",
        ]) else { return nil }
        var policy = TrafficPolicy()
        if let o = f["outlierDetection"] { policy.outlierDetection = outlierDetection(o, "\(what).outlierDetection", r) }
        if let c = f["connectionPool"] { policy.connectionPool = connectionPool(c, "\(what).connectionPool", r) }
        guard let lb = f["loadBalancer"] else { return policy }
        policy.loadBalancer = loadBalancer(lb, what, r)
        return policy
    }

    static func outlierDetection(_ node: Node, _ what: String, _ r: NodeReader) -> OutlierDetection? {
        guard let f = r.fields(node, what, allowed: ["consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
                                                     "maxEjectionPercent", "minHealthPercent"],
                               unsupported: ["consecutiveErrors": "deprecated in Istio; use consecutive5xxErrors",
                                             "splitExternalLocalOriginErrors": "not supported; connect failures count as 5xx",
                                             "consecutiveLocalOriginFailures": "not supported; connect failures count as 5xx"])
        else { return nil }
        var o = OutlierDetection()
        if let n = f["consecutive5xxErrors"], let v = r.int(n, "\(what).consecutive5xxErrors", 0...1_000_000) { o.consecutive5xxErrors = v }
        if let n = f["consecutiveGatewayErrors"], let v = r.int(n, "\(what).consecutiveGatewayErrors", 0...1_000_000) { o.consecutiveGatewayErrors = v }
        if let n = f["interval"], let v = r.duration(n, "\(what).interval") { o.interval = v }
        if let n = f["baseEjectionTime"], let v = r.duration(n, "\(what).baseEjectionTime") { o.baseEjectionTime = v }
        if let n = f["maxEjectionPercent"], let v = r.int(n, "\(what).maxEjectionPercent", 0...100) {
            o.maxEjectionPercent = v
            if v == 100 {
                r.warning(n, "\(what).maxEjectionPercent: 100",
                          why: "every endpoint can be ejected at once; a shared dependency failing then leaves the service with none (set minHealthPercent, or keep it below 100)")
            }
        }
        if let n = f["minHealthPercent"], let v = r.int(n, "\(what).minHealthPercent", 0...100) { o.minHealthPercent = v }
        return o
    }

    static func connectionPool(_ node: Node, _ what: String, _ r: NodeReader) -> ConnectionPool? {
        guard let f = r.fields(node, what, allowed: ["tcp", "http"]) else { return nil }
        var c = ConnectionPool()
        if let t = f["tcp"], let tf = r.fields(t, "\(what).tcp", allowed: ["maxConnections", "connectTimeout"],
                                               unsupported: ["tcpKeepalive": "not supported yet", "maxConnectionDuration": "not supported yet",
                                                             "idleTimeout": "use http.idleTimeout"]) {
            if let n = tf["maxConnections"] { c.maxConnections = r.int(n, "\(what).tcp.maxConnections", 1...Int(Int32.max)) }
            if let n = tf["connectTimeout"] { c.connectTimeout = r.duration(n, "\(what).tcp.connectTimeout") }
        }
        if let h = f["http"], let hf = r.fields(h, "\(what).http", allowed: ["http1MaxPendingRequests", "http2MaxRequests",
                                                                              "maxRequestsPerConnection", "maxRetries", "idleTimeout"],
                                               unsupported: ["h2UpgradePolicy": "HTTP/1.1 is never upgraded to HTTP/2",
                                                             "useClientProtocol": "the upstream always speaks what the client spoke",
                                                             "maxConcurrentStreams": "not supported yet"]) {
            if let n = hf["http1MaxPendingRequests"] { c.http1MaxPendingRequests = r.int(n, "\(what).http.http1MaxPendingRequests", 0...Int(Int32.max)) }
            if let n = hf["http2MaxRequests"] { c.http2MaxRequests = r.int(n, "\(what).http.http2MaxRequests", 1...Int(Int32.max)) }
            if let n = hf["maxRequestsPerConnection"] { c.maxRequestsPerConnection = r.int(n, "\(what).http.maxRequestsPerConnection", 0...Int(Int32.max)) }
            if let n = hf["maxRetries"] { c.maxRetries = r.int(n, "\(what).http.maxRetries", 0...Int(Int32.max)) }
            if let n = hf["idleTimeout"] { c.idleTimeout = r.duration(n, "\(what).http.idleTimeout") }
        }
        return c
    }

    static func loadBalancer(_ lb: Node, _ what: String, _ r: NodeReader) -> LoadBalancer? {
        guard let lf = r.fields(lb, "\(what).loadBalancer", allowed: ["simple", "consistentHash"],
                                unsupported: ["localityLbSetting": "locality load balancing is not supported", "warmupDurationSecs": "not supported"])
        else { return nil }
        if lf.count != 1 { r.error(lb, "\(what).loadBalancer must have exactly one of simple, consistentHash") }
        if let s = lf["simple"], let text = r.string(s, "loadBalancer.simple") {
            guard let simple = LoadBalancer.Simple(rawValue: text) else {
                r.error(s, "loadBalancer.simple: unknown policy '\(text)' (known: ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH)")
                return nil
            }
            if simple == .ROUND_ROBIN {
                r.warning(s, "loadBalancer.simple: ROUND_ROBIN",
                          why: "round robin keeps sending a slow replica its full share; LEAST_REQUEST (the default) steers away from it")
            }
            return .simple(simple)
        }
        if let c = lf["consistentHash"], let cf = r.fields(c, "loadBalancer.consistentHash",
                                                            allowed: ["httpHeaderName", "httpCookie", "useSourceIp"],
                                                            unsupported: ["httpQueryParameterName": "not supported yet", "ringHash": "not supported yet",
                                                                          "maglev": "not supported", "minimumRingSize": "not supported yet"]) {
            if let h = cf["httpHeaderName"], let name = r.string(h, "consistentHash.httpHeaderName") {
                return .consistentHash(.header(name.lowercased()))
            }
            if let ck = cf["httpCookie"], let kf = r.fields(ck, "consistentHash.httpCookie", allowed: ["name", "ttl", "path"]),
               let n = kf["name"], let name = r.string(n, "httpCookie.name") {
                return .consistentHash(.cookie(name: name, ttl: kf["ttl"].flatMap { r.duration($0, "httpCookie.ttl") }))
            }
            if let s = cf["useSourceIp"], r.bool(s, "consistentHash.useSourceIp") == true {
                return .consistentHash(.sourceIP)
            }
            r.error(c, "loadBalancer.consistentHash needs httpHeaderName, httpCookie.name or useSourceIp: true")
        }
        return nil
    }
}
