/// One endpoint's active health, from probe results. Pure: starts healthy (new endpoints
/// take traffic at once), turns unhealthy after `unhealthyThreshold` failed probes in a row
/// and healthy again after `healthyThreshold` passing ones.
public struct HealthState: Equatable, Sendable {
    public private(set) var healthy = true
    private var streak = 0

    public init() {}

    /// Returns true when this result changed the verdict.
    public mutating func record(passed: Bool, healthyThreshold: Int, unhealthyThreshold: Int) -> Bool {
        if passed == healthy {
            streak = 0
            return false
        }
        streak += 1
        if streak >= (passed ? healthyThreshold : unhealthyThreshold) {
            healthy = passed
            streak = 0
            return true
        }
        return false
    }
}
