import Glibc
import ArgumentParser
import CWeftLinux
import Foundation
import WeftAgent
import WeftControl
import WeftCore
import WeftNetns

/// `weft run`: wraps an unmodified command in a new meshed netns and cleans up after it.
///
/// Steps, each undone in reverse on failure or when the command exits: reserve an address
/// from the agent → create the netns → veth to the bridge → attach to the agent → capture
/// rules → run CMD as an unprivileged user with no capabilities → wait, forwarding signals.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run an unmodified command inside a new meshed network namespace.",
        discussion: """
            Exit status: the command's own; 128+N if it was killed by signal N; 125 if Weft \
            could not set the workload up; 126 if the command could not be started; 127 if \
            it was not found.
            """
    )

    @Option(help: "Workload name; also the netns name (default: SERVICE-xxxxx).") var name: String?
    @Option(help: "Service this workload serves (required, here or in the --from file).") var service: String?
    @Option(help: ArgumentHelp("Take the workload from FILE (KEY = VALUE lines: command, service, namespace, port, label, service-account, user, name); the weft-run@NAME unit runs /etc/weft/workloads/NAME.conf this way.", valueName: "FILE"))
    var from: String?
    @Option(help: "Mesh namespace of the service.") var namespace: String = "default"
    @Option(help: "PORT[:TARGET][/PROTO] the service listens on (repeatable).") var port: [String] = []
    @Option(help: "KEY=VALUE label (repeatable).") var label: [String] = []
    @Option(help: "Service account of the workload's identity (default: the service name).") var serviceAccount: String?
    @Option(help: "User to run the command as (default: the sudo user, else nobody).") var user: String?
    @Flag(name: .shortAndLong, help: "Print the workload's name, address and netns to stderr before starting.") var verbose = false
    @OptionGroup var agent: AgentSocketOption
    @Argument(parsing: .postTerminator, help: "The command and its arguments (after --).")
    var command: [String] = []

    func run() throws {
        if let from { return try Self.fromFile(from, name: name, verbose: verbose, socket: agent.path, conflicts: self).run() }
        // Signals that arrive during set-up are recorded; a terminating one aborts the run
        // (after cleanup) instead of starting the command.
        _ = weft_install_signal_forwarding()
        let plan: RunPlan
        do {
            plan = try RunPlan.make(self)
        } catch let e as WeftError where e.code == .commandNotFound {
            fail(e, exitCode: 127)
        } catch {
            fail(error, exitCode: 125)
        }
        var cleanup = Cleanup()
        let status: Int32
        do {
            let attached = try plan.setUp(&cleanup)
            let early = weft_pending_termination()
            if early != 0 {
                cleanup.run()
                warn("received signal \(early) during set-up; not starting \(plan.argv[0])")
                Foundation.exit(128 + early)
            }
            status = try plan.execute(attached)
        } catch let e as SpawnError {
            cleanup.run()
            fail(e.error, exitCode: e.exitCode)
        } catch {
            cleanup.run()
            fail(error, exitCode: 125)
        }
        cleanup.run()
        // Exited: its code; killed by a signal: 128 + the signal, as shells report it.
        let signal = status & 0x7f
        Foundation.exit(signal == 0 ? (status >> 8) & 0xff : 128 + signal)
    }
}

extension RunCommand {
    /// `--from FILE`: the file's lines become the arguments; only --name, -v and
    /// --agent-socket may be given beside it. The name defaults to the file's (web.conf → web).
    static func fromFile(_ path: String, name: String?, verbose: Bool, socket: String, conflicts cmd: RunCommand) throws -> RunCommand {
        guard cmd.service == nil, cmd.port.isEmpty, cmd.label.isEmpty, cmd.serviceAccount == nil, cmd.user == nil,
              cmd.namespace == "default", cmd.command.isEmpty else {
            fail(WeftError(.invalidArgument, "--from \(path): the file describes the workload; besides it only --name, -v and --agent-socket are accepted"),
                 exitCode: 125)
        }
        do {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw WeftError(.notFound, "--from \(path): cannot read the file (\(errnoText(errno)))")
            }
            var args = try WorkloadFile.arguments(String(decoding: data, as: UTF8.self), path: path)
            let fileName = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
            if let name {  // the command line wins over the file's name line
                if let i = args.firstIndex(of: "--name"), i < args.firstIndex(of: "--")! { args.removeSubrange(i...i + 1) }
                args = ["--name", name] + args
            } else if !args.prefix(while: { $0 != "--" }).contains("--name") {
                args = ["--name", fileName] + args
            }
            if verbose { args.insert("-v", at: 0) }
            args = ["--agent-socket", socket] + args
            return try RunCommand.parse(args)
        } catch {
            fail(error, exitCode: 125)
        }
    }
}

