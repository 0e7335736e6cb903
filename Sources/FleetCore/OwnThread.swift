#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// Runs `body` on a thread of its own: a new one, or one that finished such work within the
/// last 10 seconds and waits for more (at most 16 wait).
///
/// For blocking work (`waitpid`, `poll` with a deadline, a SQLite transaction) that must not
/// hold one of the cooperative pool's threads (one per core). Not `DispatchQueue.global()`
/// either: its threads are as many as the cores too, and it adds one only after the others
/// have been blocked for a while, so a few executors waiting on their children held back a
/// probe's 700 ms handshake for 15 s. Threads are kept for a while because a reconnect storm
/// runs an executor on one about 500 times a second: starting and ending a thread each time
/// (its stack mapped and unmapped, the runtime's per-thread state set up) was a few percent
/// of the aggregator's CPU.
public func onOwnThread(_ body: @escaping @Sendable () -> Void) {
    if let waiting = OwnThreads.idle.withLock({ $0.popLast() }) {
        waiting.hand(body)
        return
    }
    OwnThreads.start(body)
}

/// How many kept threads wait for work now.
public var ownThreadsWaiting: Int { OwnThreads.idle.withLock { $0.count } }

/// A kept thread: parked on its condition until it is handed work or its wait runs out.
private final class OwnThread: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    /// Guarded by `mutex`.
    private var work: (@Sendable () -> Void)?

    init(_ first: @escaping @Sendable () -> Void) {
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
        work = first
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    func hand(_ body: @escaping @Sendable () -> Void) {
        pthread_mutex_lock(&mutex)
        work = body
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// The next work, waiting up to `seconds` for it; nil when none came (the thread ends).
    /// Once it has offered itself as idle, a thread that times out must still take work handed
    /// to it by whoever took it from the idle list meanwhile.
    func next(waitingUpTo seconds: Int) -> (@Sendable () -> Void)? {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        deadline.tv_sec += seconds
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while work == nil {
            if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT, work == nil {
                // Still on the idle list: off it, and end. Taken off by a caller: its work is coming.
                let removed = OwnThreads.idle.withLock { idle -> Bool in
                    guard let index = idle.firstIndex(where: { $0 === self }) else { return false }
                    idle.remove(at: index)
                    return true
                }
                if removed { return nil }
                while work == nil { pthread_cond_wait(&condition, &mutex) }
            }
        }
        defer { work = nil }
        return work
    }

    func run() {
        var body = next(waitingUpTo: 0)
        while let current = body {
            current()
            guard OwnThreads.offer(self) else { return }
            body = next(waitingUpTo: OwnThreads.keepSeconds)
        }
    }
}

private enum OwnThreads {
    static let idle = Mutex<[OwnThread]>([])
    static let keepSeconds = 10
    static let maximumIdle = 16

    /// Puts a thread that finished its work on the idle list (false: enough wait already).
    static func offer(_ thread: OwnThread) -> Bool {
        idle.withLock { idle in
            guard idle.count < maximumIdle else { return false }
            idle.append(thread)
            return true
        }
    }

    static func start(_ body: @escaping @Sendable () -> Void) {
        let thread = OwnThread(body)
        let raw = Unmanaged.passRetained(thread).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        var handle = pthread_t()
        let rc = pthread_create(&handle, &attributes, { raw in
            Unmanaged<OwnThread>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, raw)
        pthread_attr_destroy(&attributes)
        if rc != 0 {
            // No thread to be had (a thread limit): run it here rather than lose it.
            Unmanaged<OwnThread>.fromOpaque(raw).release()
            body()
        }
    }
}
