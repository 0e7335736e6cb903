public import Foundation
public import Testing

/// Runs a test on a thread of its own instead of the cooperative pool.
///
/// Swift Testing runs every test of the process side by side on the cooperative pool, which has
/// one thread per core (two on the CI machine). A synchronous test that blocks (a PostgreSQL call
/// waiting out a timeout, `waitpid`, a process start) holds one of them for as long as it
/// blocks; two such tests stall every in-process service of the other tests, whose timed waits
/// then fail for a reason of no concern to them. Synchronous tests that block go on their own
/// thread with `.ownThread` (on the suite or the test).
public struct OwnThreadTrait: TestTrait, SuiteTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        // The suite's own scope runs its tests: only each test case gets a thread.
        guard testCase != nil else { return try await function() }
        let executor = ThreadExecutor()
        defer { executor.shutdown() }
        try await withTaskExecutorPreference(executor) { try await function() }
    }
}

extension Trait where Self == OwnThreadTrait {
    /// The test (or each test of the suite) runs on a thread of its own: see `OwnThreadTrait`.
    public static var ownThread: Self { OwnThreadTrait() }
}

/// A task executor with one thread: the jobs it is given run there, in order. The thread ends
/// a while after `shutdown` once nothing is left to run; a job that comes later (a stray task
/// that kept the preference) starts it again.
final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var ended = false
    private var running = false

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let start = condition.withLock {
            jobs.append(job)
            condition.signal()
            defer { running = true }
            return !running
        }
        if start {
            let thread = Thread { [self] in run() }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    func shutdown() {
        condition.withLock {
            ended = true
            condition.signal()
        }
    }

    private func run() {
        condition.lock()
        while true {
            while jobs.isEmpty {
                let timedOut = !condition.wait(until: Date().addingTimeInterval(ended ? 5 : 3_600))
                if timedOut && jobs.isEmpty && ended {
                    running = false
                    condition.unlock()
                    return
                }
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
            condition.lock()
        }
    }
}
