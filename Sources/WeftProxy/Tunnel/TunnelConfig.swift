import NIOCore
import NIOHTTP2

/// HTTP/2 settings of the mesh tunnel, both sides: large windows (the tunnel carries whole
/// TCP connections, so 64 KiB windows would throttle bulk transfers), many streams per
/// connection.
enum TunnelConfig {
    static let window = 4 * 1024 * 1024
    static let maxStreams = 1000
    /// A peer that has not finished its TLS handshake by then is dropped (handshake floods).
    static let handshakeTimeout: TimeAmount = .seconds(10)
    /// New tunnel connections are refused (reset, before any TLS work) while this many
    /// handshakes of the workload are unfinished.
    static let maxPendingHandshakes = 64
    /// Header that names the protocol the client detected (`http/1.1`, `tcp`, ...).
    static let protocolHeader = "x-weft-protocol"

    static var connection: NIOHTTP2Handler.ConnectionConfiguration {
        var c = NIOHTTP2Handler.ConnectionConfiguration()
        c.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: window),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 16 * 1024),
            HTTP2Setting(parameter: .enablePush, value: 0),
        ]
        return c
    }

    static var stream: NIOHTTP2Handler.StreamConfiguration {
        var s = NIOHTTP2Handler.StreamConfiguration()
        s.targetWindowSize = window
        s.outboundBufferSizeHighWatermark = 256 * 1024
        s.outboundBufferSizeLowWatermark = 64 * 1024
        return s
    }
}
