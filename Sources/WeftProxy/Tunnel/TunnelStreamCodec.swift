import NIOCore
import NIOHTTP2

/// Makes one HTTP/2 stream of the mesh tunnel look like a TCP connection to the handlers
/// above it: DATA frames in and out as ByteBuffers, END_STREAM as a half-close
/// (ChannelEvent.inputClosed inbound, close(mode: .output) outbound). The CONNECT
/// exchange that opened the stream is over before this handler is added.
final class TunnelStreamCodec: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var outputClosed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let frame):
            if case .byteBuffer(let buffer) = frame.data, buffer.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(buffer))
            }
            if frame.endStream {
                context.fireChannelReadComplete()
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        case .headers(let headers) where headers.endStream:
            // Trailers end the stream like an empty DATA frame with END_STREAM.
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        case .rstStream(let code):
            context.fireErrorCaught(NIOHTTP2Errors.streamClosed(streamID: .rootStream, errorCode: code))
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard !outputClosed, buffer.readableBytes > 0 else {
            promise?.succeed(())
            return
        }
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        guard !outputClosed else {
            promise?.succeed(())
            return
        }
        outputClosed = true
        let empty = context.channel.allocator.buffer(capacity: 0)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(empty), endStream: true))), promise: promise)
    }
}
