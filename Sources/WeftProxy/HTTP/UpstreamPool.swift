import NIOCore
import NIOHTTP1
import WeftCore

/// Idle HTTP/1.1 upstream connections of one workload, by endpoint and transport (a plain TCP
/// connection is never handed out for a tunnelled request, nor the reverse). Loop-confined (every
/// call on the workload's loop), so no locks. A connection comes back only when both the
/// request and the response finished cleanly and the upstream allowed keep-alive; it leaves
/// when the upstream closes it or after `idleTimeout` unused. Expiry is one sweep every few
/// seconds, not a timer per return: returning a connection is on every request's path.
final class UpstreamPool {
    private struct Idle {
        let channel: Channel
        let since: NIODeadline
        let timeout: TimeAmount
    }

    private var idle: [UpstreamKey: [Idle]] = [:]
    private let maxIdlePerEndpoint = 32
    private let idleTimeout: TimeAmount
    private let sweepInterval: TimeAmount
    private var sweeper: RepeatedTask?
    /// Connections whose close is already watched: the callback is registered once per
    /// connection, not once per return to the pool (a long-lived upstream returns thousands
    /// of times; one closure each would pile up on its close future).
    private var watched: Set<ObjectIdentifier> = []

    init(idleTimeout: TimeAmount = .seconds(60), sweepInterval: TimeAmount = .seconds(5)) {
        self.idleTimeout = idleTimeout
        self.sweepInterval = sweepInterval
    }

    func take(_ endpoint: UpstreamKey) -> Channel? {
        // Popped in place: copying the list out of the dictionary first made popLast copy it
        // again (a retain per idle connection) on every request.
        while let entry = idle[endpoint]?.popLast() {
            if idle[endpoint]?.isEmpty == true { idle[endpoint] = nil }
            if entry.channel.isActive { return entry.channel }
        }
        return nil
    }

    /// `idleTimeout`: the host's connectionPool.http.idleTimeout, else the pool's.
    func give(_ channel: Channel, for endpoint: UpstreamKey, idleTimeout: TimeAmount? = nil) {
        guard channel.isActive, idle[endpoint, default: []].count < maxIdlePerEndpoint else {
            channel.close(promise: nil)
            return
        }
        let loop = channel.eventLoop
        idle[endpoint, default: []].append(Idle(channel: channel, since: loop.now, timeout: idleTimeout ?? self.idleTimeout))
        if sweeper == nil {
            sweeper = loop.scheduleRepeatedTask(initialDelay: sweepInterval, delay: sweepInterval) { [weak self] _ in
                self?.sweep(now: loop.now)
            }
        }
        let id = ObjectIdentifier(channel)
        if watched.insert(id).inserted {
            channel.closeFuture.whenComplete { [weak self] _ in
                self?.watched.remove(id)
                self?.evict(channel, from: endpoint)
            }
        }
    }

    /// Closes connections idle for longer than the timeout.
    func sweep(now: NIODeadline) {
        for (endpoint, list) in idle {
            let (stale, fresh) = (list.filter { now - $0.since >= $0.timeout }, list.filter { now - $0.since < $0.timeout })
            idle[endpoint] = fresh.isEmpty ? nil : fresh
            for entry in stale { entry.channel.close(promise: nil) }
        }
    }

    private func evict(_ channel: Channel, from endpoint: UpstreamKey) {
        idle[endpoint]?.removeAll { $0.channel === channel }
        if idle[endpoint]?.isEmpty ?? false { idle[endpoint] = nil }
    }

    func closeAll() {
        sweeper?.cancel()
        sweeper = nil
        for entry in idle.values.joined() { entry.channel.close(promise: nil) }
        idle.removeAll()
        watched.removeAll()
    }
}

/// The last handler of an upstream HTTP/1.1 connection: hands response parts to the proxy
/// handler that currently owns the connection. With no owner (idle in the pool) any byte
/// from the upstream is unexpected and closes the connection.
final class UpstreamHTTPHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    weak var owner: HTTPOutboundProxyHandler?
    private var pendingRead = false
    /// Requests carried so far (connectionPool.http.maxRequestsPerConnection).
    var uses = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let owner else {
            context.close(promise: nil)
            return
        }
        owner.upstreamRead(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.upstreamReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        owner?.upstreamClosed(error: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        owner?.upstreamClosed(error: error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        owner?.upstreamWritabilityChanged(context.channel.isWritable)
    }

    /// Backpressure: read responses only while the client side can take them.
    func read(context: ChannelHandlerContext) {
        if owner?.downstreamWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func resumeReading(context: ChannelHandlerContext) {
        if pendingRead {
            pendingRead = false
            context.read()
        }
    }
}
