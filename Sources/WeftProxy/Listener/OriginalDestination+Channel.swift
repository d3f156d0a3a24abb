import Glibc
import CWeftLinux
import NIOCore
import WeftCore

extension OriginalDestination {
    /// Reads SO_ORIGINAL_DST from an accepted channel (must be called on its event loop).
    /// NIO's typed getOption passes only 4 bytes and fails with EINVAL, so the raw provider
    /// is used with a full sockaddr_in / sockaddr_in6.
    static func read(from channel: Channel) -> EventLoopFuture<OriginalDestination> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(WeftError(.system, "channel does not expose socket options"))
        }
        switch channel.localAddress {
        case .v4?:
            let f: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
                level: .init(rawValue: SOL_IP), name: .init(rawValue: WEFT_SO_ORIGINAL_DST))
            return f.map { sin in
                OriginalDestination(ip: .v4(UInt32(bigEndian: sin.sin_addr.s_addr)), port: UInt16(bigEndian: sin.sin_port))
            }
        case .v6?:
            let f: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(
                level: .init(rawValue: Int32(IPPROTO_IPV6)), name: .init(rawValue: WEFT_SO_ORIGINAL_DST))
            return f.map { sin6 in
                let bytes = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                return OriginalDestination(ip: .v6(bytes), port: UInt16(bigEndian: sin6.sin6_port))
            }
        default:
            return channel.eventLoop.makeFailedFuture(WeftError(.system, "accepted channel has no IP local address"))
        }
    }

    var socketAddress: SocketAddress {
        get throws { try SocketAddress(ipAddress: ip.description, port: Int(port)) }
    }
}

extension SocketAddress {
    /// The address as Weft's own type (nil for Unix sockets).
    var weftIP: IPAddress? {
        guard let text = ipAddress else { return nil }
        return IPAddress(text)
    }
}