/// Undo actions, run last-in first-out; each failure is reported and the rest still run.
struct Cleanup {
    private var steps: [(String, () throws -> Void)] = []

    mutating func push(_ what: String, _ action: @escaping () throws -> Void) {
        steps.append((what, action))
    }

    mutating func run() {
        while let (what, action) = steps.popLast() {
            do { try action() } catch { warn("cleanup: \(what): \(error)") }
        }
    }
}

struct SpawnError: Error {
    let error: WeftError
    let exitCode: Int32
}

/// Everything `weft run` resolved before touching the system, so bad input fails before
/// anything is created.
struct RunPlan {
    let spec: WorkloadSpec
    let executable: String
    let argv: [String]
    let account: Account
    let client: AgentClient
    let verbose: Bool

    static func make(_ cmd: RunCommand) throws -> RunPlan {
        guard !cmd.command.isEmpty else {
            throw WeftError(.invalidArgument, "no command given", hint: "usage: weft run --service S -- CMD ARGS...")
        }
        try requireRoot("weft run (it creates a network namespace and capture rules)")
        let executable = try Executables.resolve(cmd.command[0])
        _ = try HostCommand.require("iptables-restore", package: "iptables")
        _ = try HostCommand.require("nsenter", package: "util-linux")
        guard let serviceName = cmd.service else {
            throw WeftError(.invalidArgument, "--service is required (the service this workload serves)", hint: "usage: weft run --service S -- CMD ARGS...")
        }
        let service = try ServiceName(serviceName)
        let name = cmd.name ?? "\(service)-\(String(UInt32.random(in: 0...0xfffff), radix: 16))"
        let netns = try NetnsName(name)
        var spec = WorkloadSpec(name: name, netns: netns, service: service, namespace: try MeshNamespace(cmd.namespace),
                                ports: try cmd.port.map(PortMapping.init(parsing:)),
                                labels: try ListParsing.labels(cmd.label), podIP: nil)
        spec.serviceAccount = try cmd.serviceAccount.map(ServiceAccountName.check)
        let account = try Account.resolve(cmd.user)
        return RunPlan(spec: spec, executable: executable, argv: cmd.command, account: account,
                       client: AgentClient(socketPath: cmd.agent.path), verbose: cmd.verbose)
    }

    /// Returns the spec as attached (with the addresses the agent gave it).
    func setUp(_ cleanup: inout Cleanup) throws -> WorkloadSpec {
        let netns = spec.netns
        _ = try client.call(.ping)
        if NetnsManager.exists(netns) {
            throw WeftError(.alreadyExists, "network namespace '\(netns)' already exists",
                            hint: "pick another --name, or mesh it as it is with `weft attach --netns \(netns)`")
        }
        let reply = try client.call(.allocate(netns: netns))
        guard let network = reply.network, let capture = reply.capture else {
            throw WeftError(.protocolError, "the agent did not return an address")
        }
        let client = self.client
        cleanup.push("release \(network.podIP)") { _ = try client.call(.release(netns: netns)) }

        try NetnsManager.create(netns)
        cleanup.push("delete netns \(netns)") { try NetnsManager.delete(netns) }
        let handle = try NetnsHandle(opening: netns)
        try PodNetworking.connect(handle, network: network)
        cleanup.push("delete veth \(PodNetworking.hostVethName(for: netns))") { try PodNetworking.disconnect(netns) }

        var spec = self.spec
        spec.ownedByRun = true
        spec.podIP = network.podIP
        spec.podIPv6 = network.podIPv6
        _ = try client.call(.attach(spec))
        cleanup.push("detach \(netns)") { _ = try client.call(.detach(netns: netns, force: true)) }

        let installer = CaptureInstaller(netns: netns)
        try installer.apply(CaptureOptions(capture))
        cleanup.push("remove capture rules in \(netns)") { try installer.remove() }
        // Runs first: the command's leftover children die with it, as in a container.
        cleanup.push("stop processes left in \(netns)") {
            let n = handle.terminateProcesses()
            if n > 0 { warn("stopped \(n) process(es) \(spec.name) left behind in netns \(netns)") }
        }
        if verbose { FileHandle.standardError.write(Data("weft: workload \(spec.name) (service \(spec.service)) at \(network.podIP) in netns \(netns)\n".utf8)) }
        return spec
    }

