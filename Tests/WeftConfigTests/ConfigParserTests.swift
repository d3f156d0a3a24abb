import WeftCore
import XCTest
@testable import WeftConfig

final class ConfigParserTests: XCTestCase {
    let canary = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: payments
          namespace: shop
        spec:
          hosts: [payments]
          http:
          - name: beta-users
            match:
            - headers:
                x-user:
                  exact: beta
              uri:
                prefix: /charge
            route:
            - destination: {host: payments, subset: v2}
          - route:
            - destination: {host: payments, subset: v1, port: {number: 80}}
              weight: 90
            - destination: {host: payments, subset: v2}
              weight: 10
            timeout: 2s
            retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,connect-failure"}
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: DestinationRule
        metadata: {name: payments, namespace: shop}
        spec:
          host: payments.shop.svc.cluster.local
          trafficPolicy:
            loadBalancer: {consistentHash: {httpHeaderName: X-User}}
          subsets:
          - name: v1
            labels: {version: v1}
          - name: v2
            labels: {version: v2}
        """

    func testIstioExampleParsesAndValidates() throws {
        let result = ConfigParser.parse(yaml: canary, file: "canary.yaml")
        XCTAssertEqual(result.diagnostics, [])
        XCTAssertEqual(result.resources.count, 2)
        guard case .virtualService(let vs) = result.resources[0], case .destinationRule(let dr) = result.resources[1] else {
            return XCTFail("kinds")
        }
        XCTAssertEqual(vs.metadata, ObjectMeta(name: "payments", namespace: "shop"))
        XCTAssertEqual(vs.http.count, 2)
        XCTAssertEqual(vs.http[0].match[0].headers["x-user"], .exact("beta"))
        XCTAssertEqual(vs.http[0].match[0].uri, .prefix("/charge"))
        XCTAssertEqual(vs.http[1].route.map(\.weight), [90, 10])
        XCTAssertEqual(vs.http[1].route[0].destination.port, PortSelector(number: 80))
        XCTAssertEqual(vs.http[1].timeout, .seconds(2))
        XCTAssertEqual(vs.http[1].retries, HTTPRetry(attempts: 3, perTryTimeout: .milliseconds(500), retryOn: ["5xx", "reset", "connect-failure"]))
        XCTAssertEqual(dr.trafficPolicy?.loadBalancer, .consistentHash(.header("x-user")))
        XCTAssertEqual(dr.subsets.map(\.labels), [["version": "v1"], ["version": "v2"]])
        // Subsets resolve across short and full host names; the only finding is the retry of
        // non-idempotent requests on 5xx/reset (the example does not pin the method).
        XCTAssertEqual(ConfigValidator.validate(result.resources).map(\.message),
                       ["retries on 5xx,reset,connect-failure also apply to non-idempotent requests (POST, PATCH)"])
    }

    func errors(_ yaml: String) -> [String] {
        let r = ConfigParser.parse(yaml: yaml, file: "f.yaml")
        return (r.diagnostics + ConfigValidator.validate(r.resources)).filter { $0.severity == .error }.map(\.description)
    }

    /// Header operations and rewrites go onto the wire as written (the relay does not check
    /// them again): names must be tokens, values free of line breaks and control characters.
    func testHeaderOperationsAndRewritesMustBeValidHTTP() {
        func vs(_ route: String) -> String {
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - \(route)\n    route: [{destination: {host: web}}]\n"
        }
        XCTAssertEqual(errors(vs(#"headers: {request: {set: {x-ok: "a\tb", x-too: "\u00e9"}}}"#)), [])
        XCTAssertEqual(errors(vs(#"headers: {request: {set: {x-a: "v\r\nx-injected: 1"}}}"#)),
                       [#"f.yaml:7:30: error: http[0].headers.request.set.x-a: the value "v\u{d}\u{a}x-injected: 1" has a line break or control character"#])
        XCTAssertEqual(errors(vs(#"headers: {response: {add: {"x a": "1"}}}"#)).first?.contains(#""x a" is not a valid header name"#), true)
        XCTAssertEqual(errors(vs(#"headers: {request: {remove: ["x:a"]}}"#)).first?.contains(#""x:a" is not a valid header name"#), true)
        XCTAssertEqual(errors(vs(#"rewrite: {uri: "/a b"}"#)).first?.contains(#"rewrite.uri "/a b" has a space"#), true)
        XCTAssertEqual(errors(vs(#"rewrite: {authority: "evil/x"}"#)).first?.contains("is not a host[:port]"), true)
        XCTAssertEqual(errors(vs(#"rewrite: {uri: /v2/, authority: "web.other:8080"}"#)), [])
    }

    func testErrorsCarryFileLineAndReason() {
        let typo = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - route:
                - destination: {host: web}
                  wieght: 50
            """
        XCTAssertEqual(errors(typo), ["f.yaml:9:7: error: http[0].route[0]: unknown field 'wieght' (did you mean 'weight'?)\n  why: a misspelt field would otherwise be silently ignored"])
        XCTAssertEqual(errors("kind: VirtualService\napiVersion: networking.istio.io/v1\nmetadata: {name: x}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}], tcp: []}\n").first,
                       "f.yaml:4:65: error: VirtualService.spec: field 'tcp' is not supported by Weft: TCP routes are not supported yet (L4 traffic is forwarded to its destination)")
        let broken = errors("a: [1, 2\n")
        XCTAssertEqual(broken.count, 1)
        XCTAssertTrue(broken.first?.hasPrefix("f.yaml:2:1: error: invalid YAML") ?? false, "\(broken)")
        let secondBroken = errors("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok}\nspec: {host: a}\n---\nb: [\n")
        XCTAssertEqual(secondBroken.count, 1, "an error in a later document is reported, not dropped: \(secondBroken)")
        XCTAssertEqual(errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").first,
                       "f.yaml:2:7: error: unknown kind 'ConfigMap' (supported: VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RateLimitPolicy, HealthCheck, CircuitBreaker, RetryBudget, MeshConfig)")
        XCTAssertEqual(errors("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [a]}\n").first,
                       "f.yaml:1:13: error: VirtualService: apiVersion networking.istio.io/v2 is not one of networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1")
        XCTAssertTrue(errors("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: x}\nspec: {}\n").first?.contains("not supported by Weft") ?? false)
    }

    func testBadValuesAreRejected() {
        func vs(_ http: String) -> String {
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n\(http)"
        }
        let cases: [(String, String)] = [
            ("  - match: [{uri: {regex: '(unclosed'}}]\n    route: [{destination: {host: web}}]\n", "is not a valid regular expression"),
            ("  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: web}}]\n", "exactly one of exact, prefix, regex"),
            ("  - route: [{destination: {host: web}, weight: 70}, {destination: {host: web}, weight: 20}]\n", "route weights add up to 90, not 100"),
            ("  - route: [{destination: {host: web}, weight: 170}]\n", "must be between 0 and 100, got 170"),
            ("  - route: [{destination: {host: web, subset: v3}}]\n", "unknown subset 'v3' of web (no DestinationRule defines subsets for web.default.svc.cluster.local)"),
            ("  - route: []\n", "route must list at least one destination"),
            ("  - route: [{destination: {host: web}}]\n    timeout: soon\n", "timeout must be a duration"),
            ("  - route: [{destination: {host: web}}]\n    retries: {attempts: 2, retryOn: '5xx,sometimes'}\n", "unknown policy 'sometimes'"),
            ("  - route: [{destination: {host: web}}]\n    fault: {abort: {percentage: {value: 50}}}\n", "abort needs httpStatus"),
            ("  - route: [{destination: {host: web}}]\n    mirror: {host: other}\n", "mirroring is not supported yet"),
        ]
        for (http, expected) in cases {
            let found = errors(vs(http))
            XCTAssertTrue(found.contains { $0.contains(expected) }, "expected '\(expected)' in \(found)")
        }
        let dup = vs("  - route: [{destination: {host: web}}]\n") + "\n---\n" + vs("  - route: [{destination: {host: web}}]\n")
        XCTAssertTrue(errors(dup).contains { $0.contains("is defined twice (first at f.yaml:1:1)") }, "\(errors(dup))")
    }

    func testWarningsExplainWhy() {
        let yaml = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec:
              hosts: [web]
              http:
              - route: [{destination: {host: web}}]
                timeout: 1s
                retries: {attempts: 3, perTryTimeout: 500ms}
              - match: [{uri: {prefix: /admin}}]
                route: [{destination: {host: web}}]
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
            """
        let r = ConfigParser.parse(yaml: yaml, file: "w.yaml")
        let warnings = (r.diagnostics + ConfigValidator.validate(r.resources)).filter { $0.severity == .warning }
        XCTAssertEqual(r.errors, [])
        XCTAssertEqual(warnings.count, 3, "\(warnings)")
        XCTAssertTrue(warnings.allSatisfy { $0.why != nil })
        XCTAssertTrue(warnings.contains { $0.message.contains("never reached") && $0.location.line == 10 })
        XCTAssertTrue(warnings.contains { $0.message.contains("shorter than perTryTimeout × attempts") })
        XCTAssertTrue(warnings.contains { $0.message.contains("ROUND_ROBIN") })
    }

    func testCrossResourceWarnings() {
        let yaml = """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: a}
            spec:
              hosts: [web]
              http:
              - route: [{destination: {host: web, subset: v1}}]
                retries: {attempts: 2, retryOn: "5xx,reset"}
            ---
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: b}
            spec:
              hosts: [web.default.svc.cluster.local]
              http:
              - match: [{method: {exact: GET}}]
                route: [{destination: {host: web}}]
                retries: {attempts: 2, retryOn: 5xx}
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              subsets:
              - {name: v1, labels: {version: v1}}
              - {name: again, labels: {version: v1}}
              - {name: all, labels: {}}
            """
        let r = ConfigParser.parse(yaml: yaml, file: "x.yaml")
        XCTAssertEqual(r.errors, [])
        let warnings = ConfigValidator.validate(r.resources).filter { $0.severity == .warning }
        XCTAssertEqual(warnings.map(\.location.line).sorted(), [7, 10, 27, 28], "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.message.contains("also claimed by VirtualService default/a") })
        XCTAssertTrue(warnings.contains { $0.message.contains("non-idempotent") && $0.location.line == 7 }, "GET-only route b is not warned")
        XCTAssertTrue(warnings.contains { $0.message.contains("subsets v1 and again select the same labels") })
        XCTAssertTrue(warnings.contains { $0.message.contains("subset all has no labels") })
        XCTAssertTrue(warnings.allSatisfy { $0.why != nil })
    }

    func testTrafficPolicyResilienceFieldsParseAndSubsetLevelIsRefused() {
        let ok = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 1m, maxEjectionPercent: 100}}
            """, file: "o.yaml")
        XCTAssertEqual(ok.errors, [])
        guard case .destinationRule(let dr)? = ok.resources.first else { return XCTFail("\(ok.diagnostics)") }
        XCTAssertEqual(dr.trafficPolicy?.outlierDetection?.consecutive5xxErrors, 3)
        XCTAssertEqual(dr.trafficPolicy?.outlierDetection?.baseEjectionTime, .seconds(60))
        XCTAssertEqual(dr.trafficPolicy?.outlierDetection?.interval, .seconds(10), "Istio's default")
        XCTAssertTrue(ok.diagnostics.contains { $0.severity == .warning && $0.message.contains("maxEjectionPercent: 100") })
        let subset = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec:
              host: web
              subsets: [{name: v1, labels: {v: "1"}, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}}]
            """, file: "s.yaml")
        XCTAssertEqual(subset.errors, [], "a subset's own outlierDetection is supported")
        guard case .destinationRule(let sd)? = subset.resources.first else { return XCTFail("\(subset.diagnostics)") }
        XCTAssertEqual(sd.subsets.first?.trafficPolicy?.outlierDetection?.consecutive5xxErrors, 3)
        let pool = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web}
            spec: {host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, connectTimeout: 250ms}, http: {http1MaxPendingRequests: 0, maxRetries: 2, h2UpgradePolicy: UPGRADE}}}}
            """, file: "p.yaml")
        XCTAssertTrue(pool.errors.contains { $0.message.contains("h2UpgradePolicy") }, "\(pool.diagnostics)")
        XCTAssertEqual(pool.errors.count, 1, "\(pool.diagnostics)")
    }

    func testRateLimitPolicy() {
        let ok = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec:
              host: web
              limits:
              - {name: per-user, key: {header: X-User}, requestsPerUnit: 600, unit: minute}
              - {requestsPerUnit: 5, burst: 1, key: service, match: [{uri: {prefix: /admin}}]}
            """, file: "r.yaml")
        XCTAssertEqual(ok.errors, [])
        guard case .rateLimitPolicy(let p)? = ok.resources.first else { return XCTFail("\(ok.diagnostics)") }
        XCTAssertEqual(p.limits[0].key, .header("x-user"))
        XCTAssertEqual(p.limits[0].perSecond, 10)
        XCTAssertEqual(p.limits[0].burst, 600)
        XCTAssertEqual(p.limits[1].name, "limit-1")
        XCTAssertEqual(p.limits[1].match.first?.uri, .prefix("/admin"))
        XCTAssertEqual(p.mode, .local, "local buckets unless asked")
        let global = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec: {host: web, mode: global, limits: [{key: service, requestsPerUnit: 5}]}
            """, file: "g.yaml")
        guard case .rateLimitPolicy(let g)? = global.resources.first else { return XCTFail("\(global.diagnostics)") }
        XCTAssertEqual(g.mode, .global)
        let badMode = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec: {host: web, mode: cluster, limits: [{key: service, requestsPerUnit: 5}]}
            """, file: "m.yaml")
        XCTAssertEqual(badMode.errors.map(\.message), ["RateLimitPolicy web: spec.mode 'cluster' is not one of local, global"])
        let routed = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: web}
            spec: {hosts: [web], http: [{name: checkout, route: [{destination: {host: web}}]}]}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec:
              host: web
              limits:
              - {name: ok, key: service, requestsPerUnit: 5, route: checkout}
              - {name: typo, key: service, requestsPerUnit: 5, route: chekout}
            """, file: "rt.yaml")
        XCTAssertEqual(routed.errors, [])
        guard case .rateLimitPolicy(let rp)? = routed.resources.last else { return XCTFail("\(routed.diagnostics)") }
        XCTAssertEqual(rp.limits.map(\.route), ["checkout", "chekout"])
        let warnings = ConfigValidator.validate(routed.resources)
        XCTAssertEqual(warnings.map(\.message), ["limit typo of RateLimitPolicy web names route 'chekout', which no VirtualService for web has"])
        let bad = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: RateLimitPolicy
            metadata: {name: web}
            spec:
              host: web
              limits: [{requestsPerUnit: 5, unit: fortnight, key: sourceIdentity}]
            """, file: "b.yaml")
        XCTAssertTrue(bad.errors.contains { $0.message.contains("fortnight") && $0.location.line == 6 }, "\(bad.diagnostics)")
        XCTAssertTrue(bad.errors.contains { $0.message.contains("fortnight") }, "\(bad.diagnostics)")
        XCTAssertFalse(bad.errors.contains { $0.message.contains("sourceIdentity") }, "sourceIdentity is a key: \(bad.diagnostics)")
    }

    func testHealthCheck() {
        let ok = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: HealthCheck
            metadata: {name: web}
            spec: {host: web, http: {path: /healthz}}
            """, file: "h.yaml")
        guard case .healthCheck(let h)? = ok.resources.first else { return XCTFail("\(ok.diagnostics)") }
        XCTAssertEqual([h.interval, h.timeout], [.seconds(5), .seconds(1)])
        XCTAssertEqual([h.unhealthyThreshold, h.healthyThreshold], [2, 1])
        let bad = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: HealthCheck
            metadata: {name: web}
            spec: {host: web, http: {path: healthz}, interval: 1s, timeout: 2s}
            """, file: "b.yaml")
        XCTAssertTrue(bad.errors.contains { $0.message.contains("must start with /") }, "\(bad.diagnostics)")
        XCTAssertTrue(bad.errors.contains { $0.message.contains("must not exceed interval") }, "\(bad.diagnostics)")
    }

    func testCircuitBreaker() {
        let ok = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: CircuitBreaker
            metadata: {name: web}
            spec: {host: web, failureRatio: 0.25, openDuration: 1m}
            """, file: "c.yaml")
        guard case .circuitBreaker(let c)? = ok.resources.first else { return XCTFail("\(ok.diagnostics)") }
        XCTAssertEqual(c.failureRatio, 0.25)
        XCTAssertEqual(c.openDuration, .seconds(60))
        XCTAssertEqual([c.minimumRequests, c.halfOpenRequests], [20, 3], "defaults")
        let bad = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: CircuitBreaker
            metadata: {name: web}
            spec: {host: web, failureRatio: 2, window: 100ms}
            """, file: "b.yaml")
        XCTAssertEqual(bad.errors.count, 2, "\(bad.diagnostics)")
    }

    func testRetryBudget() {
        let r = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: RetryBudget
            metadata: {name: mesh-default}
            spec: {ratio: 0.1, minRetriesPerSecond: 1, retryNonIdempotent: true}
            """, file: "rb.yaml")
        guard case .retryBudget(let b)? = r.resources.first else { return XCTFail("\(r.diagnostics)") }
        XCTAssertNil(b.host, "no host: the mesh-wide default")
        XCTAssertEqual(b.ratio, 0.1)
        XCTAssertTrue(b.retryNonIdempotent)
        XCTAssertTrue(r.diagnostics.contains { $0.severity == .warning && $0.message.contains("retryNonIdempotent") })
    }

    func testShortHostNames() {
        XCTAssertEqual(ConfigValidator.fqdn("web", namespace: "shop"), "web.shop.svc.cluster.local")
        XCTAssertEqual(ConfigValidator.fqdn("web.blog", namespace: "shop"), "web.blog.svc.cluster.local")
        XCTAssertEqual(ConfigValidator.fqdn("web.blog.svc", namespace: "shop"), "web.blog.svc.cluster.local")
        XCTAssertEqual(ConfigValidator.fqdn("api.example.com", namespace: "shop"), "api.example.com")
    }

    func testDurations() {
        XCTAssertEqual(NodeReader.parseDuration("1.5s"), .milliseconds(1500))
        XCTAssertEqual(NodeReader.parseDuration("250ms"), .milliseconds(250))
        XCTAssertEqual(NodeReader.parseDuration("2m"), .seconds(120))
        XCTAssertEqual(NodeReader.parseDuration("1h"), .seconds(3600))
        for bad in ["", "s", "1", "-1s", "1d", "1.2.3s"] { XCTAssertNil(NodeReader.parseDuration(bad), bad) }
    }

    /// Arbitrary text never traps the parser.
    func testGarbageNeverCrashes() {
        let pieces = ["apiVersion:", "kind: VirtualService", "metadata:", "  name:", "spec:", "  hosts:", "  - ", "http:", "{", "[", "]",
                      "}", ": :", "- route:", "weight: -1", "\t", "&a", "*a", "!!binary", "---", "...", "\"", "'", "#", "?", "|", ">"]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            let text = (0..<Int.random(in: 1...12, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined(separator: Bool.random(using: &rng) ? "\n" : " ")
            let r = ConfigParser.parse(yaml: text, file: "g.yaml")
            _ = ConfigValidator.validate(r.resources)
        }
    }
}

