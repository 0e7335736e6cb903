#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A value behind glibc's default mutex: taken with one compare-and-swap when free, and when
/// not, the caller sleeps in the kernel at once (`futex`) until it is released.
///
/// Why not the standard library's `Mutex` for the few locks every operation and message goes
/// through (the fleet's state, the dispatcher's): on Linux a contended `Mutex` first spins up
/// to a thousand times, then blocks on a priority-inheritance futex. On a 2-core machine whose
/// threads outnumber its cores, the holder is often not running, and the spinning only burns
/// the CPU it needs: in a reconnect storm, `_MutexHandle._lockSlow` was 5% of the aggregator's
/// CPU, its largest function of its own. Locks held briefly and rarely contended keep `Mutex`.
public final class PlainLock<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held. Not reentrant: taking it again inside
    /// `body` deadlocks.
    @inline(__always)
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
