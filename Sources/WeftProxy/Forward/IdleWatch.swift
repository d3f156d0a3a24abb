import NIOCore

/// The idle timeout of one proxied connection (`--idle-timeout`): every period it looks
/// whether anything was read on either side since it last looked, and closes the
/// connection when nothing was. So a connection is closed after between one and two periods
/// of silence — a slow-read client (it reads nothing, backpressure stops the upstream, no
/// byte moves) included — and the hot path pays one integer increment per read, no clock.
/// Loop-confined.
final class IdleWatch {
    /// Reads on either side; bumped by the handlers on the connection's loop.
    var activity = 0
    private var seen = -1

    /// Starts watching `channel` (closing it ends the watch). `onIdle` closes what must be
    /// closed; it runs at most once.
    static func start(on channel: Channel, every period: TimeAmount, onIdle: @escaping () -> Void) -> IdleWatch {
        let watch = IdleWatch()
        let bound = NIOLoopBound(watch, eventLoop: channel.eventLoop)
        let fire = NIOLoopBound(onIdle, eventLoop: channel.eventLoop)
        func arm() {
            channel.eventLoop.scheduleTask(in: period) {
                let w = bound.value
                guard channel.isActive else { return }
                if w.activity == w.seen {
                    fire.value()
                } else {
                    w.seen = w.activity
                    arm()
                }
            }
        }
        arm()
        return watch
    }
}
