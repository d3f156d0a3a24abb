import Foundation
import XCTest

/// `--max-request-body-bytes` (1,000 here): a larger declared body gets 413 at once, a
/// chunked one when it crosses the limit; neither reaches the server; a body under the
/// limit goes through.
final class BodyLimitTests: MeshTestCase {
    override var agentArgs: [String] { ["--max-request-body-bytes", "1000"] }

    func testOversizedBodiesGet413AndNeverReachTheServer() throws {
        try HTTPTests.echoApp.write(toFile: mesh.dir + "/echo.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/echo.py", 0o644)
        _ = try mesh.startWeft(["run", "--name", mesh.name("web"), "--service", "web", "--port", "80:3000/http", "--",
                                "/usr/bin/python3", mesh.dir + "/echo.py", "3000", "a"])
        try mesh.waitForListener(netns: mesh.name("web"), port: 3000)
        let script = HTTPTests.exchangePython + #"""
            def first(raw): return exchange(raw).split(b"\r\n")[0].decode()
            print("declared", first(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000))
            chunks = b"".join(b"3e8\r\n" + b"y" * 1000 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
            print("chunked", first(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks))
            print("small", first(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 500\r\nConnection: close\r\n\r\n" + b"z" * 500))
            """#
        try script.write(toFile: mesh.dir + "/bodies.py", atomically: true, encoding: .utf8)
        chmod(mesh.dir + "/bodies.py", 0o644)
        let r = mesh.weft(["run", "--name", mesh.name("cli"), "--service", "client", "--", "/usr/bin/python3", mesh.dir + "/bodies.py"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.stdout.contains("declared HTTP/1.1 413"), r.stdout)
        XCTAssertTrue(r.stdout.contains("chunked HTTP/1.1 413"), r.stdout)
        XCTAssertTrue(r.stdout.contains("small HTTP/1.1 200"), r.stdout)
        let web = try XCTUnwrap(try mesh.workload(mesh.name("web")))
        XCTAssertLessThan(web.counters.bytesInboundReceived, 5000, "the large bodies never reached the server side")
    }
}
