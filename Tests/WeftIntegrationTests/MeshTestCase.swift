import XCTest

/// A test class with its own mesh (MeshHarness) per test: started with `agentArgs`, shut
/// down after, and checked to have left no network namespace behind.
class MeshTestCase: XCTestCase {
    var mesh: MeshHarness!
    /// Extra `weft agent` flags for this class's mesh.
    var agentArgs: [String] { [] }

    override func setUpWithError() throws { mesh = try MeshHarness.start(agentArgs: agentArgs) }

    override func tearDown() {
        mesh?.shutdown()
        if let mesh { XCTAssertEqual(mesh.ourNetns(), [], "teardown must leave no netns") }
    }
}
