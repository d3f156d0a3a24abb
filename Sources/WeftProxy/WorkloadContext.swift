import Logging
import Glibc
import NIOCore
import NIOPosix
import WeftCore

/// What every connection handler of one workload needs. Immutable; shared across its loop.
public struct WorkloadContext: Sendable {
    public let spec: WorkloadSpec
    public let loop: NetnsEventLoop
    public let counters: ProxyCounters
    public let connections: ConnectionLog
    public let ports: ProxyPorts
    public let mark: UInt32
    public let connectTimeout: TimeAmount
    public let logger: Logger
    public let directory: ServiceDirectory
    /// Idle HTTP/1.1 upstream connections; only touched on the workload's loop.
    let upstreamPool: NIOLoopBound<UpstreamPool>
    /// Multiplexed HTTP/2 upstream connections (h2c, gRPC); only touched on the loop.
    let h2Pool: NIOLoopBound<H2UpstreamPool>
    /// Retry budgets per destination service; only touched on the loop.
    let retryBudget: NIOLoopBound<RetryBudget>
    /// connectionPool limits per destination service; only touched on the loop.
    let limiter: NIOLoopBound<ConnectionLimiter>
    /// The workload's certificate (nil: no identity, so no mesh tunnel either way).
    let tls: WorkloadTLS?
    /// Pooled mTLS tunnel connections to peer workloads; only touched on the loop.
    let tunnels: NIOLoopBound<TunnelPool>
    /// This workload's SPIFFE ID (fixed for its life; renewals keep it), when it has one.
    let identity: String?
}

enum Direction: String {
    case inbound, outbound, tunnel
}

extension WorkloadContext {
    /// The common tail of both directions: connect (marked, inside the netns), splice, count.
    /// On a failed connect the downstream is reset, so the app sees a refused/reset
    /// connection rather than an accepted one that then goes silent.
    func forward(_ downstream: Channel, to target: OriginalDestination, direction: Direction,
                 downstreamBytes: Counter, upstreamBytes: Counter,
                 fallback: OriginalDestination? = nil) -> EventLoopFuture<Void> {
        let client = downstream.remoteAddress.map { "\($0)" } ?? "?"
        return dial(target, proto: "tcp") { _ in }.flatMapThrowing { upstream in
            try Splice.join(downstream: downstream, upstream: upstream,
                            downstreamReceived: downstreamBytes, upstreamReceived: upstreamBytes)
            logger.debug("\(direction.rawValue) connection", metadata: ["client": "\(client)", "destination": "\(target)"])
        }.flatMapError { error in
            if let fallback, Self.isRefused(error) {
                return self.forward(downstream, to: fallback, direction: direction,
                                    downstreamBytes: downstreamBytes, upstreamBytes: upstreamBytes)
            }
            return self.refuse(downstream, direction: direction, reason: "upstream \(target): \(Self.describe(error))")
        }
    }

    func refuse(_ channel: Channel, direction: Direction, reason: String) -> EventLoopFuture<Void> {
        counters.connectionErrors.add(1)
        logger.notice("\(direction.rawValue) connection refused: \(reason)",
                      metadata: ["workload": "\(spec.name)", "client": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
        // RST rather than FIN: the app learns at once that nothing is there.
        channel.closeWithReset()
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    /// ECONNREFUSED, directly or inside NIO's per-address connection errors.
    static func isRefused(_ error: Error) -> Bool {
        if let io = error as? IOError { return io.errnoCode == ECONNREFUSED }
        if let e = error as? NIOConnectionError {
            return e.connectionErrors.contains { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
        }
        return false
    }

    static func describe(_ error: Error) -> String {
        if let io = error as? IOError { return io.description }
        if case ChannelError.connectTimeout(let t) = error { return "connect timed out after \(t.nanoseconds / 1_000_000) ms" }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return "\(first.error)" }
        return "\(error)"
    }
}
