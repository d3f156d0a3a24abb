import Glibc
import CWeftLinux
import Foundation
import Logging
import NIOCore
import NIOPosix
import WeftCore

/// Splits a byte stream into newline-terminated frames; refuses frames over `maxLength` so
/// a client cannot make the server buffer without bound.
public struct LineFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer
    let maxLength: Int

    public init(maxLength: Int) {
        self.maxLength = maxLength
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > maxLength {
                throw WeftError(.protocolError, "request longer than \(maxLength) bytes")
            }
            return .needMoreData
        }
        let length = newline - buffer.readerIndex
        let frame = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }
}

/// A root-only Unix socket serving one JSON request per connection (the agent's local API
/// and the control plane's): checks the caller is root (SO_PEERCRED), hands the request
/// line to `respond`, writes one JSON line back and closes.
public enum LocalSocket {
    public typealias Responder = @Sendable ([UInt8]) async -> AgentResponse

    /// Binds `path` with mode 0600 in a 0755 directory. A stale socket file from a crashed
    /// process is replaced; a live server on it is an error naming `what`.
    public static func bind(path: String, what: String, group: EventLoopGroup, logger: Logger,
                            respond: @escaping Responder) async throws -> Channel {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if FileManager.default.fileExists(atPath: path) {
            if (try? AgentClient(socketPath: path).send(.ping)) != nil {
                throw WeftError(.addressInUse, "another \(what) is already serving \(path)",
                                hint: "stop it first or pass a different --socket")
            }
            try? FileManager.default.removeItem(atPath: path)
        }
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maxLength: 1 << 24)))
                    try channel.pipeline.syncOperations.addHandler(LocalSocketHandler(what: what, logger: logger, respond: respond))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        chmod(path, 0o600)
        return channel
    }

    /// Decodes a request line; a malformed one gets a protocol error naming why.
    public static func decode(_ bytes: [UInt8]) -> Result<AgentRequest, WeftError> {
        do {
            return .success(try JSONDecoder().decode(AgentRequest.self, from: Data(bytes)))
        } catch {
            return .failure(WeftError(.protocolError, "malformed request: \(error)"))
        }
    }
}

final class LocalSocketHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let what: String
    private let logger: Logger
    private let respond: LocalSocket.Responder
    private var handled = false

    init(what: String, logger: Logger, respond: @escaping LocalSocket.Responder) {
        self.what = what
        self.logger = logger
        self.respond = respond
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !handled else { return }
        handled = true
        let line = unwrapInboundIn(data)
        let channel = context.channel
        let respond = self.respond
        let what = self.what
        let peer: EventLoopFuture<weft_ucred> = (channel as! SocketOptionProvider).unsafeGetSocketOption(
            level: .init(rawValue: SOL_SOCKET), name: .init(rawValue: WEFT_SO_PEERCRED))
        let promise = channel.eventLoop.makePromise(of: AgentResponse.self)
        peer.whenComplete { result in
            switch result {
            case .success(let cred) where cred.uid == 0:
                promise.completeWithTask { await respond(Array(line.readableBytesView)) }
            case .success(let cred):
                promise.succeed(.failure(WeftError(.permissionDenied, "the \(what)'s local API accepts only root (caller uid \(cred.uid))")))
            case .failure(let error):
                promise.succeed(.failure(WeftError(.system, "cannot read peer credentials: \(error)")))
            }
        }
        promise.futureResult.whenSuccess { response in
            var out = channel.allocator.buffer(capacity: 256)
            out.writeBytes((try? JSONEncoder().encode(response)) ?? Data("{\"error\":\"encoding failed\"}".utf8))
            out.writeString("\n")
            channel.writeAndFlush(out).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.notice("local API: \(error)")
        context.close(promise: nil)
    }
}
