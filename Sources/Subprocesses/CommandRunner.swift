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

/// Serializes spawning with the reaping of orphans: a spawned command's pid is recorded as waited
/// for (`beforeReturn`) before a reaper can see it. A `PlainLock`: a spawn holds it for the
/// `posix_spawn` (the child's exec included), and a contended `Mutex` spins meanwhile (0.5% of
/// the aggregator's CPU in a reconnect storm, four executors starting at once).
let spawnLock = PlainLock(())
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
    /// outcome says `outputExceeded`. `exited`: called once the command (and its group) is gone,
    /// before what it left elsewhere is looked for (a caller counting running commands frees a slot).
    public static func run(
        _ arguments: [String], timeout: Duration, outputLimit: Int = 256, capture: OutputCapture = .firstLine,
        environment: [String: String]? = nil, maximumOutput: Int = 1 << 20, exited: (@Sendable () -> Void)? = nil,
        started: (@Sendable (Int32) -> Void)? = nil
    ) async throws(CommandError) -> CommandOutcome {
        guard let program = arguments.first, !program.isEmpty else { throw CommandError("empty command") }
        let result: Result<CommandOutcome, CommandError> = await withCheckedContinuation { continuation in
            // Blocking waits (poll, waitpid) run on a thread of their own, not on the cooperative
            // pool; that thread is free again once the command exited (the search for what it left
            // behind happens on the sweeper's thread).
            onOwnThread {
                runThenTidy(
                    arguments, timeout: timeout, outputLimit: outputLimit, capture: capture, environment: environment,
                    maximumOutput: maximumOutput, exited: exited, started: started
                ) { continuation.resume(returning: $0) }
            }
        }
        return try result.get()
    }

    /// `run` on the calling thread (for a command-line program that has nothing else to do).
    public static func runBlocking(
        _ arguments: [String], timeout: Duration, outputLimit: Int = 256, capture: OutputCapture = .firstLine, environment: [String: String]? = nil,
        maximumOutput: Int = 1 << 20, exited: (@Sendable () -> Void)? = nil, started: (@Sendable (Int32) -> Void)? = nil
    ) -> Result<CommandOutcome, CommandError> {
        let (result, search) = execute(
            arguments, timeout: timeout, outputLimit: outputLimit, capture: capture, environment: environment, maximumOutput: maximumOutput,
            exited: exited, started: started)
        if let search {
            LeftoverSweeper.shared.sweepAndWait(search)
            reapHandedOrphans()
        }
        return result
    }

    /// Runs the command on the calling thread until it has exited, then returns; `completion`
    /// gets the outcome from the sweeper's thread once whatever the command left outside its
    /// group (a daemon in a session of its own) is ended too. In a burst of short commands (a
    /// reconnect storm) the calling thread is free for the next one at once, and `/proc` is read
    /// once for several of them (`LeftoverSweeper`).
    public static func runThenTidy(
        _ arguments: [String], timeout: Duration, outputLimit: Int = 256, capture: OutputCapture = .firstLine, environment: [String: String]? = nil,
        maximumOutput: Int = 1 << 20, exited: (@Sendable () -> Void)? = nil, started: (@Sendable (Int32) -> Void)? = nil,
        completion: @escaping @Sendable (Result<CommandOutcome, CommandError>) -> Void
    ) {
        let (result, search) = execute(
            arguments, timeout: timeout, outputLimit: outputLimit, capture: capture, environment: environment, maximumOutput: maximumOutput,
            exited: exited, started: started)
        guard let search else { return completion(result) }
        LeftoverSweeper.shared.submit(search) { _ in
            reapHandedOrphans()
            completion(result)
        }
    }

    /// In a child subreaper (the agent): orphans it was handed and that have exited since.
    private static func reapHandedOrphans() {
        if ProcessTable.isSubreaper {
            spawnLock.withLock { _ in ProcessTable.reapOrphans(keeping: waitedFor.withLock { $0 }) }
        }
    }

    /// The command, to its exit or its timeout, and its process group; what it may have left
    /// outside its group is for the caller to search (nil when it never started).
    private static func execute(
        _ arguments: [String], timeout: Duration, outputLimit: Int, capture: OutputCapture, environment: [String: String]?,
        maximumOutput: Int, exited: (@Sendable () -> Void)?, started: (@Sendable (Int32) -> Void)?
    ) -> (Result<CommandOutcome, CommandError>, LeftoverSearch?) {
        let start = ContinuousClock.now
        guard let (readFD, writeFD) = closeOnExecPipe() else { return (.failure(CommandError("pipe: \(String(cString: strerror(errno)))")), nil) }
        // A mark in the environment of the command and of everything it starts, so that what it
        // leaves behind (even a daemon in a session of its own) is found and ended afterwards.
        let marker = "EDGEFLEET_RUN=\(UInt64.random(in: 1...UInt64.max))"
        var variables = (environment ?? processEnvironment()).filter { $0.key != "EDGEFLEET_RUN" }
        variables["EDGEFLEET_RUN"] = String(marker.dropFirst("EDGEFLEET_RUN=".count))
        let spawned: Int32
        do {
            spawned = try spawnProcess(
                arguments, environment: variables, stdout: .descriptor(writeFD), stderr: .descriptor(writeFD), ownGroup: true,
                // Recorded before any reaping can see it (reaping holds the spawn lock too).
                beforeReturn: { pid in waitedFor.withLock { _ = $0.insert(pid) } })
        } catch {
            close(writeFD)
            close(readFD)
            return (.failure(CommandError(error.description)), nil)
        }
        close(writeFD)
        let pid = spawned
        // When it started (clock ticks since boot): whatever it leaves behind started no earlier.
        let startTicks = ProcessTable.entry(pid)?.startTicks ?? 0
        started?(pid)  // the pid is also the process group id

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
        // Its exit wakes the wait at once (a pidfd), instead of being noticed by polling.
        let exitFD = edgefleet_pidfd_open(pid)
        defer { if exitFD >= 0 { close(exitFD) } }
        var pipeOpen = true
        while true {
            if exitedAt == nil, leaderExited() { exitedAt = ContinuousClock.now }
            if let exitedAt, !pipeOpen || ContinuousClock.now - exitedAt > .milliseconds(200) { break }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                timedOut = exitedAt == nil
                break
            }
            let c = min(remaining, .milliseconds(50)).components
            let milliseconds = Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000 + 1)
            var descriptors = [
                pollfd(fd: pipeOpen ? readFD : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: exitedAt == nil ? exitFD : -1, events: Int16(POLLIN), revents: 0),
            ]
            let ready = poll(&descriptors, 2, milliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if ready == 0 || descriptors[0].revents == 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                // End of output. Without a pidfd, as before: the command is about to exit.
                if exitFD < 0 { break }
                pipeOpen = false
                continue
            }
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
        exited?()  // the command and its group are gone; what follows is tidying up
        // What it left outside its group (a daemon started with setsid) is the caller's to search:
        // descendants have higher ids than the command, unless the ids wrapped around while it ran
        // (pid_max is 4,194,304 on 64-bit Linux): such a leftover is missed.
        let search = LeftoverSearch(marker: Array(marker.utf8), since: startTicks, after: pid)
        let signalled = status & 0x7f
        var line = String(decoding: kept, as: UTF8.self)
        if line.count > outputLimit { line = String(line.prefix(outputLimit)) + "…" }
        let outcome = CommandOutcome(
                exitCode: signalled == 0 ? (status >> 8) & 0xff : nil,
                signal: signalled == 0 ? nil : signalled,
                timedOut: timedOut,
                firstLine: line.trimmingTrailingWhitespace,
                output: String(decoding: head, as: UTF8.self) + (dropped > 0 ? "\n… (\(dropped) more bytes not kept)" : "")
                    + (exceeded ? "\n… (ended: it wrote more than \(maximumOutput) bytes)" : ""),
                duration: ContinuousClock.now - start, outputExceeded: exceeded)
        return (.success(outcome), search)
    }
}

extension String {
    var trimmingTrailingWhitespace: String {
        var s = Substring(self)
        while let last = s.last, last.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
