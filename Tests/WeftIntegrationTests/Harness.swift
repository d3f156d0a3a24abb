import Glibc
import Foundation
import WeftCore
import WeftNetns
import XCTest

/// One harness for every end-to-end test: a private agent (own socket, bridge and pod
/// CIDR, so it never collides with a real one or another test), helpers to run `weft`
/// commands, and a teardown that deletes every netns, veth, bridge and process it made —
/// also when the test failed. Needs root; tests call `MeshHarness.start()` which skips
/// loudly otherwise.
final class MeshHarness {
    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var output: String { stdout + stderr }
    }

    final class Background {
        let process: Process
        let stdoutPath: String
        let stderrPath: String
        init(process: Process, stdoutPath: String, stderrPath: String) {
            self.process = process
            self.stdoutPath = stdoutPath
            self.stderrPath = stderrPath
        }
        var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
        var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var weftBinary: String {
        if let env = ProcessInfo.processInfo.environment["WEFT_BIN"] { return env }
        for candidate in [".build/debug/weft", ".build/x86_64-unknown-linux-gnu/debug/weft", ".build/release/weft"] {
            let path = packageRoot.appendingPathComponent(candidate).path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return packageRoot.appendingPathComponent(".build/debug/weft").path
    }

    let id: String
    let dir: String
    let socket: String
    let bridge: String
    let podCIDR: String
    private(set) var agent: Process?
    /// Extra `weft agent` flags of this harness.
    private var agentArgs: [String] = []
    private var background: [Background] = []
    private var extraNetns: [String] = []

    /// Starts a harness with its own agent, or skips the test (loudly) when not root or
    /// when a tool the tests need is missing.
    /// `withControlPlane`: a `weft control` is started first (127.0.0.1, a free port, its
    /// own socket and state) and the agent joins it with a fresh token instead of watching
    /// a config directory.
    /// `hosts`: with a control plane, an underlay bridge is made first and the control plane
    /// listens on it, so `addHost` can start agents in simulated hosts (network namespaces).
    static func start(podPrefix: Int = 24, agentArgs: [String] = [], withControlPlane: Bool = false, hosts: Bool = false,
                      controlArgs: [String] = [], etcd: Bool = false, etcdMembers: Int = 1, replicas: Bool = false,
                      file: StaticString = #filePath, line: UInt = #line) throws -> MeshHarness {
        guard geteuid() == 0 else {
            throw XCTSkip("SKIPPED: needs root and network namespaces (CI runs these as root): sudo swift test")
        }
        for tool in ["iptables-restore", "ip", "curl", "nsenter"] where HostTool.find(tool) == nil {
            throw XCTSkip("SKIPPED: \(tool) is not installed; run scripts/setup-deps")
        }
        let h = try MeshHarness(podPrefix: podPrefix)
        // WEFT_TEST_AGENT_ARGS: extra agent flags for a whole run (e.g. --no-mtls to compare).
        let extra = ProcessInfo.processInfo.environment["WEFT_TEST_AGENT_ARGS"].map { $0.split(separator: " ").map(String.init) } ?? []
        h.agentArgs = agentArgs + extra
        h.controlArgs = controlArgs
        if etcd {
            do { try h.startEtcd(members: etcdMembers) } catch {
                h.shutdown()
                throw error
            }
            h.controlArgs += ["--store", "etcd://" + h.etcdEndpoints]
        }
        if withControlPlane {
            if hosts {
                do { try h.makeUnderlay() } catch {
                    h.shutdown()
                    throw error
                }
            }
            try h.startControl()
            if replicas { try h.startReplica() }
            let token = h.weft(["control", "token", "create", "--ttl", "10m", "-o", "json", "--control-socket", h.controlSocket])
            guard token.status == 0, let object = try JSONSerialization.jsonObject(with: Data(token.stdout.utf8)) as? [String: Any],
                  let secret = object["token"] as? String, let pin = object["caPin"] as? String else {
                h.shutdown()
                throw HarnessError("weft control token create failed: \(token.output)")
            }
            h.controlPin = pin
            h.controlToken = secret
            h.hasReplica = replicas
            h.agentArgs += ["--control", h.controlEndpoints, "--token", secret, "--ca-pin", pin, "--node-name", h.id]
        }
        do { try h.startAgent() } catch {
            h.shutdown()
            throw error
        }
        return h
    }

    private init(podPrefix: Int) throws {
        id = "t" + String(UInt32.random(in: 0..<0xffff), radix: 16)
        dir = NSTemporaryDirectory() + "weft-it-\(id)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        socket = dir + "/agent.sock"
        try FileManager.default.createDirectory(atPath: dir + "/config.d", withIntermediateDirectories: true)
        bridge = "wb" + id
        // 10.234.x.0/24 (or smaller): one block per harness, inside ranges only tests use.
        let third = Int.random(in: 0...255)
        podCIDR = "10.234.\(third).0/\(podPrefix)"
    }

    func name(_ s: String) -> String { "\(id)-\(s)" }

    /// The agent's watched config directory (created empty).
    var configDir: String { dir + "/config.d" }

    /// The agent's upstream resolver in tests: a stub on the host's loopback that knows one
    /// name (ext.test → 192.0.2.10), answers NXDOMAIN otherwise, and logs every query — so
    /// no test query reaches the machine's resolver, and tests can see what went upstream.
    private(set) var dnsStubPort = 0
    private var dnsStub: Process?
    var dnsStubLog: String { (try? String(contentsOfFile: dir + "/dns-stub.log", encoding: .utf8)) ?? "" }

    private func startDNSStub() throws {
        let script = dir + "/dns-stub.py"
        try Self.dnsStubSource.write(toFile: script, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, dir + "/dns-stub.log", dir + "/dns-stub.port"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: touch(dir + "/dns-stub.err"))
        try p.run()
        dnsStub = p
        do {
            try waitUntil("DNS stub", timeout: 10) {
                self.dnsStubPort = Int((try? String(contentsOfFile: self.dir + "/dns-stub.port", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
                return self.dnsStubPort > 0
            }
        } catch {
            throw HarnessError("\(error): \((try? String(contentsOfFile: dir + "/dns-stub.err", encoding: .utf8)) ?? "")")
        }
    }

    static let dnsStubSource = #"""
    import socket, struct, sys, threading
    log = open(sys.argv[1], "a", buffering=1)
    def answer(q):
        if len(q) < 17: return None
        i, labels = 12, []
        while i < len(q) and q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace").lower()); i += 1 + q[i]
        qtype = struct.unpack(">H", q[i + 1:i + 3])[0]; end = i + 5
        name = ".".join(labels); log.write(f"{name} {qtype}\n")
        if name == "ext.test":
            ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 10]) if qtype == 1 else b""
            return q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if ans else 0, 0, 0) + q[12:end] + ans
        return q[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + q[12:end]
    # UDP and TCP on one port: the UDP port the kernel picks may be taken for TCP (by any
    # connection's ephemeral port), so pick again until both bind.
    for attempt in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            t.bind(("127.0.0.1", port)); t.listen(); break
        except OSError:
            t.close(); u.close()
    def serve_tcp():
        while True:
            c, _ = t.accept()
            try:
                n = struct.unpack(">H", c.recv(2))[0]; q = b""
                while len(q) < n: q += c.recv(n - len(q))
                a = answer(q); c.sendall(struct.pack(">H", len(a)) + a)
            finally:
                c.close()
    threading.Thread(target=serve_tcp, daemon=True).start()
    open(sys.argv[2], "w").write(str(port))
    while True:
        q, addr = u.recvfrom(4096)
        a = answer(q)
        if a: u.sendto(a, addr)
    """#

    // MARK: control plane

    private(set) var control: Process?
    private(set) var controlPort = 0
    private(set) var controlPin = ""
    private(set) var controlToken = ""
    /// Extra `weft control` flags of this harness.
    private var controlArgs: [String] = []
    /// Where the control plane listens: loopback, or the underlay bridge when there are hosts.
    private(set) var controlHost = "127.0.0.1"

    // MARK: etcd

    private(set) var etcdMembers: [Process] = []
    private(set) var etcdPort = 0
    /// Client ports of the members (etcdPort, etcdPort + 1, ...).
    var etcdEndpoints: String { (0..<max(1, etcdMembers.count)).map { "127.0.0.1:\(etcdPort + $0)" }.joined(separator: ",") }

    /// An etcd cluster of `members` on loopback, each with its own data directory (XCTSkip when
    /// etcd is missing).
    func startEtcd(members: Int = 1) throws {
        guard let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("SKIPPED: etcd is not installed; run scripts/setup-deps")
        }
        if etcdPort == 0 { etcdPort = Int.random(in: 30000...39990) }
        let cluster = (0..<members).map { "\(id)-\($0)=http://127.0.0.1:\(etcdPort + 10000 + $0)" }.joined(separator: ",")
        for m in 0..<members {
            let client = etcdPort + m, peer = etcdPort + 10000 + m
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["--name", "\(id)-\(m)", "--data-dir", dir + "/etcd-\(m)", "--listen-client-urls", "http://127.0.0.1:\(client)",
                           "--advertise-client-urls", "http://127.0.0.1:\(client)", "--listen-peer-urls", "http://127.0.0.1:\(peer)",
                           "--initial-advertise-peer-urls", "http://127.0.0.1:\(peer)", "--initial-cluster", cluster,
                           "--initial-cluster-state", "new"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle(forWritingAtPath: touch(dir + "/etcd-\(m).err"))
            try p.run()
            etcdMembers.append(p)
        }
        try waitUntil("etcd serving on \(etcdPort)", timeout: 30) {
            self.run(["curl", "-sf", "-m", "1", "-X", "POST", "http://127.0.0.1:\(self.etcdPort)/v3/kv/range", "-d", "{\"key\":\"AA==\"}"]).status == 0
        }
    }

    /// Stops one member (all when nil).
    func stopEtcd(member: Int? = nil) {
        for (i, p) in etcdMembers.enumerated() where (member == nil || member == i) && p.isRunning {
            p.terminate()
            p.waitUntilExit()
        }
    }

    // MARK: simulated hosts

    /// A host: a network namespace on the underlay bridge with its own agent (own pod bridge,
    /// pod block, socket and state), joined to the control plane.
    struct Host {
        let netns: String
        let address: String
        let podCIDR: String
        let socket: String
        let process: Process
        var node: String { netns }
    }

    private(set) var hosts: [Host] = []
    private var third: Int { Int(podCIDR.split(separator: ".")[2])! }
    var underlayBridge: String { "wu" + id.dropFirst() }

    /// 10.233.T.1/24 on a bridge in the test's own range; hosts get .11, .12, ...
    private func makeUnderlay() throws {
        let r = run(["ip", "link", "add", underlayBridge, "type", "bridge"])
        guard r.status == 0 else { throw HarnessError("ip link add \(underlayBridge): \(r.output)") }
        underlayMade = true
        _ = run(["ip", "addr", "add", "10.233.\(third).1/24", "dev", underlayBridge])
        _ = run(["ip", "link", "set", underlayBridge, "up"])
        controlHost = "10.233.\(third).1"
    }

    private var underlayMade = false

    /// Starts host `index` (1, 2, ...): its netns, underlay link, forwarding on, and an agent
    /// joined to the control plane with its own pod block 10.232.T.(64·index)/26.
    func addHost(_ index: Int) throws -> Host {
        let ns = name("h\(index)")
        let address = "10.233.\(third).\(10 + index)"
        let veth = "wh\(id.dropFirst())\(index)"
        for cmd in [["ip", "netns", "add", ns],
                    ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                    ["ip", "link", "set", veth, "master", underlayBridge, "up"],
                    ["ip", "-n", ns, "addr", "add", "\(address)/24", "dev", "eth0"],
                    ["ip", "-n", ns, "link", "set", "eth0", "up"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"],
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]] {
            let r = run(cmd)
            guard r.status == 0 else { throw HarnessError("\(cmd.joined(separator: " ")): \(r.output)") }
        }
        let podBlock = "10.232.\(third).\(64 * index)/26"
        let socket = dir + "/h\(index).sock"
        let log = touch(dir + "/h\(index).err")
        let p = Process()
        // nsenter, not `ip netns exec`: only the network namespace changes (ip netns exec also
        // makes a private mount namespace, where the /run/netns mounts of `weft run` stay).
        p.executableURL = URL(fileURLWithPath: HostTool.find("nsenter") ?? "/usr/bin/nsenter")
        p.arguments = ["--net=/run/netns/\(ns)", "--", Self.weftBinary, "agent", "--socket", socket, "--bridge", "wp\(id.dropFirst())\(index)",
                       "--pod-cidr", podBlock, "--pod-cidr6", "none", "--dns-upstream", "none", "--state-dir", dir + "/h\(index)-state",
                       "--control", controlEndpoints, "--token", controlToken, "--ca-pin", controlPin,
                       "--node-name", ns, "--node-address", address, "--log-level", "debug"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: log)
        try p.run()
        let host = Host(netns: ns, address: address, podCIDR: podBlock, socket: socket, process: p)
        hosts.append(host)
        try waitUntil("agent of host \(index) serving", timeout: 20) {
            self.weft(["get", "workloads", "--agent-socket", socket]).status == 0
        }
        return host
    }

    func hostLog(_ index: Int) -> String { (try? String(contentsOfFile: dir + "/h\(index).err", encoding: .utf8)) ?? "" }

    /// `weft ARGS` run inside a host (its agent's socket), in the background.
    func startWeft(in host: Host, _ args: [String]) throws -> Background {
        try startProcess(["nsenter", "--net=/run/netns/\(host.netns)", "--", Self.weftBinary] + args, env: ["WEFT_AGENT_SOCKET": host.socket])
    }
    var controlSocket: String { dir + "/control.sock" }
    var controlState: String { dir + "/control-state" }
    var controlLog: String { (try? String(contentsOfFile: dir + "/control.err", encoding: .utf8)) ?? "" }

    /// Starts `weft control` (again, on the same port and state after a stop).
    func startControl() throws {
        if controlPort == 0 { controlPort = Int.random(in: 20000...29999) }
        control = try launchControl(port: controlPort, socket: controlSocket, state: controlState, log: dir + "/control.err")
    }

    private var hasReplica = false
    /// Every control plane agents may use ("host:port[,host:port+1]").
    var controlEndpoints: String { "\(controlHost):\(controlPort)" + (hasReplica ? ",\(controlHost):\(controlPort + 1)" : "") }

    /// A second control plane on the same store (port + 1, its own socket and state directory).
    private(set) var replica: Process?
    var replicaSocket: String { dir + "/replica.sock" }
    var replicaLog: String { (try? String(contentsOfFile: dir + "/replica.err", encoding: .utf8)) ?? "" }

    func startReplica() throws {
        replica = try launchControl(port: controlPort + 1, socket: replicaSocket, state: dir + "/replica-state", log: dir + "/replica.err")
    }

    /// One `weft control` with this harness's flags, appending to `log`; returns once its socket answers.
    private func launchControl(port: Int, socket: String, state: String, log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.weftBinary)
        p.arguments = ["control", "--listen", "\(controlHost):\(port)", "--socket", socket, "--state-dir", state,
                       "--log-level", "debug"] + controlArgs
        if !FileManager.default.fileExists(atPath: log) { _ = touch(log) }
        let handle = FileHandle(forWritingAtPath: log)
        handle?.seekToEndOfFile()
        p.standardError = handle
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        do {
            try waitUntil("control plane serving \(socket)", timeout: 20) {
                self.weft(["get", "agents", "--control-socket", socket]).status == 0
            }
        } catch {
            p.terminate()  // never left behind when it did not come up
            p.waitUntilExit()
            throw error
        }
        return p
    }

    func stopReplica(signal: Int32) {
        guard let replica, replica.isRunning else { return }
        kill(replica.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(10)
        while replica.isRunning && Date() < deadline { usleep(20_000) }
    }

    func stopControl(signal: Int32) {
        guard let control, control.isRunning else { return }
        kill(control.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(10)
        while control.isRunning && Date() < deadline { usleep(20_000) }
    }

    /// The harness agent's Prometheus and admin ports (loopback, free when chosen; kept
    /// across agent restarts).
    private(set) var metricsPort = 0
    private(set) var adminPort = 0

    /// A loopback TCP port nothing uses now (the kernel's pick for port 0): random ports may
    /// collide with the ephemeral ports of connections the machine makes meanwhile.
    static func freePort() -> Int {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, len) == 0 ? getsockname(fd, $0, &len) : -1 }
        }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    private func startAgent() throws {
        if dnsStub == nil { try startDNSStub() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.weftBinary)
        let configSource = agentArgs.contains("--control") ? [] : ["--config-dir", configDir]
        if metricsPort == 0 { (metricsPort, adminPort) = (Self.freePort(), Self.freePort()) }
        p.arguments = ["agent", "--socket", socket, "--bridge", bridge, "--pod-cidr", podCIDR, "--log-level", "debug",
                       "--dns-upstream", "127.0.0.1:\(dnsStubPort)", "--state-dir", dir + "/state",
                       "--metrics-address", "127.0.0.1:\(metricsPort)", "--admin-address", "127.0.0.1:\(adminPort)"] + configSource + agentArgs
        p.standardOutput = FileHandle(forWritingAtPath: touch(dir + "/agent.out"))
        let log = dir + "/agent.err"
        if !FileManager.default.fileExists(atPath: log) { _ = touch(log) }
        let handle = FileHandle(forWritingAtPath: log)
        handle?.seekToEndOfFile()
        p.standardError = handle
        try p.run()
        agent = p
        try waitUntil("agent serving \(socket)", timeout: 20) {
            self.weft(["get", "workloads", "--agent-socket", self.socket]).status == 0
        }
    }

    /// Stops the agent with `signal` (waiting until it is gone), then starts it again on the
    /// same socket, bridge and state directory (`restart: false`: only stops it; call again
    /// to start it).
    func restartAgent(signal: Int32, restart: Bool = true) throws {
        if let agent, agent.isRunning {
            kill(agent.processIdentifier, signal)
            let deadline = Date().addingTimeInterval(10)
            while agent.isRunning && Date() < deadline { usleep(20_000) }
        }
        if restart { try startAgent() }
    }

    var agentLog: String { (try? String(contentsOfFile: dir + "/agent.err", encoding: .utf8)) ?? "" }

    /// Runs `weft ARGS` to completion (bounded by `timeout`).
    @discardableResult
    func weft(_ args: [String], timeout: TimeInterval = 60, env: [String: String] = [:]) -> Result {
        run([Self.weftBinary] + args, timeout: timeout, env: ["WEFT_AGENT_SOCKET": socket].merging(env) { $1 })
    }

    /// Runs any command to completion, bounded by `timeout` (then SIGKILL).
    @discardableResult
    func run(_ argv: [String], timeout: TimeInterval = 60, env: [String: String] = [:]) -> Result {
        let tag = UUID().uuidString.prefix(8)
        let out = touch("\(dir)/cmd-\(tag).out"), err = touch("\(dir)/cmd-\(tag).err")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : (HostTool.find(argv[0]) ?? argv[0]))
        p.arguments = Array(argv.dropFirst())
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { return Result(status: -1, stdout: "", stderr: "cannot start \(argv): \(error)") }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    /// Starts `weft ARGS` in the background; stopped at teardown if still running.
    func startWeft(_ args: [String]) throws -> Background {
        let tag = UUID().uuidString.prefix(8)
        let out = touch("\(dir)/bg-\(tag).out"), err = touch("\(dir)/bg-\(tag).err")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.weftBinary)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(["WEFT_AGENT_SOCKET": socket]) { $1 }
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let bg = Background(process: p, stdoutPath: out, stderrPath: err)
        background.append(bg)
        return bg
    }

    /// Starts any command in the background (stopped at teardown if still running).
    func startProcess(_ argv: [String], env: [String: String] = [:]) throws -> Background {
        let tag = UUID().uuidString.prefix(8)
        let out = touch("\(dir)/bg-\(tag).out"), err = touch("\(dir)/bg-\(tag).err")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : (HostTool.find(argv[0]) ?? argv[0]))
        p.arguments = Array(argv.dropFirst())
        if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let bg = Background(process: p, stdoutPath: out, stderrPath: err)
        background.append(bg)
        return bg
    }

    /// Waits for a background process to exit (bounded); returns its status.
    func wait(_ bg: Background, timeout: TimeInterval = 20) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while bg.process.isRunning && Date() < deadline { usleep(20_000) }
        return bg.process.isRunning ? nil : bg.process.terminationStatus
    }

    func workloads() throws -> [WorkloadStatus] {
        let r = weft(["get", "workloads", "-o", "json"])
        guard r.status == 0 else { throw HarnessError("weft get workloads failed: \(r.output)") }
        return try JSONDecoder().decode([WorkloadStatus].self, from: Data(r.stdout.utf8))
    }

    func services() throws -> [ServiceStatus] {
        let r = weft(["get", "services", "-o", "json"])
        guard r.status == 0 else { throw HarnessError("weft get services failed: \(r.output)") }
        return try JSONDecoder().decode([ServiceStatus].self, from: Data(r.stdout.utf8))
    }

    func service(_ name: String) throws -> ServiceStatus? {
        try services().first { $0.key.name.rawValue == name }
    }

    func workload(_ name: String) throws -> WorkloadStatus? {
        try workloads().first { $0.spec.name == name }
    }

    /// Waits until a TCP port accepts connections on loopback inside a netns.
    func waitForListener(netns: String, port: Int, timeout: TimeInterval = 20) throws {
        try waitUntil("port \(port) listening in netns \(netns)", timeout: timeout) {
            self.run(["ip", "netns", "exec", netns, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"], timeout: 5).status == 0
        }
    }

    /// A netns made by the test itself (`ip netns add`); deleted at teardown.
    func makeNetns(_ suffix: String) throws -> String {
        let ns = name(suffix)
        let r = run(["ip", "netns", "add", ns])
        guard r.status == 0 else { throw HarnessError("ip netns add \(ns): \(r.output)") }
        extraNetns.append(ns)
        _ = run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns
    }

    func waitUntil(_ what: String, timeout: TimeInterval, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(100_000)
        }
        throw HarnessError("timed out after \(Int(timeout)) s waiting for \(what)\n--- agent log ---\n\(agentLog.suffix(3000))")
    }

    func netnsList() -> [String] {
        run(["ip", "netns", "list"]).stdout.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    func ourNetns() -> [String] { netnsList().filter { $0.hasPrefix(id + "-") } }

    /// Stops everything the harness started and removes every trace of it.
    func shutdown() {
        for bg in background where bg.process.isRunning {
            kill(bg.process.processIdentifier, SIGTERM)
        }
        for bg in background {
            let deadline = Date().addingTimeInterval(10)
            while bg.process.isRunning && Date() < deadline { usleep(20_000) }
            if bg.process.isRunning { kill(bg.process.processIdentifier, SIGKILL) }
        }
        // An agent that died during the test crashed (tests that stop it start it again):
        // that fails the test, whatever it asserted, with the end of the agent's log.
        if let agent, !agent.isRunning {
            XCTFail("the agent died during the test (exit \(agent.terminationStatus)):\n\(agentLog.suffix(4000))")
        }
        if let agent, agent.isRunning {
            kill(agent.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while agent.isRunning && Date() < deadline { usleep(20_000) }
            if agent.isRunning { kill(agent.processIdentifier, SIGKILL) }
        }
        for host in hosts where host.process.isRunning {
            kill(host.process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while host.process.isRunning && Date() < deadline { usleep(20_000) }
            if host.process.isRunning { kill(host.process.processIdentifier, SIGKILL) }
        }
        stopControl(signal: SIGTERM)
        if let control, control.isRunning { kill(control.processIdentifier, SIGKILL) }
        if let replica, replica.isRunning {
            replica.terminate()
            replica.waitUntilExit()
        }
        stopEtcd()
        for ns in Set(ourNetns() + extraNetns) {
            _ = run(["ip", "netns", "pids", ns]).stdout.split(separator: "\n").compactMap { Int32($0) }.map { kill($0, SIGKILL) }
            _ = run(["ip", "netns", "del", ns])
        }
        for ns in extraNetns + ourNetns() {
            if let n = try? NetnsName(ns) { _ = run(["ip", "link", "del", PodNetworking.hostVethName(for: n)]) }
        }
        _ = run(["ip", "link", "del", bridge])
        if underlayMade { _ = run(["ip", "link", "del", underlayBridge]) }
        if let dnsStub, dnsStub.isRunning { dnsStub.terminate(); dnsStub.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func touch(_ path: String) -> String {
        FileManager.default.createFile(atPath: path, contents: nil)
        return path
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum HostTool {
    static func find(_ tool: String) -> String? {
        for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(tool)") {
            return "\(dir)/\(tool)"
        }
        return nil
    }
}

