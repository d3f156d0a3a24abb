import Glibc
import CWeftLinux
import Foundation
import WeftCore

/// An open handle on a named network namespace. Holding the fd keeps the namespace alive
/// even if its /run/netns entry is removed, and is what setns() and netlink need.
public final class NetnsHandle: Sendable {
    public let name: NetnsName
    public let fd: Int32

    public init(opening name: NetnsName) throws {
        let fd = weft_netns_open_path(name.path)
        guard fd >= 0 else {
            if fd == -ENOENT {
                throw WeftError(.netnsNotFound, "network namespace '\(name)' does not exist (\(name.path))",
                                hint: "create it with `ip netns add \(name)`, or use `weft run` which creates one")
            }
            throw WeftError(.system, "cannot open \(name.path): \(errnoText(-fd))")
        }
        var cookie: UInt64 = 0
        let rc = weft_netns_cookie(fd, &cookie)
        guard rc == 0 else {
            close(fd)
            throw WeftError(.netnsNotFound, "\(name.path) is not a network namespace (\(errnoText(-rc)))")
        }
        self.name = name
        self.fd = fd
    }

    /// The kernel's identifier for this namespace (compare with a socket's SO_NETNS_COOKIE).
    public var cookie: UInt64 {
        var c: UInt64 = 0
        _ = weft_netns_cookie(fd, &c)
        return c
    }

    /// IPv4 addresses of the namespace's non-loopback interfaces.
    public func ipv4Addresses() -> [IPAddress] {
        var buf = [UInt8](repeating: 0, count: 4 * 16)
        let n = weft_netns_ipv4_addresses(fd, &buf, 16)
        guard n > 0 else { return [] }
        return (0..<Int(n)).map { IPAddress(v4Bytes: Array(buf[$0 * 4..<$0 * 4 + 4])) }
    }

    deinit { close(fd) }
}

public enum NetnsManager {
    public static func exists(_ name: NetnsName) -> Bool {
        FileManager.default.fileExists(atPath: name.path)
    }

    public static func create(_ name: NetnsName) throws {
        let rc = weft_netns_create(name.rawValue)
        if rc == -EEXIST {
            throw WeftError(.alreadyExists, "network namespace '\(name)' already exists",
                            hint: "pick another --name, or mesh it as it is with `weft attach --netns \(name)`")
        }
        guard rc == 0 else { throw WeftError(.system, "cannot create network namespace '\(name)': \(errnoText(-rc))") }
    }

    public static func delete(_ name: NetnsName) throws {
        let rc = weft_netns_delete(name.rawValue)
        guard rc == 0 || rc == -ENOENT else {
            throw WeftError(.system, "cannot delete network namespace '\(name)': \(errnoText(-rc))")
        }
    }
}

public func errnoText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

extension NetnsHandle {
    /// Processes whose network namespace is this one (matched by nsfs inode, /proc/PID/ns/net).
    public func processes() -> [pid_t] {
        var own = stat()
        guard fstat(fd, &own) == 0 else { return [] }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { name -> pid_t? in
            guard let pid = pid_t(name), pid != getpid() else { return nil }
            var st = stat()
            guard stat("/proc/\(name)/ns/net", &st) == 0 else { return nil }
            return st.st_ino == own.st_ino && st.st_dev == own.st_dev ? pid : nil
        }
    }

    /// Ends every process left in the namespace: SIGTERM, then SIGKILL after `grace`.
    /// Returns how many there were. Used when a wrapped command exits and leaves children.
    @discardableResult
    public func terminateProcesses(grace: Double = 2) -> Int {
        let found = processes()
        guard !found.isEmpty else { return 0 }
        for pid in found { kill(pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(grace)
        while Date() < deadline && !processes().isEmpty { usleep(20_000) }
        for pid in processes() { kill(pid, SIGKILL) }
        let killDeadline = Date().addingTimeInterval(2)
        while Date() < killDeadline && !processes().isEmpty { usleep(10_000) }
        return found.count
    }
}
