import CWeftLinux
import Glibc
import Logging
import WeftCore

/// The capabilities the agent needs, checked at start, and the rest dropped.
///
/// The agent runs as root (it owns the pod bridge and its state), but root is not all it
/// gets: it keeps exactly CAP_NET_ADMIN and CAP_SYS_ADMIN — the set `weft-agent.service`
/// bounds it to — and drops every other capability (bounding set included, so nothing it
/// starts regains them) at start, however it was started. A capability it needs and lacks stops it
/// with the reason, instead of failing later on the first workload.
public enum AgentPrivileges {
    public struct Need: Sendable, Equatable {
        public let capability: Int
        public let name: String
        public let why: String
    }

    public static let required: [Need] = [
        Need(capability: 12, name: "CAP_NET_ADMIN",
             why: "the pod bridge, veths, addresses and routes; SO_MARK on the proxy's sockets (so capture skips them); NFQUEUE verdicts; iptables in workload namespaces"),
        Need(capability: 21, name: "CAP_SYS_ADMIN",
             why: "setns() into workload network namespaces (each workload proxy's thread lives in one)"),
    ]

    public static var requiredMask: UInt64 { required.reduce(0) { $0 | (1 << UInt64($1.capability)) } }

    /// What is missing and what is more than needed, from an effective-set mask.
    public static func evaluate(effective: UInt64) -> (missing: [Need], extra: [String]) {
        let missing = required.filter { effective & (1 << UInt64($0.capability)) == 0 }
        var extra: [String] = []
        for bit in 0..<64 where effective & (1 << UInt64(bit)) != 0 && requiredMask & (1 << UInt64(bit)) == 0 {
            extra.append(bit < names.count ? names[bit] : "CAP_\(bit)")
        }
        return (missing, extra)
    }

    /// Checks the process has what it needs (throws naming each missing capability and why),
    /// then keeps only that. `keepAll`: check only (for debugging with extra tools).
    public static func enforce(keepAll: Bool, logger: Logger) throws {
        let effective = weft_effective_capabilities()
        guard effective != UInt64.max else { throw WeftError(.system, "cannot read the agent's capabilities (capget)") }
        let (missing, extra) = evaluate(effective: effective)
        if !missing.isEmpty {
            throw WeftError(.permissionDenied,
                            "the agent lacks " + missing.map { "\($0.name) (\($0.why))" }.joined(separator: "; "),
                            hint: "run it as root with CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN (systemd/weft-agent.service)")
        }
        if keepAll {
            logger.notice("keeping every capability (--keep-capabilities): \(extra.count) beyond the 2 needed")
            return
        }
        if extra.isEmpty {
            logger.info("capabilities: exactly CAP_NET_ADMIN and CAP_SYS_ADMIN")
            return
        }
        // Capabilities are per thread and this process has several by now: drop the rest
        // from the bounding set and start again (execve gives every thread of the new image
        // the bounding set, nothing more). The second start finds nothing extra.
        let rc = weft_reexec_with_capabilities(requiredMask, CommandLine.unsafeArgv)
        throw WeftError(.system, "cannot drop the agent's other capabilities (\(extra.count): \(extra.prefix(3).joined(separator: ", "))…): \(String(cString: strerror(-rc)))",
                        hint: "start it with CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN, or pass --keep-capabilities")
    }

    /// Raises the open-file soft limit to the hard one (systemd's default soft limit is 1024;
    /// each proxied connection holds two descriptors). Returns the limit in force.
    @discardableResult
    public static func raiseOpenFileLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }

    /// capability(7) names, by number.
    static let names = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]
}
