public import Foundation
import CProcess

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawn` and reaped with `waitpid`.
///
/// Foundation's `Process.waitUntilExit` spins a run loop that can hang inside
/// async tests on Linux; the test helpers use this instead.
public final class ChildProcess: @unchecked Sendable {
    public let pid: Int32
    private var exitStatus: Int32?
    private let lock = NSLock()

    /// Starts `executable` with `arguments`. Standard output and error go to
    /// `outputPath` (appended) or /dev/null; standard input comes from `stdinFD` or /dev/null.
    public init(_ executable: String, _ arguments: [String], outputPath: String? = nil, errorPath: String? = nil, stdinFD: Int32? = nil, environment: [String: String]? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdinFD {
            posix_spawn_file_actions_adddup2(&actions, stdinFD, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, outputPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath ?? outputPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        // Only 0-2: the test process's brokers, listeners and pipes stay its own.
        edgefleet_spawn_closefrom(&actions, 3)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { env.forEach { free($0) } }
        // The spawning thread may be a dispatch worker, which blocks most signals:
        // give the child an empty signal mask and default handlers, or it would
        // never see SIGTERM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, env)
        guard rc == 0 else { throw TestSupportError("could not start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Whether the process is still running (reaps it if it has exited).
    public var isRunning: Bool {
        lock.withLock {
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
        if isRunning { Glibc.kill(pid, signal) }
    }

    /// Waits for the process to exit; returns its exit code (128 + signal when killed).
    @discardableResult
    public func wait() -> Int32 {
        lock.withLock {
            if exitStatus == nil {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                exitStatus = status
            }
            let status = exitStatus!
            let signalled = status & 0x7f
            return signalled == 0 ? (status >> 8) & 0xff : 128 + signalled
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

/// Runs a command to completion and returns its exit status and output.
@discardableResult
public func run(_ executablePath: URL, _ arguments: [String], environment: [String: String]? = nil) throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let directory = FileManager.default.temporaryDirectory
    let out = directory.appendingPathComponent("edgefleet-run-\(UUID().uuidString).out").path
    let err = directory.appendingPathComponent("edgefleet-run-\(UUID().uuidString).err").path
    defer {
        unlink(out)
        unlink(err)
    }
    let child = try ChildProcess(executablePath.path, arguments, outputPath: out, errorPath: err, environment: environment)
    let status = child.wait()
    let stdout = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    let stderr = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
    return (status, stdout, stderr)
}

/// An executable this package builds (`edgefleet`, `edgefleet-agent`, ...), from
/// the build directory the running test binary lives in.
public func builtProduct(_ name: String) throws -> URL {
    let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var directory = testBinary.deletingLastPathComponent()
    // On Linux the test binary is build/debug/X.xctest; elsewhere it may sit inside a bundle.
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    throw TestSupportError("\(name) is not built next to \(testBinary.path); run `swift build` first")
}

/// A new empty directory under the system's temporary directory.
public func temporaryDirectory(_ prefix: String = "edgefleet-test") throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent).
public func isZombie(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return true }
    return stat[stat.index(close, offsetBy: 2)] == "Z"
}