final class MeshConfigParserTests: XCTestCase {
    func testMeshConfigParsesAndRefusesWithLines() {
        let good = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: MeshConfig
            metadata: {name: mesh, namespace: weft-system}
            spec:
              outboundTrafficPolicy:
                mode: REGISTRY_ONLY
                allowedDestinations:
                - cidr: 10.0.0.0/8
                  protocol: tcp
                  ports: [5432, 6379]
                - cidr: 2001:db8::1
            """, file: "m.yaml")
        guard case .meshConfig(let m)? = good.resources.first else { return XCTFail("\(good.diagnostics)") }
        XCTAssertEqual(m.outboundMode, .REGISTRY_ONLY)
        XCTAssertEqual(m.allowedDestinations, [.init(cidr: CIDR("10.0.0.0/8")!, ports: [5432, 6379], proto: .TCP),
                                               .init(cidr: CIDR("2001:db8::1")!)])
        let bad = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: MeshConfig
            metadata: {name: mesh}
            spec:
              outboundTrafficPolicy:
                allowedDestinations:
                - cidr: 10.0.0.0/8
                  protocol: ICMP
                  ports: [7]
            """, file: "m.yaml")
        XCTAssertTrue(bad.resources.isEmpty)
        XCTAssertTrue(bad.diagnostics.contains { "\($0)".contains("m.yaml:9") && "\($0)".contains("ICMP has no ports") }, "\(bad.diagnostics)")
        let two = ConfigParser.parse(yaml: """
            apiVersion: weft.dev/v1alpha1
            kind: MeshConfig
            metadata: {name: a}
            spec: {}
            ---
            apiVersion: weft.dev/v1alpha1
            kind: MeshConfig
            metadata: {name: b}
            spec: {}
            """, file: "m.yaml")
        let cross = ConfigValidator.validate(two.resources)
        XCTAssertTrue(cross.contains { $0.severity == .error && "\($0)".contains("more than one MeshConfig") }, "\(cross)")
    }
}

final class DurationParsingTests: XCTestCase {
    /// A duration too large for Int64 nanoseconds is an error, not a trap (weft-fuzz found the
    /// trap: `perTryTimeout: 199999999999999999999s` crashed the parser).
    func testHugeAndOddDurationsAreRefused() {
        XCTAssertEqual(IstioDuration.parse("1.5s"), .milliseconds(1500))
        XCTAssertEqual(IstioDuration.parse("100us"), .microseconds(100))
        for bad in ["199999999999999999999s", "1e400s", "99999999999h", "٣s", "-1s", "s", "1.2.3s", "inf s"] {
            XCTAssertNil(IstioDuration.parse(bad), bad)
        }
        let r = ConfigParser.parse(yaml: """
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {name: r}
            spec:
              hosts: [web]
              http:
              - route: [{destination: {host: web}}]
                retries: {attempts: 2, perTryTimeout: 199999999999999999999s}
            """, file: "d.yaml")
        XCTAssertTrue(r.resources.isEmpty)
        XCTAssertTrue(r.diagnostics.contains { "\($0)".contains("d.yaml:8") && "\($0)".contains("must be a duration") }, "\(r.diagnostics)")
    }
}

