import CProcess
import Dispatch
import Synchronization
public import FleetCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A command that could not be started at all.
public struct CommandError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What of a command's output to keep.
public enum OutputCapture: Sendable, Hashable {
    /// The first line, at most `outputLimit` characters (checks, probes).
    case firstLine
    /// Everything up to this many bytes, then a note of how much was cut (executors).
    case head(bytes: Int)
}

/// The outcome of running a command to completion or to its timeout.
public struct CommandOutcome: Sendable, Hashable {
    /// The exit status, when the command exited by itself.
    public var exitCode: Int32?
    /// The signal that ended it, when one did (SIGKILL after a timeout).
    public var signal: Int32?
    /// The command ran past its timeout and its process group was killed.
    public var timedOut: Bool
    /// The first line of standard output and error together, at most `outputLimit` characters.
    public var firstLine: String
    /// With `.head(bytes:)`: standard output and error together, truncated.
    public var output: String = ""
    public var duration: Duration
    /// The command wrote more than `maximumOutput` bytes: it was ended (its group killed)
    /// rather than read for ever (a check printing 100 MB kept the agent at half a core).
    public var outputExceeded = false

    /// Nagios-style reading: exit 0 pass, 1 warn, 2 fail; anything else, a
    /// signal or a timeout is unknown.
    public var checkState: CheckState {
        guard !timedOut, !outputExceeded, signal == nil, let exitCode else { return .unknown }
        return CheckState(exitCode: exitCode)
    }
}

/// Serializes pipe creation (until close-on-exec is set) with spawning.
private let spawnLock = Mutex(())
/// The commands being waited for now: not orphans to reap.
private let waitedFor = Mutex(Set<Int32>())

/// Runs commands for probes, local checks and the aggregator's executors: never through
/// a shell, in a process group of their own that is killed whole at the timeout, with
/// their output read continuously (so a chatty command cannot block) and only a bounded
/// part of it kept.
public enum CommandRunner {
    /// Runs `arguments` (the first is the program, looked up on PATH when it has no `/`).
    /// Throws only when the command could not be started at all.
    /// `maximumOutput`: bytes of output read at most; past it the command is ended and its
    /// outcome says `outputExceeded`.
    public static func run(
        _ arguments: [String], timeout: Duration, outputLimit: Int = 256, capture: OutputCapture = .firstLine,
        environment: [String: String]? = nil, maximumOutput: Int = 1 << 20, started: (@Sendable (Int32) -> Void)? = nil
    ) async throws(CommandError) -> CommandOutcome {
        guard let program = arguments.first, !program.isEmpty else { throw CommandError("empty command") }
        let result: Result<CommandOutcome, CommandError> = await withCheckedContinuation { continuation in
            // Blocking waits (poll, waitpid) run on a thread of their own, not on the cooperative pool.
            DispatchQueue.global().async {
                continuation.resume(
                    returning: runBlocking(
                        arguments, timeout: timeout, outputLimit: outputLimit, capture: capture, environment: environment,
                        maximumOutput: maximumOutput, started: started))
            }
        }
        return try result.get()
    }

