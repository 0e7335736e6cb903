import FleetCore
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `onOwnThread` keeps finished threads for the next work, and never makes one piece of work
/// wait for another.
/// The kernel's id of the calling thread (`/proc/thread-self` is `PID/task/TID`); unlike
/// `pthread_self()`, a new thread does not take over a finished one's.
func currentThreadID() -> Int32 {
    var buffer = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buffer, buffer.count - 1)
    guard n > 0 else { return -1 }
    return Int32(String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").last ?? "") ?? -1
}

@Suite("work on threads of its own")
struct OwnThreadTests {
    /// Runs `body` on a thread of its own and returns the kernel's id of that thread.
    static func threadID(_ body: @escaping @Sendable () -> Void = {}) async -> Int32 {
        await withCheckedContinuation { (done: CheckedContinuation<Int32, Never>) in
            onOwnThread {
                body()
                done.resume(returning: currentThreadID())
            }
        }
    }

    @Test("work given one after another runs on a kept thread, not on a new one each time")
    func reuse() async {
        var threads = Set<Int32>()
        for _ in 0..<200 {
            threads.insert(await Self.threadID())
            // The thread offers itself again just after its work (which answered already).
            // (Tests running alongside in this process may take it first.)
            let until = ContinuousClock.now + .milliseconds(100)
            while ownThreadsWaiting == 0, ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(1)) }
        }
        // One when alone; a few dozen when the whole suite runs alongside (33 seen); without keeping, 200.
        #expect(threads.count <= 100, "\(threads.count) threads for 200 pieces of work one after another")
        #expect(!threads.contains(currentThreadID()))
    }

    @Test("work given at once runs at once, each on a thread of its own, however many were kept")
    func concurrent() async {
        // Kept threads first.
        for _ in 0..<5 { _ = await Self.threadID() }
        let count = 40
        final class Seen: Sendable {
            let arrived = Mutex(0)
            let ids = Mutex(Set<Int32>())
            let sawAll = Mutex(0)
        }
        let seen = Seen()
        // Each waits until all have started (up to one shared deadline): if any waited for
        // another's thread, it would not see them all.
        let deadline = ContinuousClock.now + .seconds(10)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                group.addTask {
                    let id = await Self.threadID {
                        seen.arrived.withLock { $0 += 1 }
                        while seen.arrived.withLock({ $0 }) < count, ContinuousClock.now < deadline { usleep(1_000) }
                        if seen.arrived.withLock({ $0 }) == count { seen.sawAll.withLock { $0 += 1 } }
                    }
                    seen.ids.withLock { _ = $0.insert(id) }
                }
            }
        }
        #expect(seen.sawAll.withLock { $0 } == count, "only \(seen.sawAll.withLock { $0 }) of \(count) ran while all the others had started")
        #expect(seen.ids.withLock { $0.count } == count, "\(seen.ids.withLock { $0.count }) threads for \(count) pieces of work at once")
    }
}
