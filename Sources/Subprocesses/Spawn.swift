import CProcess

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where a spawned process's standard input, output or error goes.
public enum StandardStream: Sendable, Hashable {
    /// `/dev/null`.
    case null
    /// A descriptor of this process, duplicated into the child.
    case descriptor(Int32)
    /// A file, created if needed and appended to (mode 0644).
    case appending(String)
}

/// What every process EdgeFleet starts (executors, checks, probes, broker tools, the tests'
/// children) gets: standard input, output and error and nothing else, an empty signal mask
/// and default handlers, optionally a process group of its own.
public struct SpawnError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Int32
    public var program: String
    public var description: String { "cannot run '\(program)': \(String(cString: strerror(code)))" }
}

/// Starts `arguments` (the first is the program, looked up on PATH when it has no `/`) with
/// `posix_spawnp`. The only place the project spawns a process.
///
/// - Descriptors: only 0, 1 and 2 reach the child. Close-on-exec is not enough, since libraries
///   (SwiftNIO's listening socket and epoll, libmosquitto's socket and its socket pair, SQLite's
///   files) open descriptors without it; a child that held them kept the HTTP port bound and the
///   MQTT connection open after the aggregator died.
/// - Signals: the spawning thread may be a dispatch worker, which blocks most signals; the child
///   gets an empty mask and default handlers, or it would never see SIGTERM.
/// - `ownGroup`: a process group of its own, so that a timeout kills the command and its children.
/// - `ETXTBSY` (an executable just written, still open for writing in a child forked elsewhere at
///   that moment, until that child execs) is retried briefly rather than failed.
/// - `beforeReturn` runs under the spawn lock with the new pid (the runner records the pids it
///   waits for there, before any reaping can see them).
public func spawnProcess(
    _ arguments: [String], environment: [String: String], stdin: StandardStream = .null, stdout: StandardStream = .null,
    stderr: StandardStream = .null, ownGroup: Bool = false, beforeReturn: ((Int32) -> Void)? = nil
) throws(SpawnError) -> Int32 {
    guard let program = arguments.first, !program.isEmpty else { throw SpawnError(code: ENOENT, program: "") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (stream, target, flags) in [(stdin, Int32(0), O_RDONLY), (stdout, 1, O_WRONLY | O_CREAT | O_APPEND), (stderr, 2, O_WRONLY | O_CREAT | O_APPEND)] {
        switch stream {
        case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
        case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
        case .appending(let path): posix_spawn_file_actions_addopen(&actions, target, path, flags, 0o644)
        }
    }
    edgefleet_spawn_closefrom(&actions, 3)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
    if ownGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(flags))

    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    var rc: Int32
    var attempt = 0
    repeat {
        if attempt > 0 { usleep(20_000) }
        attempt += 1
        rc = spawnLock.withLock { _ in
            let rc = posix_spawnp(&pid, program, &actions, &attributes, argv, envp)
            if rc == 0 { beforeReturn?(pid) }
            return rc
        }
    } while rc == ETXTBSY && attempt < 50
    guard rc == 0 else { throw SpawnError(code: rc, program: program) }
    return pid
}

/// Creates a pipe whose both ends are close-on-exec from the start (`pipe2`, atomic): a command
/// spawned by another thread meanwhile cannot inherit it (it would hold it open and make the
/// command reading it look hung). It was `pipe` and two `fcntl` under the spawn lock, so that
/// each executor's start waited for whatever spawn another thread was doing: with four
/// executors ending and starting about 600 times a second, that wait was 1.3% of the
/// aggregator's CPU in a reconnect storm.
public func closeOnExecPipe() -> (read: Int32, write: Int32)? {
    var fds: [Int32] = [-1, -1]
    guard edgefleet_pipe_cloexec(&fds) == 0 else { return nil }
    return (fds[0], fds[1])
}

/// A wait status as a shell shows it: the exit code, or 128 + the signal that ended it.
public func shellStatus(_ status: Int32) -> Int32 {
    let signalled = status & 0x7f
    return signalled == 0 ? (status >> 8) & 0xff : 128 + signalled
}
