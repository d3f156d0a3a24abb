import ArgumentParser
import Foundation
import Glibc
import WeftAgent
import WeftCore

/// `weft top`: a live view of request rate, error rate and p50/p99 per caller → service pair,
/// from the agent's Prometheus endpoint.
struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top", abstract: "Live request rate, error rate and p50/p99 per caller → service pair (from the agent's /metrics).")

    @Option(help: "The agent's metrics endpoint, IP:PORT.") var metrics: String = "127.0.0.1:15090"
    @Option(help: "Seconds between refreshes.") var interval: Double = 2
    @Option(help: "Stop after this many refreshes (0: until interrupted).") var iterations: Int = 0

    func run() throws {
        do {
            guard interval >= 0.2, interval <= 3600 else { throw WeftError(.invalidArgument, "--interval \(interval): 0.2 to 3600 seconds") }
            let (host, port) = try HTTPEndpoint.parse(metrics, flag: "--metrics")
            var previous = TopView.parse(try Self.get(host: host, port: port))
            var last = Date()
            var n = 0
            let tty = isatty(STDOUT_FILENO) == 1
            while iterations == 0 || n < iterations {
                usleep(useconds_t(interval * 1_000_000))
                let current = TopView.parse(try Self.get(host: host, port: port))
                let now = Date()
                let text = TopView.render(TopView.rows(previous: previous, current: current, seconds: now.timeIntervalSince(last)),
                                          interval: interval, source: metrics)
                FileHandle.standardOutput.write(Data(((tty ? "\u{1b}[H\u{1b}[2J" : "") + text).utf8))
                previous = current
                last = now
                n += 1
            }
        } catch {
            fail(error)
        }
    }

    /// GET /metrics over a plain socket (HTTP/1.0: the body runs to the close).
    static func get(host: String, port: Int) throws -> String {
        let family = host.contains(":") ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw WeftError(.system, "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var connected: Int32
        if family == AF_INET {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &a.sin_addr)
            connected = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET6, host, &a.sin6_addr)
            connected = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        guard connected == 0 else {
            throw WeftError(.agentUnavailable, "nothing answers at \(host):\(port) (\(String(cString: strerror(errno))))",
                            hint: "the agent serves /metrics on --metrics-address (default 0.0.0.0:15090); pass --metrics IP:PORT")
        }
        let request = "GET /metrics HTTP/1.0\r\nHost: \(host)\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.0 200"), let body = text.range(of: "\r\n\r\n") else {
            throw WeftError(.agentUnavailable, "\(host):\(port) did not answer GET /metrics with 200: \(text.prefix(80))")
        }
        return String(text[body.upperBound...])
    }
}
