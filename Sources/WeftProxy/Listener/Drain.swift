import NIOCore
import NIOHTTP2

/// Sent down the pipeline of every connection a draining workload proxy holds: HTTP/1.1
/// connections close once their current response is out (it says `connection: close`),
/// HTTP/2 ones send GOAWAY and close when their last stream ends; byte streams are left to
/// finish on their own.
public struct ProxyDrainEvent: Sendable {}

/// The connections one workload proxy accepted, so a drain can tell them to finish and
/// know when they all have. Only touched on the workload's loop.
final class AcceptedConnections {
    private var channels: [ObjectIdentifier: Channel] = [:]
    private var waiters: [EventLoopPromise<Void>] = []
    private(set) var draining = false
    /// Open connections allowed per direction (the app's own outbound; inbound and tunnel
    /// together), nil: no limit. A flood in one direction leaves the other alone, and the
    /// agent's file descriptors to the other workloads.
    let limit: Int?
    private var outbound = 0
    private var toWorkload = 0
    private var outboundIDs = Set<ObjectIdentifier>()

    init(limit: Int? = nil) { self.limit = limit }

    var count: Int { channels.count }

    /// Takes the connection, or refuses it (false) when its direction is at the limit.
    func admit(_ channel: Channel, outbound isOutbound: Bool) -> Bool {
        if let limit, (isOutbound ? outbound : toWorkload) >= limit { return false }
        let id = ObjectIdentifier(channel)
        if isOutbound {
            outbound += 1
            outboundIDs.insert(id)
        } else {
            toWorkload += 1
        }
        add(channel)
        return true
    }

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        channels[id] = channel
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        channel.closeFuture.whenComplete { _ in bound.value.remove(id) }
        if draining { channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent()) }
    }

    private func remove(_ id: ObjectIdentifier) {
        guard channels.removeValue(forKey: id) != nil else { return }
        if outboundIDs.remove(id) != nil { outbound -= 1 } else if toWorkload > 0 { toWorkload -= 1 }
        if channels.isEmpty {
            let done = waiters
            waiters = []
            for w in done { w.succeed() }
        }
    }

    /// Tells every connection to finish; the future completes when none is left.
    func drain(on loop: EventLoop) -> EventLoopFuture<Void> {
        draining = true
        for channel in channels.values { channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent()) }
        if channels.isEmpty { return loop.makeSucceededVoidFuture() }
        let promise = loop.makePromise(of: Void.self)
        waiters.append(promise)
        return promise.futureResult
    }
}

/// Sits after NIO's HTTP/2 handler on a connection, and is that handler's stream delegate
/// (NIO reports each stream's creation and closing to it, on the connection's loop). On
/// ProxyDrainEvent, a server side sends GOAWAY naming the last stream it took (the client
/// opens new ones elsewhere; NIO refuses any above it), and either side closes the
/// connection once its last stream has ended. Pass it as `streamDelegate` to
/// configureHTTP2Pipeline, then add it after.
final class HTTP2DrainHandler: ChannelInboundHandler, NIOHTTP2StreamDelegate, @unchecked Sendable {  // loop-confined
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let sendsGoAway: Bool
    private var open = Set<HTTP2StreamID>()
    private var lastStream = HTTP2StreamID.rootStream
    private var draining = false
    private var context: ChannelHandlerContext?

    init(sendsGoAway: Bool) { self.sendsGoAway = sendsGoAway }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func streamCreated(_ id: HTTP2StreamID, channel: Channel) {
        open.insert(id)
        if id > lastStream { lastStream = id }
    }

    func streamClosed(_ id: HTTP2StreamID, channel: Channel) {
        open.remove(id)
        if draining, open.isEmpty { context?.close(promise: nil) }
    }

    /// The peer's GOAWAY: it opens no more streams, so the connection closes after its last
    /// one (at once when none is open) — a client that said goodbye does not hold a
    /// connection open.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        context.fireChannelRead(data)
        if case .goAway = frame.payload, !draining {
            draining = true
            if open.isEmpty { context.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ProxyDrainEvent else { return context.fireUserInboundEventTriggered(event) }
        guard !draining else { return }
        draining = true
        if sendsGoAway {
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastStream, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
        }
        if open.isEmpty { context.close(promise: nil) }
    }
}
