/// Config durations (Swift `Duration`) on the loop's nanosecond clock (NIO's own
/// `TimeAmount(_: Duration)` serves timers). Negative durations count as zero.
extension Duration {
    var nanosecondsClamped: UInt64 {
        UInt64(max(0, components.seconds)) * 1_000_000_000 + UInt64(max(0, components.attoseconds / 1_000_000_000))
    }
}
