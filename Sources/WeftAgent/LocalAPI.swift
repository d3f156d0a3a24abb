import Foundation
import Logging
import NIOCore
import NIOPosix
import WeftControl
import WeftCore

/// The agent's local API on a root-only Unix socket (/run/weft/agent.sock).
final class LocalAPI: Sendable {
    let registry: WorkloadRegistry
    let capture: CaptureSettings
    let logger: Logger
    /// Where config comes from, when a control plane (nil: this agent is its own).
    let control: ControlLink?

    init(registry: WorkloadRegistry, capture: CaptureSettings, logger: Logger, control: ControlLink? = nil) {
        self.registry = registry
        self.capture = capture
        self.logger = logger
        self.control = control
    }

    func respond(to bytes: [UInt8]) async -> AgentResponse {
        let request: AgentRequest
        switch LocalSocket.decode(bytes) {
        case .success(let r): request = r
        case .failure(let e): return .failure(e)
        }
        do {
            switch request {
            case .ping:
                var r = AgentResponse(capture: capture, version: WeftVersion.current)
                r.control = await control?.currentStatus
                return r
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
                return AgentResponse(config: try await registry.applyConfig(files))
            case .deleteConfig(let files):
                return AgentResponse(config: try await registry.deleteConfig(files))
            case .getConfig:
                var r = AgentResponse(config: await registry.currentConfig())
                r.control = await control?.currentStatus
                return r
            case .listCertificates:
                return AgentResponse(certificates: try await registry.certificates())
            case .rotateCA(let finish):
                return AgentResponse(certificates: try await registry.rotateCA(finish: finish))
            case .reloadCA:
                return AgentResponse(certificates: try await registry.reloadCA())
            case .createToken, .listAgents:
                throw WeftError(.invalidArgument, "this is an agent's socket; join tokens and agent status are the control plane's",
                                hint: "ask `weft control` (its socket is \(WeftDefaults.controlSocket)): pass --control-socket")
            }
        } catch let error as WeftError {
            return .failure(error)
        } catch {
            return .failure(WeftError(.system, "\(error)"))
        }
    }

    /// Binds the socket with mode 0600 (see LocalSocket).
    func bind(path: String, group: EventLoopGroup) async throws -> Channel {
        try await LocalSocket.bind(path: path, what: "agent", group: group, logger: logger) { [self] bytes in
            await self.respond(to: bytes)
        }
    }
}
