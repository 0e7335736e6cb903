#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs `body` on a new thread of its own, which ends with it.
///
/// For blocking work (`waitpid`, `poll` with a deadline, a SQLite transaction) that must not
/// hold one of the cooperative pool's threads (one per core). Not `DispatchQueue.global()`
/// either: its threads are as many as the cores too, and it adds one only after the others
/// have been blocked for a while, so a few executors waiting on their children held back a
/// probe's 700 ms handshake for 15 s. A thread costs tens of microseconds to start; the work
/// given here is rarer than that matters.
public func onOwnThread(_ body: @escaping @Sendable () -> Void) {
    final class Work {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let work = Unmanaged.passRetained(Work(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let rc = pthread_create(&thread, &attributes, { raw in
        Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, work)
    pthread_attr_destroy(&attributes)
    if rc != 0 {
        // No thread to be had (a thread limit): run it here rather than lose it.
        Unmanaged<Work>.fromOpaque(work).takeRetainedValue().body()
    }
}
