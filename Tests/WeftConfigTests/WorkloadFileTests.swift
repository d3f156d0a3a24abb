import WeftCore
import XCTest

/// /etc/weft/workloads/NAME.conf → `weft run` arguments (the weft-run@NAME unit).
final class WorkloadFileTests: XCTestCase {
    func testAFileBecomesWeftRunArguments() throws {
        let text = """
        # the payments service, v2
        command = /usr/bin/python3 -m http.server 3000 --bind "0.0.0.0"
        service = payments
        namespace = shop
        port = 80:3000/http
        port = 9090/tcp
        label = version=v2
        label = team=pay
        service-account = payments
        user = weft-payments
        """
        XCTAssertEqual(try WorkloadFile.arguments(text, path: "payments.conf"), [
            "--service", "payments", "--namespace", "shop", "--port", "80:3000/http", "--port", "9090/tcp",
            "--label", "version=v2", "--label", "team=pay", "--service-account", "payments", "--user", "weft-payments",
            "--", "/usr/bin/python3", "-m", "http.server", "3000", "--bind", "0.0.0.0",
        ])
    }

    func testCommandsSplitLikeAShellWithoutExpanding() throws {
        XCTAssertEqual(try WorkloadFile.words(#"node 'my app.js' "a \"b\"" c\ d $HOME *"#), ["node", "my app.js", #"a "b""#, "c d", "$HOME", "*"])
        XCTAssertEqual(try WorkloadFile.words("  a\t b  "), ["a", "b"])
        XCTAssertEqual(try WorkloadFile.words("x '' y"), ["x", "", "y"])
        XCTAssertThrowsError(try WorkloadFile.words("a 'b")) { XCTAssertTrue("\($0)".contains("unterminated")) }
        XCTAssertThrowsError(try WorkloadFile.words("a \\")) { XCTAssertTrue("\($0)".contains("backslash")) }
    }

    func testBadFilesAreRefusedWithFileAndLine() {
        func error(_ text: String) -> String {
            do { _ = try WorkloadFile.arguments(text, path: "/etc/weft/workloads/web.conf"); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(error("service = web\ncommand = true\nports = 80").contains("web.conf:3: unknown key 'ports'"))
        XCTAssertTrue(error("service = web\njust words").contains("web.conf:2: expected KEY = VALUE"))
        XCTAssertTrue(error("service = web\nservice = api\ncommand = x").contains("web.conf:2: 'service' given twice"))
        XCTAssertTrue(error("command = sleep 1").contains("no 'service = NAME' line"))
        XCTAssertTrue(error("service = web").contains("no 'command = ...' line"))
        XCTAssertTrue(error("service = web\ncommand = 'oops").contains("web.conf:2: command: unterminated"))
        XCTAssertTrue(error("service =\ncommand = x").contains("web.conf:1: 'service' has no value"))
    }
}
