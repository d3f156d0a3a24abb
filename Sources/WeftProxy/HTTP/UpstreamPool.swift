import NIOCore
import NIOHTTP1
import WeftCore

/// Idle HTTP/1.1 upstream connections of one workload, by endpoint. Loop-confined (every
/// call on the workload's loop), so no locks. A connection comes back only when both the
/// request and the response finished cleanly and the upstream allowed keep-alive; it leaves
/// when the upstream closes it or after `idleTimeout`.
final class UpstreamPool {
    private var idle: [OriginalDestination: [Channel]] = [:]
    /// Idle timers, cancelled when a connection is taken back into use.
    private var timers: [ObjectIdentifier: Scheduled<Void>] = [:]
    private let maxIdlePerEndpoint = 32
    private let idleTimeout: TimeAmount = .seconds(60)

    func take(_ endpoint: OriginalDestination) -> Channel? {
        while var list = idle[endpoint], let channel = list.popLast() {
            idle[endpoint] = list.isEmpty ? nil : list
            timers.removeValue(forKey: ObjectIdentifier(channel))?.cancel()
            if channel.isActive { return channel }
        }
        return nil
    }

    /// Connections whose close is already watched: the callback is registered once per
    /// connection, not once per return to the pool (a long-lived upstream returns thousands
    /// of times; one closure each would pile up on its close future).
    private var watched: Set<ObjectIdentifier> = []

    func give(_ channel: Channel, for endpoint: OriginalDestination) {
        guard channel.isActive, idle[endpoint, default: []].count < maxIdlePerEndpoint else {
            channel.close(promise: nil)
            return
        }
        idle[endpoint, default: []].append(channel)
        let id = ObjectIdentifier(channel)
        timers[id] = channel.eventLoop.scheduleTask(in: idleTimeout) { [weak self] in
            guard let self, self.timers.removeValue(forKey: id) != nil else { return }
            self.evict(channel, from: endpoint)
            channel.close(promise: nil)
        }
        if watched.insert(id).inserted {
            channel.closeFuture.whenComplete { [weak self] _ in
                self?.watched.remove(id)
                self?.timers.removeValue(forKey: id)?.cancel()
                self?.evict(channel, from: endpoint)
            }
        }
    }

    private func evict(_ channel: Channel, from endpoint: OriginalDestination) {
        idle[endpoint]?.removeAll { $0 === channel }
        if idle[endpoint]?.isEmpty ?? false { idle[endpoint] = nil }
    }

    func closeAll() {
        for timer in timers.values { timer.cancel() }
        timers.removeAll()
        watched.removeAll()
        for channel in idle.values.joined() { channel.close(promise: nil) }
        idle.removeAll()
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
