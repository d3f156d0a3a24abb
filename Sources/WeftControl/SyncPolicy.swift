import Foundation

/// What an agent does with a snapshot from the control plane (pure; the agent's
/// ControlLink acts on it).
public enum SnapshotPolicy {
    public enum Decision: Equatable, Sendable {
        case apply
        case refuse(String)
    }

    /// `followedStore`: the store of the last snapshot this agent applied (nil: none yet).
    /// A snapshot from a *different* store that is empty, while the agent serves config, is
    /// refused: that is a control plane restarted with an empty store (a lost state
    /// directory), and applying it would wipe every route in the mesh. Anything else is
    /// applied (the control plane is the source of truth).
    public static func decide(followedStore: String?, currentResources: Int, snapshot: ConfigSnapshot) -> Decision {
        if let followedStore, followedStore != snapshot.store, snapshot.documents.isEmpty, currentResources > 0 {
            return .refuse("the control plane's store \(snapshot.store) is empty and is not the store this agent followed (\(followedStore)); "
                + "keeping the last good config (\(currentResources) resource(s)) — apply the config to the control plane again")
        }
        return .apply
    }
}

/// Reconnection delays: exponential from `base`, capped at `cap`, with full jitter (a
/// uniformly random delay up to the exponential one), so agents that lost the control plane
/// together do not come back in lockstep.
public struct Backoff: Sendable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .milliseconds(500), cap: Duration = .seconds(30)) {
        self.base = base
        self.cap = cap
    }

    /// The ceiling for attempt `attempt` (0-based): base × 2^attempt, at most `cap`.
    public func ceiling(attempt: Int) -> Duration {
        let factor = Double(1 << min(max(attempt, 0), 20))
        let seconds = min(base.seconds * factor, cap.seconds)
        return .milliseconds(Int64(seconds * 1000))
    }

    /// A delay for `attempt`: `random` in [0, 1) picks where under the ceiling (at least 50 ms).
    public func delay(attempt: Int, random: Double = Double.random(in: 0..<1)) -> Duration {
        let ceiling = self.ceiling(attempt: attempt).seconds
        return .milliseconds(Int64(max(0.05, ceiling * random) * 1000))
    }
}

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
