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

    var count: Int { channels.count }

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        channels[id] = channel
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        channel.closeFuture.whenComplete { _ in bound.value.remove(id) }
        if draining { channel.pipeline.fireUserInboundEventTriggered(ProxyDrainEvent()) }
    }

    private func remove(_ id: ObjectIdentifier) {
        channels[id] = nil
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
