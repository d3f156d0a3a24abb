import Foundation
import GRPCCore
import Logging
import WeftControl
import WeftCore
import WeftIdentity

// weft-control-bench: N simulated agents against a running `weft control`, to measure config
// propagation (bench/propagation.sh). Each simulated agent is what a real one is on the wire:
// its own node key, a join with the token (pin checked), its own TLS connection and
// Subscribe stream, an ACK for every snapshot. Then, per round, a config change is applied
// through the control plane's local socket and the time until each agent has received (and
// ACKed) it is recorded, and the control plane is asked until it has every ACK.
//
// Usage: weft-control-bench --control HOST:PORT --socket PATH --token T --pin sha256:… --agents N --rounds R

func argument(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

func die(_ message: String) -> Never {
    FileHandle.standardError.write(Data("weft-control-bench: \(message)\n".utf8))
    exit(2)
}

guard let control = argument("--control"), let socket = argument("--socket"), let token = argument("--token"),
      let pin = argument("--pin"), let agents = argument("--agents").flatMap(Int.init), agents > 0 else {
    die("usage: --control HOST:PORT --socket PATH --token T --pin sha256:… --agents N [--rounds R]")
}
let rounds = argument("--rounds").flatMap(Int.init) ?? 5
let parts = control.split(separator: ":")
guard parts.count == 2, let port = Int(parts[1]) else { die("--control HOST:PORT") }
var logger = Logger(label: "bench")
logger.logLevel = .error
let client = ControlClient(host: String(parts[0]), port: port, logger: logger)

/// When each simulated agent received each version.
actor Receipts {
    private var received: [Int: [Int: ContinuousClock.Instant]] = [:]  // version → agent → when

    func record(agent: Int, version: Int) {
        received[version, default: [:]][agent] = received[version]?[agent] ?? .now
    }

    func count(_ version: Int) -> Int { received[version]?.count ?? 0 }
    func times(_ version: Int) -> [ContinuousClock.Instant] { Array((received[version] ?? [:]).values) }
}

let receipts = Receipts()

func waitFor(_ what: String, timeout: Duration, _ done: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await done() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    die("timed out waiting for \(what)")
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
}

func vs(_ round: Int) -> ConfigFile {
    ConfigFile(name: "bench-\(round).yaml", content: """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: bench, namespace: default}
        spec:
          hosts: [bench]
          http:
          - timeout: \(round + 1)s
            route:
            - destination: {host: bench}
        """)
}

func localAPI(_ request: AgentRequest) async throws -> AgentResponse {
    try await Task.detached { try AgentClient(socketPath: socket).call(request) }.value
}

// 1. Join every simulated agent (a few at a time, like nodes arriving).
let joinStart = ContinuousClock.now
var credentials: [(WorkloadKey, ControlClient.Trust, JoinReply)] = []
try await withThrowingTaskGroup(of: (Int, WorkloadKey, ControlClient.Trust, JoinReply).self) { group in
    var next = 0
    var results: [Int: (WorkloadKey, ControlClient.Trust, JoinReply)] = [:]
    func add() {
        let i = next
        next += 1
        group.addTask {
            let key = WorkloadKey()
            let (trust, reply) = try await client.join(node: "sim-\(i)", token: token, pin: pin, key: key)
            return (i, key, trust, reply)
        }
    }
    for _ in 0..<min(32, agents) { add() }
    while let (i, key, trust, reply) = try await group.next() {
        results[i] = (key, trust, reply)
        if next < agents { add() }
    }
    credentials = (0..<agents).map { results[$0]! }
}
let joinSeconds = (ContinuousClock.now - joinStart).seconds

// 2. One subscription per agent, ACKing every snapshot.
let subscriptions = Task {
    await withTaskGroup(of: Void.self) { group in
        for (i, (key, trust, reply)) in credentials.enumerated() {
            group.addTask {
                do {
                    let keyPEM = try key.privateKeyPEM()
                    let (acks, continuation) = AsyncStream.makeStream(of: AgentMessage.self)
                    continuation.yield(AgentMessage(hello: .init(agentVersion: "bench", appliedVersion: 0)))
                    let request = StreamingClientRequest<AgentMessage> { writer in
                        for await m in acks { try await writer.write(m) }
                    }
                    try await client.withClient(chain: reply.chainPEM, keyPEM: keyPEM, trust: trust) { grpc in
                        try await grpc.bidirectionalStreaming(request: request, descriptor: ControlAPI.subscribe,
                                                              serializer: JSONCoder<AgentMessage>(), deserializer: JSONCoder<ConfigSnapshot>(),
                                                              options: ControlClient.callOptions) { response in
                            for try await snapshot in response.messages {
                                await receipts.record(agent: i, version: snapshot.version)
                                continuation.yield(AgentMessage(ack: snapshot.version))
                            }
                        }
                    }
                } catch is CancellationError {
                } catch {
                    FileHandle.standardError.write(Data("agent \(i): \(ControlClient.describe(error))\n".utf8))
                }
            }
        }
    }
}
let base = try await localAPI(.getConfig).config?.version ?? 0
try await waitFor("\(agents) subscriptions", timeout: .seconds(120)) { await receipts.count(base) >= agents }

// 3. Rounds: apply, then wait for every agent's receipt and for the control plane to hold every ACK.
var propagation: [Double] = []   // per agent per round, ms
var allReceived: [Double] = []   // per round: the last agent's receipt, ms
var allAcked: [Double] = []      // per round: until the control plane listed every ACK, ms
for round in 1...rounds {
    let start = ContinuousClock.now
    let reply = try await localAPI(.applyConfig([vs(round + Int.random(in: 0..<1000) * 10)]))
    guard let version = reply.config?.version, reply.config?.rejected == false else { die("apply rejected: \(reply)") }
    try await waitFor("version \(version) at every agent", timeout: .seconds(60)) { await receipts.count(version) >= agents }
    let times = await receipts.times(version).map { ($0 - start).seconds * 1000 }
    propagation += times
    allReceived.append(times.max() ?? .nan)
    try await waitFor("every ACK of version \(version)", timeout: .seconds(60)) {
        let statuses = try await localAPI(.listAgents).agents ?? []
        return statuses.filter { $0.node.hasPrefix("sim-") && $0.ackedVersion == version }.count >= agents
    }
    allAcked.append((ContinuousClock.now - start).seconds * 1000)
}
subscriptions.cancel()
let sorted = propagation.sorted()
let result: [String: Any] = [
    "agents": agents, "rounds": rounds, "joinSeconds": joinSeconds,
    "p50ms": percentile(sorted, 0.5), "p99ms": percentile(sorted, 0.99), "maxms": sorted.last ?? .nan,
    "allReceivedMedianMs": percentile(allReceived.sorted(), 0.5), "allAckedMedianMs": percentile(allAcked.sorted(), 0.5),
    "allAckedMaxMs": allAcked.max() ?? .nan,
]
print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
exit(0)

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
