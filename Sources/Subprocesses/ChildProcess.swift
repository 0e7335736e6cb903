import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A long-running child (a broker, an agent, an aggregator under test) started through
/// `spawnProcess` and reaped with `waitpid`: unlike `CommandRunner`, nothing reads its output
/// (it goes to a file) and nothing ends it but its owner.
public final class ChildProcess: Sendable {
    public let pid: Int32
    private let exitStatus = Mutex<Int32?>(nil)

    /// Starts `executable` with `arguments`. Standard output and error go to `outputPath`
    /// (appended) or /dev/null; standard input comes from `stdinFD` or /dev/null.
    public init(
        _ executable: String, _ arguments: [String], outputPath: String? = nil, errorPath: String? = nil, stdinFD: Int32? = nil,
        environment: [String: String]? = nil
    ) throws(SpawnError) {
        pid = try spawnProcess(
            [executable] + arguments, environment: environment ?? processEnvironment(), stdin: stdinFD.map { .descriptor($0) } ?? .null,
            stdout: outputPath.map { .appending($0) } ?? .null, stderr: (errorPath ?? outputPath).map { .appending($0) } ?? .null)
    }

    /// Whether the process is still running (reaps it if it has exited).
    public var isRunning: Bool {
        exitStatus.withLock { exitStatus in
            if exitStatus != nil { return false }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                exitStatus = status
                return false
            }
            return r == 0
        }
    }

    /// Sends a signal.
    public func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Waits for the process to exit; returns its exit code (128 + signal when killed).
    @discardableResult
    public func wait() -> Int32 {
        exitStatus.withLock { exitStatus in
            if exitStatus == nil {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                exitStatus = status
            }
            return shellStatus(exitStatus!)
        }
    }

    /// Waits up to `timeout`; returns the exit code or nil if it is still running.
    public func wait(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !isRunning { return wait() }
            usleep(5_000)
        }
        return nil
    }
}
