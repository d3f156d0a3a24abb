import Glibc
import CWeftLinux
import Foundation
import WeftCore

/// Blocking client of the agent's local API, for the CLI. One request per connection.
public struct AgentClient: Sendable {
    public let socketPath: String
    public var timeoutSeconds: Int = 30
    /// Whose socket it is, for the errors: the agent's or the control plane's.
    public let isControlPlane: Bool

    public init(socketPath: String, controlPlane: Bool = false) {
        self.socketPath = socketPath
        self.isControlPlane = controlPlane
    }

    /// A client of the control plane's local API.
    public static func control(_ socketPath: String) -> AgentClient { AgentClient(socketPath: socketPath, controlPlane: true) }

    public func send(_ request: AgentRequest) throws -> AgentResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WeftError(.system, "socket(): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw WeftError(.invalidArgument, "agent socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno
            switch e {
            case ENOENT where isControlPlane, ECONNREFUSED where isControlPlane:
                throw WeftError(.agentUnavailable, "the Weft control plane is not running (nothing listening on \(socketPath))",
                                hint: "start it with `systemctl start weft-control` or `sudo weft control`, or pass --control-socket")
            case ENOENT, ECONNREFUSED:
                throw WeftError(.agentUnavailable, "the Weft agent is not running (nothing listening on \(socketPath))",
                                hint: "start it with `systemctl start weft-agent` or `sudo weft agent`")
            case EACCES, EPERM:
                throw WeftError(.permissionDenied, "permission denied on \(socketPath): the agent's API is root-only",
                                hint: "run this command with sudo")
            default:
                throw WeftError(.agentUnavailable, "cannot connect to the agent at \(socketPath): \(String(cString: strerror(e)))")
            }
        }
        var payload = try JSONEncoder().encode(request)
        payload.append(UInt8(ascii: "\n"))
        try payload.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw WeftError(.agentUnavailable, "writing to the agent failed: \(String(cString: strerror(errno)))")
                }
                off += n
            }
        }
        var reply = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw WeftError(.agentUnavailable, "no answer from the agent at \(socketPath): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            reply.append(contentsOf: buf[0..<n])
        }
        guard !reply.isEmpty else {
            throw WeftError(.agentUnavailable, "the agent closed the connection without answering")
        }
        let response: AgentResponse
        do { response = try JSONDecoder().decode(AgentResponse.self, from: reply) } catch {
            throw WeftError(.protocolError, "unreadable answer from the agent: \(error)")
        }
        return response
    }

    /// Sends and turns an error answer into a thrown WeftError.
    public func call(_ request: AgentRequest) throws -> AgentResponse {
        let response = try send(request)
        if let message = response.error {
            let code: WeftError.Code
            switch response.errorCode {
            case "already-exists": code = .alreadyExists
            case "not-found": code = .notFound
            case "exhausted": code = .exhausted
            case "address-in-use": code = .addressInUse
            case "netns-not-found": code = .netnsNotFound
            case "permission-denied": code = .permissionDenied
            default: code = .system
            }
            throw WeftError(code, message)
        }
        return response
    }
}