    static func runBlocking(
        _ arguments: [String], timeout: Duration, outputLimit: Int, capture: OutputCapture, environment: [String: String]?,
        maximumOutput: Int = 1 << 20, started: (@Sendable (Int32) -> Void)? = nil
    ) -> Result<CommandOutcome, CommandError> {
        let start = ContinuousClock.now
        var pipeFDs: [Int32] = [-1, -1]
        // Close-on-exec before any other spawn can happen: a command spawned by another thread
        // in between would inherit this pipe, hold it open and make this command look hung.
        // (pipe2 is not in Swift's Glibc module; one lock around pipe+fcntl and spawns does it.)
        let created = spawnLock.withLock { _ -> Bool in
            guard pipe(&pipeFDs) == 0 else { return false }
            _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
            return true
        }
        guard created else { return .failure(CommandError("pipe: \(String(cString: strerror(errno)))")) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        // Standard input, output and error and nothing else: close-on-exec is not enough, since
        // libraries (SwiftNIO's listening socket and epoll, libmosquitto's socket and its socket
        // pair, SQLite's files) open descriptors without it. A child that held them would keep the
        // HTTP port bound and the MQTT connection open after the aggregator died.
        edgefleet_spawn_closefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A process group of its own (so the timeout kills the command and its
        // children), an empty signal mask and default handlers (the spawning thread
        // may block signals the command needs).
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        var rc: Int32
        // A mark in the environment of the command and of everything it starts, so that what it
        // leaves behind (even a daemon in a session of its own) is found and ended afterwards.
        let marker = "EDGEFLEET_RUN=\(UInt64.random(in: 1...UInt64.max))"
        var variables = (environment ?? processEnvironment()).filter { $0.key != "EDGEFLEET_RUN" }.map { "\($0.key)=\($0.value)" }
        variables.append(marker)
        let envp = variables.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        // ETXTBSY: the executable was just written, and a process forked elsewhere in this
        // program at that moment still holds it open for writing; it closes as soon as that
        // child execs. Try again briefly rather than fail the command.
        var attempt = 0
        repeat {
            if attempt > 0 { usleep(20_000) }
            attempt += 1
            rc = spawnLock.withLock { _ in
                let rc = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, envp)
                // Recorded before any reaping can see it (reaping holds this lock too).
                if rc == 0 { waitedFor.withLock { _ = $0.insert(pid) } }
                return rc
            }
        } while rc == ETXTBSY && attempt < 50
        close(pipeFDs[1])
        // When it started (clock ticks since boot): whatever it leaves behind started no earlier.
        let startTicks = rc == 0 ? ProcessTable.entry(pid)?.startTicks ?? 0 : 0
        if rc == 0 { started?(pid) }  // the pid is also the process group id
        guard rc == 0 else {
            close(pipeFDs[0])
            return .failure(CommandError("cannot run '\(arguments[0])': \(String(cString: strerror(rc)))"))
        }

        // Read until EOF (every holder of the pipe exited) or the deadline; once the command
        // itself has exited, only a little longer (a child it left behind may hold the pipe
        // open, and must not turn a finished command into a timed-out one).
        let deadline = start + timeout
        var exitedAt: ContinuousClock.Instant?
        func leaderExited() -> Bool {
            var info = siginfo_t()
            return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_signo == SIGCHLD
        }
        var kept: [UInt8] = []
        var head: [UInt8] = []
        var dropped = 0
        var sawNewline = false
        var timedOut = false
        var total = 0
        var exceeded = false
        var buffer = [UInt8](repeating: 0, count: 4096)
        let readFD = pipeFDs[0]
        while true {
            if exitedAt == nil, leaderExited() { exitedAt = ContinuousClock.now }
            if let exitedAt, ContinuousClock.now - exitedAt > .milliseconds(200) { break }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                timedOut = exitedAt == nil
                break
            }
            let c = min(remaining, .milliseconds(50)).components
            let milliseconds = Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000 + 1)
            var descriptor = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, milliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if ready == 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            total += n
            if total > maximumOutput {
                exceeded = true
                break
            }
            if case .head(let limit) = capture {
                let room = max(0, limit - head.count)
                head += buffer[0..<min(n, room)]
                dropped += max(0, n - room)
            }
            if !sawNewline {
                for byte in buffer[0..<n] {
                    if byte == UInt8(ascii: "\n") {
                        sawNewline = true
                        break
                    }
                    if kept.count < outputLimit * 4 { kept.append(byte) }
                }
            }
        }
        close(readFD)
        if exceeded { kill(-pid, SIGKILL) }  // it would go on writing into a pipe nobody reads
        // Wait for the command itself to exit, still within the deadline, without
        // reaping it: while it is a zombie its pid (and so its group id) cannot be
        // reused, so killing the group below can only hit its own leftovers.
        while !timedOut {
            var info = siginfo_t()
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0, info.si_signo == SIGCHLD { break }
            if ContinuousClock.now >= deadline {
                timedOut = true
                break
            }
            usleep(2_000)
        }
        // At the timeout the whole group goes; after a normal exit, whatever the
        // command left running in its group goes too (no stray processes).
        kill(-pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        waitedFor.withLock { _ = $0.remove(pid) }
        // What it left outside its group (a daemon started with setsid), and, in a child
        // subreaper (the agent), orphans it was handed and that have exited since.
        // Descendants have higher ids than the command, unless the ids wrapped around while it ran
        // (pid_max is 4,194,304 on 64-bit Linux): such a leftover is missed.
        ProcessTable.killLeftovers(withEnvironment: marker, since: startTicks, after: pid)
        if ProcessTable.isSubreaper {
            spawnLock.withLock { _ in ProcessTable.reapOrphans(keeping: waitedFor.withLock { $0 }) }
        }
        let signalled = status & 0x7f
        var line = String(decoding: kept, as: UTF8.self)
        if line.count > outputLimit { line = String(line.prefix(outputLimit)) + "…" }
        return .success(
            CommandOutcome(
                exitCode: signalled == 0 ? (status >> 8) & 0xff : nil,
                signal: signalled == 0 ? nil : signalled,
                timedOut: timedOut,
                firstLine: line.trimmingTrailingWhitespace,
                output: String(decoding: head, as: UTF8.self) + (dropped > 0 ? "\n… (\(dropped) more bytes not kept)" : "")
                    + (exceeded ? "\n… (ended: it wrote more than \(maximumOutput) bytes)" : ""),
                duration: ContinuousClock.now - start, outputExceeded: exceeded))
    }
}

extension String {
    var trimmingTrailingWhitespace: String {
        var s = Substring(self)
        while let last = s.last, last.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
