// weft-nio-relay LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT
//
// bench/l7.sh's floor: the least an HTTP/1.1 proxy built on SwiftNIO's codecs does — NIO's
// server codec towards the client, one keep-alive upstream connection per client connection
// with NIO's client codec, request and response parts relayed as they are decoded, a flush at
// each message's end. No routing, pooling, policy, header rules or telemetry, one event-loop
// thread. Weft's L7 path cannot cost less per request than this; HAProxy is measured beside
// it in the same run. Not a product: no error handling beyond closing both sides.
import NIOCore
import NIOHTTP1
import NIOPosix

final class ClientSide: ChannelInboundHandler, @unchecked Sendable {  // loop-confined
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let upstreamAddress: SocketAddress
    private var upstream: Channel?
    private var waiting: [HTTPServerRequestPart] = []
    fileprivate var context: ChannelHandlerContext?

    init(upstream: SocketAddress) { upstreamAddress = upstream }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(UpstreamSide(client: bound.value))
                }
            }
            .connect(to: upstreamAddress)
            .whenComplete { result in
                let side = bound.value
                switch result {
                case .success(let channel):
                    side.upstream = channel
                    for part in side.waiting { side.relay(part) }
                    side.waiting = []
                case .failure:
                    side.context?.close(promise: nil)
                }
            }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { relay(unwrapInboundIn(data)) }

    private func relay(_ part: HTTPServerRequestPart) {
        guard let upstream else { return waiting.append(part) }
        switch part {
        case .head(let head): upstream.write(HTTPClientRequestPart.head(head), promise: nil)
        case .body(let body): upstream.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
        case .end(let trailers): upstream.writeAndFlush(HTTPClientRequestPart.end(trailers), promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        upstream?.close(promise: nil)
        self.context = nil
    }
}

final class UpstreamSide: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let client: ClientSide

    init(client: ClientSide) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let c = client.context else { return }
        switch unwrapInboundIn(data) {
        case .head(let head): c.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        case .body(let body): c.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
        case .end(let trailers): c.writeAndFlush(NIOAny(HTTPServerResponsePart.end(trailers)), promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { client.context?.close(promise: nil) }
}

let args = CommandLine.arguments
guard args.count == 4, let listen = Int(args[1]), let port = Int(args[3]), let upstream = try? SocketAddress(ipAddress: args[2], port: port) else {
    print("usage: weft-nio-relay LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT")
    exit(2)
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let server = try ServerBootstrap(group: group)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true,
                                                                            withOutboundHeaderValidation: false)
            try channel.pipeline.syncOperations.addHandler(ClientSide(upstream: upstream))
        }
    }
    .bind(host: "127.0.0.1", port: listen).wait()
try server.closeFuture.wait()
