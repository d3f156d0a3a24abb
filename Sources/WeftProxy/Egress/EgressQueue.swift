import CWeftLinux
import Foundation
import Glibc
import Logging
import Synchronization
import WeftCore

/// The agent's end of one workload netns's NFQUEUE: the capture rules queue the first packet
/// of every new non-TCP flow (UDP other than the captured DNS, ICMP echo, other protocols);
/// this reader gives each a verdict from the EgressAuditor (MeshConfig outboundTrafficPolicy)
/// and conntrack applies it to the rest of the flow.
///
/// Its own thread: the netlink socket must be made inside the netns (setns moves only the
/// calling thread), and reading it blocks. The rules have no `--queue-bypass`, so while no
/// reader is bound (agent stopped or restarting) those flows are dropped: egress fails closed.
public final class EgressQueue: Sendable {
    public let queue: UInt16
    private let stopping = Atomic<Bool>(false)
    private let done = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let finished = Atomic<Bool>(false)
    private let handle: Handle

    /// The C handle, used only by the reader thread after start.
    final class Handle: @unchecked Sendable {
        let raw: OpaquePointer
        init(_ raw: OpaquePointer) { self.raw = raw }
    }

    private init(queue: UInt16, handle: Handle) {
        self.queue = queue
        self.handle = handle
    }

    /// Binds the queue inside the netns behind `nsfd` and starts reading. Throws when the
    /// queue cannot be bound (another reader holds it, or the kernel has no NFQUEUE).
    public static func start(queue: UInt16, nsfd: Int32, netns: NetnsName, auditor: EgressAuditor, logger: Logger) async throws -> EgressQueue {
        let opened: Result<Handle, WeftError> = await withCheckedContinuation { cont in
            let thread = Thread {
                let rc = weft_setns_net(nsfd)
                guard rc == 0 else {
                    cont.resume(returning: .failure(WeftError(.system, "egress queue: cannot enter netns \(netns): \(String(cString: strerror(-rc)))")))
                    return
                }
                var error: Int32 = 0
                guard let raw = weft_nfq_open(queue, &error) else {
                    let hint = error == -EPERM ? " (needs CAP_NET_ADMIN)" : error == -EBUSY || error == -EEXIST ? " (another process reads it)" : ""
                    cont.resume(returning: .failure(WeftError(.system, "egress queue \(queue) in netns \(netns): \(String(cString: strerror(-error)))\(hint)")))
                    return
                }
                // This thread ends here; the socket stays in the netns it was made in.
                cont.resume(returning: .success(Handle(raw)))
            }
            thread.name = "weft-egress-\(netns)"
            thread.start()
        }
        let handle = try opened.get()
        let q = EgressQueue(queue: queue, handle: handle)
        let thread = Thread { [q] in q.run(auditor: auditor, logger: logger) }
        thread.name = "weft-egress-\(netns)"
        thread.start()
        return q
    }

    private func run(auditor: EgressAuditor, logger: Logger) {
        var packet = weft_nfq_packet()
        var dropped: UInt64 = 0
        var reportedDrops: UInt64 = 0
        while !stopping.load(ordering: .relaxed) {
            let rc = weft_nfq_next(handle.raw, &packet, 250, &dropped)
            if dropped != reportedDrops {
                logger.warning("egress queue \(queue): the kernel dropped queued packets (queue full); those flows failed closed",
                               metadata: ["workload": "\(auditor.workload)"])
                reportedDrops = dropped
            }
            if rc == 0 { continue }
            if rc < 0 {
                logger.error("egress queue \(queue) stopped reading: \(String(cString: strerror(-rc))); non-TCP egress now fails closed",
                             metadata: ["workload": "\(auditor.workload)"])
                break
            }
            let verdict = Self.flow(of: packet).map { auditor.check($0) }
                ?? .deny(reason: "unparseable packet")
            _ = weft_nfq_verdict(handle.raw, packet.id, verdict.allowed ? 1 : 0)
        }
        weft_nfq_close(handle.raw)
        finished.store(true, ordering: .relaxed)
        let waiter = done.withLock { c -> CheckedContinuation<Void, Never>? in
            let w = c
            c = nil
            return w
        }
        waiter?.resume()
    }

    /// The flow a queued packet starts (nil: not IPv4/IPv6).
    static func flow(of p: weft_nfq_packet) -> EgressFlow? {
        var dst = p.dst
        let bytes = withUnsafeBytes(of: &dst) { Array($0) }
        let address: IPAddress
        switch p.family {
        case 4: address = IPAddress(v4Bytes: Array(bytes[0..<4]))
        case 6: address = .v6(Array(bytes[0..<16]))
        default: return nil
        }
        let proto = EgressFlow.Proto(ipProtocol: p.protocol)
        let hasPorts = p.protocol == 6 || p.protocol == 17 || p.protocol == 132 || p.protocol == 136
        return EgressFlow(proto: proto, destination: address, port: hasPorts ? p.dport : nil)
    }

    /// Stops reading and closes the queue (returns once the reader is gone, ≤ 250 ms).
    public func stop() async {
        stopping.store(true, ordering: .relaxed)
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let resumeNow = done.withLock { c -> Bool in
                if finished.load(ordering: .relaxed) { return true }
                c = cont
                return false
            }
            if resumeNow { cont.resume() }
        }
    }
}
