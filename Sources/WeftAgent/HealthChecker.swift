import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import WeftConfig
import WeftCore
import WeftProxy

/// Active health checks (weft.dev/v1alpha1 HealthCheck): from the node's own network
/// namespace, an HTTP GET of the check's path on every endpoint of the service every
/// `interval`; 2xx/3xx within `timeout` passes. Verdicts go to the directory, which leaves
/// unhealthy endpoints out of load balancing. Probes reach the app through its inbound
/// proxy, not through any outbound path, so they never count toward outlier detection.
struct HealthChecker {
    let directory: ServiceDirectory
    let group: EventLoopGroup
    let logger: Logger
    var tick: Duration = .milliseconds(100)

    private struct Key: Hashable { let host: String; let workload: String }

    func run() async {
        var states: [Key: HealthState] = [:]
        var due: [Key: ContinuousClock.Instant] = [:]
        let clock = ContinuousClock()
        while !Task.isCancelled {
            let now = clock.now
            var live = Set<Key>()
            await withTaskGroup(of: (Key, HealthCheck, Bool).self) { probes in
                for target in directory.healthTargets() {
                    for endpoint in target.endpoints {
                        let key = Key(host: target.host, workload: endpoint.workload)
                        live.insert(key)
                        guard now >= due[key, default: now] else { continue }
                        due[key] = now + target.check.interval
                        let check = target.check, address = endpoint.address, group = group
                        probes.addTask { (key, check, await Self.probe(address, path: check.path, timeout: check.timeout, group: group)) }
                    }
                }
                for await (key, check, passed) in probes {
                    var state = states[key] ?? HealthState()
                    if state.record(passed: passed, healthyThreshold: check.healthyThreshold, unhealthyThreshold: check.unhealthyThreshold) {
                        directory.setHealth(host: key.host, workload: key.workload, healthy: state.healthy)
                        logger.notice("health check \(state.healthy ? "passes again" : "fails"): \(key.workload) of \(key.host) (GET \(check.path))")
                    }
                    states[key] = state
                }
            }
            // Endpoints or checks that went away: forget them (and their verdicts).
            for key in states.keys where !live.contains(key) {
                states[key] = nil
                due[key] = nil
                directory.setHealth(host: key.host, workload: key.workload, healthy: true)
            }
            try? await Task.sleep(for: tick)
        }
    }

    /// One GET; true for a 2xx/3xx answer within `timeout`.
    static func probe(_ address: OriginalDestination, path: String, timeout: Duration, group: EventLoopGroup) async -> Bool {
        guard let socketAddress = try? SocketAddress(ipAddress: "\(address.ip)", port: Int(address.port)) else { return false }
        let loop = group.next()
        let result = loop.makePromise(of: Bool.self)
        let deadline = loop.scheduleTask(in: TimeAmount(timeout)) { result.succeed(false) }
        ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ProbeHandler(result: result, path: path, host: "\(address)"))
                }
            }
            .connect(to: socketAddress)
            .whenComplete { outcome in
                switch outcome {
                case .success(let channel):
                    result.futureResult.whenComplete { _ in channel.close(promise: nil) }
                case .failure:
                    result.succeed(false)
                }
            }
        let passed = (try? await result.futureResult.get()) ?? false
        deadline.cancel()
        return passed
    }
}

private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let result: EventLoopPromise<Bool>
    private let path: String
    private let host: String

    init(result: EventLoopPromise<Bool>, path: String, host: String) {
        self.result = result
        self.path = path
        self.host = host
    }

    func channelActive(context: ChannelHandlerContext) {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
        head.headers.add(name: "host", value: host)
        head.headers.add(name: "user-agent", value: "weft-health-check")
        head.headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            result.succeed((200..<400).contains(Int(head.status.code)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        result.succeed(false)  // no effect if already answered
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        result.succeed(false)
        context.close(promise: nil)
    }
}
