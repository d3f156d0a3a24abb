import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import WeftCore

/// A reply of the agent's HTTP endpoints (metrics on 15090, admin on 15000).
public struct HTTPReply: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: String

    public init(_ status: HTTPResponseStatus, contentType: String = "text/plain; charset=utf-8", _ body: String) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    public init(contentType: String = "text/plain; charset=utf-8", _ body: String) {
        self.init(.ok, contentType: contentType, body)
    }

    public static func json<T: Encodable>(_ value: T) -> HTTPReply {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(value) else { return HTTPReply(.internalServerError, "cannot encode the reply\n") }
        return HTTPReply(contentType: "application/json", String(decoding: data, as: UTF8.self) + "\n")
    }
}

/// A small HTTP/1.1 server on the host's network for the agent's own endpoints: one request
/// at a time per connection (pipelining handled by NIO), bodies up to 64 KiB, answers from
/// an async responder. Malformed requests get NIO's 400 and the connection is closed.
public enum HTTPEndpoint {
    public typealias Responder = @Sendable (_ method: HTTPMethod, _ uri: String, _ body: String) async -> HTTPReply

    /// Binds `address` ("HOST:PORT"; flag names the option in errors).
    public static func bind(_ address: String, flag: String, group: EventLoopGroup, responder: @escaping Responder) async throws -> Channel {
        let (host, port) = try parse(address, flag: flag)
        do {
            return try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(EndpointHandler(responder: responder))
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            throw WeftError(.addressInUse, "cannot listen on \(address) (\(flag)): \(error)", hint: "pick another address with \(flag)")
        }
    }

    public static func parse(_ address: String, flag: String) throws -> (String, Int) {
        var host = address, portText = ""
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            host = String(address[address.index(after: address.startIndex)..<close])
            portText = String(address[address.index(after: close)...].dropFirst())
        } else if let colon = address.lastIndex(of: ":") {
            host = String(address[..<colon])
            portText = String(address[address.index(after: colon)...])
        }
        guard IPAddress(host) != nil, let port = Int(portText), (0...65535).contains(port) else {
            throw WeftError(.invalidArgument, "\(flag) \(address): expected IP:PORT (e.g. 127.0.0.1:15000 or [::1]:15000)")
        }
        return (host, port)
    }
}

private final class EndpointHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let responder: HTTPEndpoint.Responder
    private var head: HTTPRequestHead?
    private var body = ""
    private var tooLarge = false
    static let maxBody = 64 * 1024

    init(responder: @escaping HTTPEndpoint.Responder) {
        self.responder = responder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = ""
            tooLarge = false
        case .body(var b):
            if body.utf8.count + b.readableBytes > Self.maxBody { tooLarge = true } else { body += b.readString(length: b.readableBytes) ?? "" }
        case .end:
            guard let head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            if tooLarge {
                return write(HTTPReply(.payloadTooLarge, "request body over \(Self.maxBody) bytes\n"), keepAlive: false, context: context)
            }
            let responder = self.responder, body = self.body
            let promise = context.eventLoop.makePromise(of: HTTPReply.self)
            promise.completeWithTask { await responder(head.method, head.uri, body) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { reply in
                let (handler, context) = bound.value
                handler.write(reply, keepAlive: keepAlive, context: context)
            }
        }
    }

    private func write(_ reply: HTTPReply, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: reply.contentType)
        headers.add(name: "content-length", value: "\(reply.body.utf8.count)")
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: reply.body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
