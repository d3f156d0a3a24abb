import Foundation
import WeftCore
import WeftNetns
import XCTest

/// `weft run` as a process wrapper: exit status, signals, privileges, cleanup, bad input.
final class LifecycleTests: XCTestCase {
    var mesh: MeshHarness!

    override func setUpWithError() throws { mesh = try MeshHarness.start() }
    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }

    func assertNothingLeft(_ netns: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(mesh.netnsList().contains(netns), "netns \(netns) left behind", file: file, line: line)
        let links = mesh.run(["ip", "-o", "link"]).stdout
        XCTAssertFalse(links.contains(PodNetworking.hostVethName(for: try NetnsName(netns))), "veth of \(netns) left behind", file: file, line: line)
        XCTAssertNil(try mesh.workload(netns), "agent still lists \(netns)", file: file, line: line)
    }

    func testExitStatusIsTheCommands() throws {
        let ns = mesh.name("exit")
        let r = mesh.weft(["run", "--name", ns, "--service", "job", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        XCTAssertEqual(r.status, 7)
        XCTAssertTrue(r.stdout.contains("out"))
        XCTAssertTrue(r.stderr.contains("err"))
        try assertNothingLeft(ns)
        let killed = mesh.weft(["run", "--name", ns, "--service", "job", "--", "sh", "-c", "kill -KILL $$"])
        XCTAssertEqual(killed.status, 128 + 9)
        try assertNothingLeft(ns)
    }

    func testSignalsAreForwardedAndCleanupFollows() throws {
        let ns = mesh.name("sig")
        let job = try mesh.startWeft(["run", "--name", ns, "--service", "job", "--", "sh", "-c",
                                      "trap 'echo got-usr1' USR1; trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"])
        try mesh.waitUntil("job ready", timeout: 20) { job.stdout.contains("ready") }
        kill(job.process.processIdentifier, SIGUSR1)
        try mesh.waitUntil("USR1 forwarded", timeout: 10) { job.stdout.contains("got-usr1") }
        kill(job.process.processIdentifier, SIGTERM)
        XCTAssertEqual(mesh.wait(job), 3, job.stdout + job.stderr)
        XCTAssertTrue(job.stdout.contains("got-term"))
        try assertNothingLeft(ns)

        // A command that does not handle TERM dies of it; weft run reports 128+15.
        let sleeper = try mesh.startWeft(["run", "--name", ns, "--service", "job", "--", "sh", "-c", "echo ready; exec sleep 60"])
        try mesh.waitUntil("sleeper ready", timeout: 20) { sleeper.stdout.contains("ready") }
        kill(sleeper.process.processIdentifier, SIGTERM)
        XCTAssertEqual(mesh.wait(sleeper), 143)
        try assertNothingLeft(ns)
    }

    func testDetachRefusesANamespaceOwnedByARunningWeftRun() throws {
        let ns = mesh.name("owned")
        let job = try mesh.startWeft(["run", "--name", ns, "--service", "job", "--", "sh", "-c", "echo ready; exec sleep 60"])
        try mesh.waitUntil("job ready", timeout: 20) { job.stdout.contains("ready") }
        let refused = mesh.weft(["detach", "--netns", ns])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("belongs to a running `weft run`"), refused.stderr)
        XCTAssertNotNil(try mesh.workload(ns), "still attached")
        XCTAssertTrue(mesh.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"]).stdout.contains("WEFT_OUTPUT"),
                      "capture rules stay")
        let forced = mesh.weft(["detach", "--netns", ns, "--force"])
        XCTAssertEqual(forced.status, 0, forced.output)
        XCTAssertNil(try mesh.workload(ns))
        kill(job.process.processIdentifier, SIGTERM)
        XCTAssertNotNil(mesh.wait(job))
        try assertNothingLeft(ns)
    }

    func testChildrenLeftBehindAreStoppedWithTheWorkload() throws {
        let ns = mesh.name("orphans")
        let marker = "317.\(Int.random(in: 100...999))"
        let r = mesh.weft(["run", "--name", ns, "--service", "job", "--", "sh", "-c", "sleep \(marker) & echo started"])
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stderr.contains("stopped 1 process(es)"), r.stderr)
        XCTAssertFalse(mesh.run(["pgrep", "-f", "sleep \(marker)"]).status == 0, "a child of the workload outlived it")
        try assertNothingLeft(ns)
    }

    func testWrappedCommandHasNoPrivileges() throws {
        let r = mesh.weft(["run", "--name", mesh.name("priv"), "--service", "job", "--", "cat", "/proc/self/status"])
        XCTAssertEqual(r.status, 0, r.output)
        var fields: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            XCTAssertEqual(fields[cap], "0000000000000000", "\(cap) must be empty")
        }
        XCTAssertEqual(fields["NoNewPrivs"], "1")
        let uids = fields["Uid"]?.split(separator: "\t").map(String.init) ?? []
        XCTAssertEqual(uids.count, 4)
        XCTAssertFalse(uids.contains("0"), "wrapped command runs as root: \(uids)")
        XCTAssertEqual(uids.first, "65534", "default user outside sudo is nobody")

        // --user picks the account; root is refused.
        let asDaemon = mesh.weft(["run", "--name", mesh.name("priv"), "--service", "job", "--user", "daemon", "--", "id", "-un"])
        XCTAssertEqual(asDaemon.stdout, "daemon\n", asDaemon.output)
        let asRoot = mesh.weft(["run", "--name", mesh.name("priv"), "--service", "job", "--user", "root", "--", "id"])
        XCTAssertEqual(asRoot.status, 125)
        XCTAssertTrue(asRoot.stderr.contains("never run as root"), asRoot.stderr)
        // SUDO_UID is honoured.
        let viaSudo = mesh.weft(["run", "--name", mesh.name("priv"), "--service", "job", "--", "id", "-u"], env: ["SUDO_UID": "1"])
        XCTAssertEqual(viaSudo.stdout, "1\n", viaSudo.output)
    }

    func testBadInputFailsWithClearMessagesAndLeavesNothing() throws {
        let ns = mesh.name("bad")
        let notFound = mesh.weft(["run", "--name", ns, "--service", "job", "--", "no-such-command-xyz"])
        XCTAssertEqual(notFound.status, 127)
        XCTAssertTrue(notFound.stderr.contains("command not found: no-such-command-xyz"), notFound.stderr)
        try assertNothingLeft(ns)

        let noAgent = mesh.weft(["run", "--name", ns, "--service", "job", "--agent-socket", mesh.dir + "/nope.sock", "--", "true"])
        XCTAssertEqual(noAgent.status, 125)
        XCTAssertTrue(noAgent.stderr.contains("agent is not running"), noAgent.stderr)
        try assertNothingLeft(ns)

        let badPort = mesh.weft(["run", "--name", ns, "--service", "job", "--port", "80:abc", "--", "true"])
        XCTAssertEqual(badPort.status, 125)
        XCTAssertTrue(badPort.stderr.contains("--port 80:abc"), badPort.stderr)

        let noCmd = mesh.weft(["run", "--service", "job"])
        XCTAssertNotEqual(noCmd.status, 0)
        XCTAssertTrue(noCmd.stderr.contains("no command given"), noCmd.stderr)

        let unknownFlag = mesh.weft(["run", "--bogus", "--service", "job", "--", "true"])
        XCTAssertNotEqual(unknownFlag.status, 0)
        XCTAssertTrue(unknownFlag.stderr.contains("--bogus"), unknownFlag.stderr)

        let notRoot = mesh.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MeshHarness.weftBinary,
                                "run", "--service", "job", "--", "true"])
        XCTAssertEqual(notRoot.status, 125)
        XCTAssertTrue(notRoot.stderr.contains("needs root"), notRoot.stderr)

        let missingNetns = mesh.weft(["init", "--netns", mesh.name("missing")])
        XCTAssertEqual(missingNetns.status, 1)
        XCTAssertTrue(missingNetns.stderr.contains("network namespace '\(mesh.name("missing"))' does not exist"), missingNetns.stderr)

        // --from FILE (the weft-run@ unit): missing file, bad line, flags beside it, and a
        // good file that runs (its name from the file name).
        let missingFile = mesh.weft(["run", "--from", mesh.dir + "/none.conf"])
        XCTAssertEqual(missingFile.status, 125)
        XCTAssertTrue(missingFile.stderr.contains("none.conf: cannot read the file"), missingFile.stderr)
        let conf = mesh.dir + "/\(ns).conf"
        try "service = job\ncommand = true\nports = 80\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let badKey = mesh.weft(["run", "--from", conf])
        XCTAssertEqual(badKey.status, 125)
        XCTAssertTrue(badKey.stderr.contains("\(ns).conf:3: unknown key 'ports'"), badKey.stderr)
        try "service = job\ncommand = /bin/sh -c 'echo \"$WEFT_WORKLOAD\"; exit 3'\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let beside = mesh.weft(["run", "--from", conf, "--service", "other"])
        XCTAssertEqual(beside.status, 125)
        XCTAssertTrue(beside.stderr.contains("only --name, -v and --agent-socket"), beside.stderr)
        let fromFile = mesh.weft(["run", "--from", conf])
        XCTAssertEqual(fromFile.status, 3, fromFile.output)
        XCTAssertEqual(fromFile.stdout, "\(ns)\n", "the workload is named after the file")
        try assertNothingLeft(ns)

        // A netns name already taken by someone else is not touched.
        let taken = try mesh.makeNetns("taken")
        let clash = mesh.weft(["run", "--name", taken, "--service", "job", "--", "true"])
        XCTAssertEqual(clash.status, 125)
        XCTAssertTrue(clash.stderr.contains("already exists"), clash.stderr)
        XCTAssertTrue(mesh.netnsList().contains(taken), "weft run must not delete a netns it did not create")
    }

    func testNonRootCannotUseTheLocalAPI() throws {
        let r = mesh.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", MeshHarness.weftBinary,
                          "get", "workloads", "--agent-socket", mesh.socket])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("permission denied") || r.stderr.contains("root-only"), r.stderr)
        let mode = try FileManager.default.attributesOfItem(atPath: mesh.socket)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
    }

    func testPodCIDRExhaustionIsReportedAndCleanedUp() throws {
        mesh.shutdown()
        mesh = try MeshHarness.start(podPrefix: 30)  // room for exactly one pod
        let first = try mesh.startWeft(["run", "--name", mesh.name("one"), "--service", "job", "--", "sleep", "60"])
        try mesh.waitUntil("first pod attached", timeout: 20) { try self.mesh.workload(self.mesh.name("one")) != nil }
        let second = mesh.weft(["run", "--name", mesh.name("two"), "--service", "job", "--", "true"])
        XCTAssertEqual(second.status, 125)
        XCTAssertTrue(second.stderr.contains("is exhausted"), second.stderr)
        try assertNothingLeft(mesh.name("two"))
        _ = first
    }
}

