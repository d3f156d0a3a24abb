import Logging
import NIOCore
import Synchronization
import WeftCore

/// Decides, counts and logs the flows one workload sends out of the mesh. Shared by the
/// outbound TCP path (on the workload's loop) and the NFQUEUE reader (its own thread).
///
/// Logging is bounded: a flood of new flows (a UDP port scan, say) logs at most
/// `linesPerSecond` lines a second, then one line saying how many were not logged; the
/// counters always count every flow.
public final class EgressAuditor: Sendable {
    public let workload: String
    let directory: ServiceDirectory
    let counters: ProxyCounters
    let logger: Logger
    let linesPerSecond: Int
    private let budget = Mutex<(second: UInt64, lines: Int, suppressed: Int)>((0, 0, 0))

    public init(workload: String, directory: ServiceDirectory, counters: ProxyCounters, logger: Logger, linesPerSecond: Int = 20) {
        self.workload = workload
        self.directory = directory
        self.counters = counters
        self.logger = logger
        self.linesPerSecond = linesPerSecond
    }

    /// A connection refused at the per-workload limit: logged within the same line budget.
    public func noteOverLimit(direction: String, limit: Int) {
        if take(now: NIODeadline.now().uptimeNanoseconds / 1_000_000_000) {
            logger.warning("\(direction) connection refused: \(limit) connections already open (--max-connections-per-workload)",
                           metadata: ["workload": "\(workload)"])
        }
    }

    /// The verdict for a new flow, counted and logged. A TCP flow to the registry is the
    /// mesh's ordinary business: neither counted nor logged here.
    public func check(_ flow: EgressFlow, nowSeconds: UInt64 = NIODeadline.now().uptimeNanoseconds / 1_000_000_000) -> EgressVerdict {
        let inRegistry = directory.isInRegistry(flow.destination)
        let verdict = EgressDecision.decide(flow, policy: directory.meshConfig, inRegistry: inRegistry)
        if flow.proto == .tcp, inRegistry { return verdict }
        counters.countEgress(flow.proto, allowed: verdict.allowed)
        // Allowed TCP leaves a line in the access log; denials and non-TCP flows only here.
        if verdict.allowed, flow.proto == .tcp { return verdict }
        if take(now: nowSeconds) {
            let line = "egress \(flow) \(verdict.allowed ? "allowed" : "denied"): \(verdict.reason)"
            if verdict.allowed {
                logger.info("\(line)", metadata: ["workload": "\(workload)"])
            } else {
                logger.warning("\(line)", metadata: ["workload": "\(workload)"])
            }
        }
        return verdict
    }

    /// Whether one more line may be logged this second (then a count of those that were not).
    private func take(now nowSeconds: UInt64) -> Bool {
        let (log, suppressed) = budget.withLock { b -> (Bool, Int) in
            if b.second != nowSeconds {
                let s = b.suppressed
                b = (nowSeconds, 1, 0)
                return (true, s)
            }
            if b.lines < linesPerSecond {
                b.lines += 1
                return (true, 0)
            }
            b.suppressed += 1
            return (false, 0)
        }
        if suppressed > 0 {
            logger.notice("\(suppressed) more egress or connection-limit lines not logged in the last second (see weft_egress_flows_total, weft_connections_over_limit_total)",
                          metadata: ["workload": "\(workload)"])
        }
        return log
    }
}
