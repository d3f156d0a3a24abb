import WeftConfig

/// What a route's `fault` does to one request, from two uniform draws in [0, 1). Pure.
/// Istio's semantics: delay and abort are decided independently, each for its percentage
/// of requests; a delayed request may then also be aborted (the abort is answered at once,
/// without waiting out the delay).
public struct FaultPlan: Equatable, Sendable {
    public var delay: Duration?
    public var abortStatus: Int?

    public static let none = FaultPlan()

    public static func decide(_ fault: HTTPFaultInjection?, delayDraw: Double, abortDraw: Double) -> FaultPlan {
        guard let fault else { return .none }
        var plan = FaultPlan()
        if let abort = fault.abort, abortDraw * 100 < abort.percentage { plan.abortStatus = abort.httpStatus }
        if plan.abortStatus == nil, let delay = fault.delay, delayDraw * 100 < delay.percentage { plan.delay = delay.fixedDelay }
        return plan
    }
}
