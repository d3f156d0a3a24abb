import WeftConfig

/// DestinationRule `connectionPool` limits of one workload proxy, per destination host:
/// requests in flight (HTTP/1.1: one per upstream connection, so `tcp.maxConnections`;
/// any version: `http.http2MaxRequests`), requests waiting for a slot
/// (`http.http1MaxPendingRequests`), and retries in flight (`http.maxRetries`). A request
/// over the limits is answered at once with 503 `UO` (upstream overflow) — the circuit
/// breaker trips instead of piling up work on an upstream that cannot keep up.
/// Loop-confined; the unit tests drive it directly.
final class ConnectionLimiter {
    enum Admission: Equatable { case granted, queued, overflow }

    private var active: [String: Int] = [:]
    private var retries: [String: Int] = [:]
    /// Waiting requests per host; each returns false when its request is gone.
    private var waiting: [String: [() -> Bool]] = [:]

    static func concurrency(_ limits: ConnectionPool, http2: Bool) -> Int? {
        [http2 ? nil : limits.maxConnections, limits.http2MaxRequests].compactMap { $0 }.min()
    }

    /// Admits a request to `host`, queues it (`onGrant` runs when a slot frees), or refuses.
    func admit(_ host: String, limit: Int?, maxPending: Int?, onGrant: @escaping () -> Bool) -> Admission {
        guard let limit else { return .granted }
        if active[host, default: 0] < limit {
            active[host, default: 0] += 1
            return .granted
        }
        if let maxPending, waiting[host, default: []].count >= maxPending { return .overflow }
        waiting[host, default: []].append(onGrant)
        return .queued
    }

    /// A granted request ended: its slot goes to the first waiting request still there.
    func release(_ host: String) {
        while var queue = waiting[host], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[host] = queue.isEmpty ? nil : queue
            if next() { return }  // the slot passes on; `active` is unchanged
        }
        let n = active[host, default: 1] - 1
        active[host] = n > 0 ? n : nil
    }

    func tryRetry(_ host: String, max: Int?) -> Bool {
        guard let max else { return true }
        guard retries[host, default: 0] < max else { return false }
        retries[host, default: 0] += 1
        return true
    }

    func releaseRetry(_ host: String) {
        let n = retries[host, default: 1] - 1
        retries[host] = n > 0 ? n : nil
    }

    func inFlight(_ host: String) -> Int { active[host] ?? 0 }
    func queued(_ host: String) -> Int { waiting[host]?.count ?? 0 }
}
