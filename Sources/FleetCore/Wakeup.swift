import Synchronization

/// A wake-up call for one waiting loop: producers `signal()`, the loop `wait(until:)`s for a
/// signal or its own next instant, whichever comes first. A signal raised while nobody waits
/// is kept (as one), so none is lost; several coalesce. The aggregator's loops wait on these
/// instead of polling, so an idle aggregator does nothing at all.
public final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    public init() {}

    public func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let waiter = s.waiter {
                s.waiter = nil
                return waiter
            }
            s.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when signalled (or already signalled since the last wait), when `deadline`
    /// passes (nil: no deadline), or when the task is cancelled.
    public func wait(until deadline: ContinuousClock.Instant?) async {
        // Already signalled or due: still a suspension point, so that a loop that always has
        // work never holds a thread of the cooperative pool for ever.
        if state.withLock({ s in
            defer { s.pending = false }
            return s.pending
        }) {
            await Task.yield()
            return
        }
        if let deadline, deadline <= .now {
            await Task.yield()
            return
        }
        let timer = deadline.map { deadline in
            Task { [weak self] in
                try? await Task.sleep(until: deadline)
                if !Task.isCancelled { self?.signal() }
            }
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.pending {
                        s.pending = false
                        return true
                    }
                    s.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            self.signal()
        }
        timer?.cancel()
    }
}
