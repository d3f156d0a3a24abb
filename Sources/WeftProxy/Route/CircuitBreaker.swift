import WeftConfig

/// A service's circuit breaker (weft.dev/v1alpha1 CircuitBreaker): closed → open when the
/// failure ratio over a sliding window crosses the threshold (with a minimum of requests);
/// open fails fast for `openDuration`; then half-open lets `halfOpenRequests` probe requests
/// through — all succeed: closed; any fails: open again. Pure value type on a nanosecond
/// clock; the directory holds one per host under its lock.
public struct CircuitBreaker: Sendable, Equatable {
    public enum Phase: String, Sendable, Codable { case closed, open, halfOpen = "half-open" }

    public enum Admission: Equatable, Sendable {
        case allow
        /// Allowed as one of the half-open probes: its outcome decides.
        case probe
        /// Open: fail fast; seconds until probes are let through.
        case reject(retryIn: Double)
    }

    public private(set) var phase = Phase.closed
    private var openUntil: UInt64 = 0
    private var halfOpenSince: UInt64 = 0
    private var probesInFlight = 0
    private var probeSuccesses = 0
    /// Requests and failures per one-second bucket of the window.
    private var buckets: [(second: UInt64, requests: Int, failures: Int)] = []

    public init() {}

    public mutating func admit(_ config: CircuitBreakerPolicy, now: UInt64) -> Admission {
        let openNanos = config.openDuration.nanosecondsClamped
        if phase == .open {
            guard now >= openUntil else { return .reject(retryIn: Double(openUntil - now) / 1e9) }
            phase = .halfOpen
            halfOpenSince = now
            probesInFlight = 0
            probeSuccesses = 0
        }
        if phase == .halfOpen {
            // Probes whose answers never came (their clients left) do not hold it half-open forever.
            if now - halfOpenSince > openNanos {
                halfOpenSince = now
                probesInFlight = 0
            }
            guard probesInFlight + probeSuccesses < config.halfOpenRequests else { return .reject(retryIn: 0) }
            probesInFlight += 1
            return .probe
        }
        return .allow
    }

    /// One answer (`failed`: a 5xx, a failed connect, a reset or a timeout).
    public mutating func record(failed: Bool, probe: Bool, _ config: CircuitBreakerPolicy, now: UInt64) {
        switch phase {
        case .halfOpen:
            guard probe else { return }
            probesInFlight = max(0, probesInFlight - 1)
            if failed {
                trip(config, now: now)
            } else {
                probeSuccesses += 1
                if probeSuccesses >= config.halfOpenRequests {
                    phase = .closed
                    buckets = []
                }
            }
        case .open:
            return
        case .closed:
            let second = now / 1_000_000_000
            let window = UInt64(max(1, config.window.components.seconds))
            buckets.removeAll { second - $0.second >= window }
            if let last = buckets.indices.last, buckets[last].second == second {
                buckets[last].requests += 1
                buckets[last].failures += failed ? 1 : 0
            } else {
                buckets.append((second, 1, failed ? 1 : 0))
            }
            let requests = buckets.reduce(0) { $0 + $1.requests }, failures = buckets.reduce(0) { $0 + $1.failures }
            if requests >= config.minimumRequests, Double(failures) >= config.failureRatio * Double(requests) {
                trip(config, now: now)
            }
        }
    }

    private mutating func trip(_ config: CircuitBreakerPolicy, now: UInt64) {
        phase = .open
        openUntil = now + config.openDuration.nanosecondsClamped
        buckets = []
        probesInFlight = 0
        probeSuccesses = 0
    }

    public static func == (a: CircuitBreaker, b: CircuitBreaker) -> Bool {
        a.phase == b.phase && a.openUntil == b.openUntil && a.probesInFlight == b.probesInFlight && a.probeSuccesses == b.probeSuccesses
    }
}