    /// Starts the command inside the netns and waits for it. Returns the raw wait status.
    func execute(_ spec: WorkloadSpec) throws -> Int32 {
        let handle = try NetnsHandle(opening: spec.netns)
        var env = ProcessInfo.processInfo.environment
        env["HOME"] = account.home
        env["USER"] = account.name
        env["LOGNAME"] = account.name
        env["WEFT_WORKLOAD"] = spec.name
        env["WEFT_SERVICE"] = spec.service.rawValue
        if let ip = spec.podIP { env["WEFT_POD_IP"] = ip.description }
        if let ip = spec.podIPv6 { env["WEFT_POD_IPV6"] = ip.description }
        env["NOTIFY_SOCKET"] = nil  // readiness is weft run's to report (below), not the app's
        let envp = env.map { "\($0.key)=\($0.value)" }
        var step: Int32 = 0
        let pid = withCStrings(argv) { cargv in
            withCStrings(envp) { cenvp in
                account.groups.withUnsafeBufferPointer { groups in
                    weft_spawn_dropped(handle.fd, account.uid, account.gid, groups.baseAddress, Int32(groups.count),
                                       executable, cargv, cenvp, &step)
                }
            }
        }
        if pid < 0 {
            let what = String(cString: weft_spawn_step_name(step))
            let e = WeftError(.system, "cannot start \(argv[0]) (\(what)): \(errnoText(-pid))")
            throw SpawnError(error: e, exitCode: -pid == ENOENT ? 127 : 126)
        }
        // Under systemd (weft-run@NAME, Type=notify): the proxy is attached and the capture
        // rules are in, so units ordered after this one start only once it is meshed.
        SystemdNotify.send("READY=1\nMAINPID=\(getpid())\nSTATUS=\(argv[0]) (pid \(pid)) runs as \(account.name) in netns \(spec.netns), pod IP \(spec.podIP.map { "\($0)" } ?? "?")")
        let status = weft_wait_forwarding(pid)
        guard status >= 0 else { throw WeftError(.system, "waiting for \(argv[0]) failed: \(errnoText(-status))") }
        return status
    }
}

/// The unprivileged account the command runs as.
struct Account {
    let name: String
    let uid: uid_t
    let gid: gid_t
    let groups: [gid_t]
    let home: String

    static func resolve(_ requested: String?) throws -> Account {
        let env = ProcessInfo.processInfo.environment
        let pw: UnsafeMutablePointer<passwd>?
        let label: String
        if let requested {
            label = "--user \(requested)"
            if let uid = uid_t(requested) { pw = getpwuid(uid) } else { pw = getpwnam(requested) }
        } else if let sudoUID = env["SUDO_UID"].flatMap({ uid_t($0) }), sudoUID != 0 {
            label = "the sudo user (uid \(sudoUID))"
            pw = getpwuid(sudoUID)
        } else {
            label = "the default user nobody"
            pw = getpwnam("nobody")
        }
        guard let pw else {
            throw WeftError(.invalidArgument, "\(label): no such user")
        }
        let name = String(cString: pw.pointee.pw_name)
        let uid = pw.pointee.pw_uid, gid = pw.pointee.pw_gid
        guard uid != 0 else {
            throw WeftError(.invalidArgument, "\(label) is root; wrapped commands never run as root",
                            hint: "pass --user with an unprivileged account")
        }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: 64)
        if getgrouplist(name, gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(name, gid, &groups, &count)
        }
        return Account(name: name, uid: uid, gid: gid, groups: Array(groups.prefix(Int(max(count, 0)))),
                       home: String(cString: pw.pointee.pw_dir))
    }
}

enum Executables {
    /// Finds CMD the way execvp would, so "not found" is reported before anything is made.
    static func resolve(_ command: String) throws -> String {
        let fm = FileManager.default
        if command.contains("/") {
            guard fm.fileExists(atPath: command) else {
                throw WeftError(.commandNotFound, "command not found: \(command)")
            }
            return command
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(command)"
            if fm.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw WeftError(.commandNotFound, "command not found: \(command) (searched PATH=\(path))")
    }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
