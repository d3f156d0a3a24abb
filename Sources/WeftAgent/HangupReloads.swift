import Dispatch
import Glibc
import Logging
import NIOConcurrencyHelpers

/// SIGHUP (`systemctl reload weft-agent`): runs `reload` once per signal, one at a time.
/// The signal's default action (exit) is replaced for as long as this lives.
final class HangupReloads: @unchecked Sendable {  // the source is only resumed and cancelled
    private let source: any DispatchSourceSignal
    private let pending = NIOLockedValueBox<Task<Void, Never>?>(nil)

    init(logger: Logger, reload: @escaping @Sendable () async -> Void) {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "weft-sighup"))
        self.source = source
        let pending = self.pending
        source.setEventHandler {
            logger.info("SIGHUP: reloading")
            pending.withLockedValue { current in
                let previous = current
                current = Task {
                    await previous?.value
                    await reload()
                }
            }
        }
        source.resume()
    }

    func cancel() {
        source.cancel()
        pending.withLockedValue { $0?.cancel() }
    }
}
