import Glibc
import CWeftLinux
import Foundation
import Logging
import NIOCore
import NIOPosix
import WeftCore

/// Splits a byte stream into newline-terminated frames; refuses frames over `maxLength` so
/// a client cannot make the agent buffer without bound.
struct LineFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maxLength: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
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

/// Serves one request per connection: checks the caller is root (SO_PEERCRED), decodes the
/// JSON request, runs it against the registry, writes one JSON line back and closes.
final class LocalAPIHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let api: LocalAPI
    private var handled = false

    init(api: LocalAPI) {
        self.api = api
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !handled else { return }
        handled = true
        let line = unwrapInboundIn(data)
        let channel = context.channel
        let api = self.api
        let peer: EventLoopFuture<weft_ucred> = (channel as! SocketOptionProvider).unsafeGetSocketOption(
            level: .init(rawValue: SOL_SOCKET), name: .init(rawValue: WEFT_SO_PEERCRED))
        let promise = channel.eventLoop.makePromise(of: AgentResponse.self)
        peer.whenComplete { result in
            switch result {
            case .success(let cred) where cred.uid == 0:
                promise.completeWithTask { await api.respond(to: Array(line.readableBytesView)) }
            case .success(let cred):
                promise.succeed(.failure(WeftError(.permissionDenied, "the agent's local API accepts only root (caller uid \(cred.uid))")))
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
        api.logger.notice("local API: \(error)")
        context.close(promise: nil)
    }
}

/// The agent's local API on a root-only Unix socket (/run/weft/agent.sock).
final class LocalAPI: Sendable {
    let registry: WorkloadRegistry
    let capture: CaptureSettings
    let logger: Logger

    init(registry: WorkloadRegistry, capture: CaptureSettings, logger: Logger) {
        self.registry = registry
        self.capture = capture
        self.logger = logger
    }

    func respond(to bytes: [UInt8]) async -> AgentResponse {
        let request: AgentRequest
        do {
            request = try JSONDecoder().decode(AgentRequest.self, from: Data(bytes))
        } catch {
            return .failure(WeftError(.protocolError, "malformed request: \(error)"))
        }
        do {
            switch request {
            case .ping:
                return AgentResponse(capture: capture, version: WeftVersion.current)
            case .allocate(let netns):
                return AgentResponse(capture: capture, network: try await registry.allocate(for: netns))
            case .release(let netns):
                await registry.release(netns)
                return AgentResponse()
            case .attach(let spec):
                try await registry.attach(spec)
                return AgentResponse(capture: capture)
            case .detach(let netns, let force):
                try await registry.detach(netns, force: force)
                return AgentResponse()
            case .listWorkloads:
                return AgentResponse(workloads: await registry.list())
            case .listServices:
                return AgentResponse(services: await registry.services())
            case .applyConfig(let files):
                return AgentResponse(config: await registry.applyConfig(files))
            case .deleteConfig(let files):
                return AgentResponse(config: await registry.deleteConfig(files))
            case .getConfig:
                return AgentResponse(config: await registry.currentConfig())
            case .listCertificates:
                return AgentResponse(certificates: try await registry.certificates())
            case .rotateCA(let finish):
                return AgentResponse(certificates: try await registry.rotateCA(finish: finish))
            case .reloadCA:
                return AgentResponse(certificates: try await registry.reloadCA())
            }
        } catch let error as WeftError {
            return .failure(error)
        } catch {
            return .failure(WeftError(.system, "\(error)"))
        }
    }

    /// Binds the socket with mode 0600 in a 0755 directory. A stale socket file from a
    /// crashed agent is replaced; a live agent on it is an error.
    func bind(path: String, group: EventLoopGroup) async throws -> Channel {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if FileManager.default.fileExists(atPath: path) {
            if (try? AgentClient(socketPath: path).send(.ping)) != nil {
                throw WeftError(.addressInUse, "another agent is already serving \(path)",
                                hint: "stop it first (systemctl stop weft-agent) or pass a different --socket")
            }
            try? FileManager.default.removeItem(atPath: path)
        }
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maxLength: 1 << 20)))
                    try channel.pipeline.syncOperations.addHandler(LocalAPIHandler(api: self))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        chmod(path, 0o600)
        return channel
    }
}
