import CProcess
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What `/proc` says about processes: the few facts EdgeFleet needs to find what a command
/// left behind (by the marker in its environment), to tell a process from a later one with the
/// same id (its start time), and to reap orphans handed to a child subreaper. Linux only;
/// elsewhere nothing is found.
public enum ProcessTable {
    /// One process as `/proc/PID/stat` describes it.
    public struct Entry: Equatable, Sendable {
        public var pid: Int32
        public var state: Character
        public var parent: Int32
        public var processGroup: Int32
        /// Clock ticks since boot when it started.
        public var startTicks: UInt64

        /// A zombie (exited, not reaped) or dead.
        public var isGone: Bool { state == "Z" || state == "X" }
    }

    /// `/proc/PID/stat`, parsed after the command name (which may hold spaces and parentheses).
    public static func entry(_ pid: Int32) -> Entry? {
        guard let bytes = readFile("/proc/\(pid)/stat", limit: 4096), let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // After the name: field 3 (state), ppid field 4, pgrp field 5, starttime field 22; read
        // on the bytes (this runs for every process after every command: no strings made).
        var field = 2
        var at = close + 1
        var state: UInt8 = 0
        var parent: UInt64?
        var group: UInt64?
        var startTicks: UInt64?
        while at < bytes.count, field < 22 {
            while at < bytes.count, bytes[at] == UInt8(ascii: " ") { at += 1 }
            field += 1
            let start = at
            while at < bytes.count, bytes[at] != UInt8(ascii: " ") { at += 1 }
            guard at > start else { break }
            if field == 3 { state = bytes[start] }
            if field == 4 || field == 5 || field == 22 {
                var value: UInt64 = 0
                for b in bytes[start..<at] {
                    guard b >= 0x30, b <= 0x39 else { return nil }
                    value = value &* 10 &+ UInt64(b - 0x30)
                }
                switch field {
                case 4: parent = value
                case 5: group = value
                default: startTicks = value
                }
            }
        }
        guard state != 0, let parent, let group, let startTicks, let parent32 = Int32(exactly: parent), let group32 = Int32(exactly: group)
        else { return nil }
        return Entry(pid: pid, state: Character(UnicodeScalar(state)), parent: parent32, processGroup: group32, startTicks: startTicks)
    }

    /// Every process id in `/proc`.
    public static func pids() -> [Int32] {
        guard let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        var result: [Int32] = []
        while let entry = readdir(directory) {
            // Digits only (a process); no string made for each entry.
            let pid = withUnsafeBytes(of: entry.pointee.d_name) { raw -> Int32? in
                var value: Int32 = 0
                var digits = 0
                for b in raw {
                    if b == 0 { break }
                    guard b >= 0x30, b <= 0x39, digits < 9 else { return nil }
                    value = value * 10 + Int32(b - 0x30)
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            if let pid { result.append(pid) }
        }
        return result
    }

    /// Whether `pid`'s environment holds exactly `variable` (`NAME=value`).
    public static func environment(of pid: Int32, contains variable: String) -> Bool {
        guard let bytes = readFile("/proc/\(pid)/environ", limit: 1 << 20) else { return false }
        let needle = Array(variable.utf8)
        var start = 0
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0) ?? bytes.count
            if bytes[start..<end].elementsEqual(needle) { return true }
            start = end + 1
        }
        return false
    }

    /// SIGKILL to each, then a moment for each kill to land, reaping those that are this
    /// process's children (never blocking).
    static func end(_ processes: [Entry]) {
        for process in processes { kill(process.pid, SIGKILL) }
        let me = getpid()
        for process in processes {
            for _ in 0..<50 {
                var status: Int32 = 0
                let reaped = waitpid(process.pid, &status, WNOHANG)
                if reaped == process.pid || (reaped < 0 && errno == ECHILD) { break }
                if let now = entry(process.pid), now.parent != me, now.isGone { break }
                usleep(2_000)
            }
        }
    }

    /// For a child subreaper that is about to exit: ends and reaps every child it still has (the
    /// daemons checks left that a sweep did not catch, and what they started), so that nothing
    /// it was handed outlives it. Only when no command of its own is running.
    public static func endAllChildren() {
        guard isSubreaper else { return }
        let me = getpid()
        // Killing a daemon hands its own children to this process: a few rounds take them too.
        for _ in 0..<10 {
            let children = pids().compactMap { pid in entry(pid).flatMap { $0.parent == me ? $0 : nil } }
            if children.isEmpty { return }
            end(children)
        }
    }

    /// Reaps zombie children of this process other than `keep` (commands still being waited
    /// for): orphans a child subreaper inherited and that exited by themselves.
    public static func reapOrphans(keeping keep: Set<Int32>) {
        let me = getpid()
        for pid in pids() where !keep.contains(pid) {
            guard let entry = entry(pid), entry.parent == me, entry.state == "Z" else { continue }
            var status: Int32 = 0
            _ = waitpid(pid, &status, WNOHANG)
        }
    }

    /// Makes this process a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`): descendants
    /// orphaned by their parent (a daemon a check started with `setsid`) are handed to it, not
    /// to init, so that it can end and reap them. Returns false where it cannot.
    @discardableResult
    public static func becomeSubreaper() -> Bool {
        let done = edgefleet_become_subreaper() == 0
        if done { subreaper.withLock { $0 = true } }
        return done
    }

    /// Whether `becomeSubreaper()` succeeded: only then are there orphans of others to reap (a
    /// process that is not one must never reap children it did not start through the runner).
    public static var isSubreaper: Bool { subreaper.withLock { $0 } }
    private static let subreaper = Mutex(false)

    /// This boot's id: process ids and start ticks only mean something within one boot.
    public static func bootID() -> String { currentBootID }

    /// Read once: it does not change until the machine boots again (and this process with it).
    private static let currentBootID: String =
        (readFile("/proc/sys/kernel/random/boot_id", limit: 128).map { String(decoding: $0, as: UTF8.self) } ?? "").filter { !$0.isWhitespace }

    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func readFile(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: min(limit, 4096))
        while result.count < limit {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if result.isEmpty && n < buffer.count { return Array(buffer[0..<n]) }  // the usual case: one read
            result += buffer[0..<n]
        }
        return result
    }

    /// Every live process (not this one) with an id above `after`, started at or after `since`,
    /// whose environment holds one of `variables` (`NAME=value`, all with the same NAME), with
    /// the index of the variable it holds. Each environment is read once, whatever the count.
    /// Ids are handed out in increasing order until they wrap, so a command's descendants have
    /// higher ids than the command and started after it: older processes' environments are not
    /// read at all.
    static func living(withAny variables: [[UInt8]], since: UInt64, after: Int32) -> [(entry: Entry, variable: Int)] {
        guard let first = variables.first, let equals = first.firstIndex(of: UInt8(ascii: "=")) else { return [] }
        let name = first[...equals]
        var index: [ArraySlice<UInt8>: Int] = [:]
        for (i, variable) in variables.enumerated() where variable.starts(with: name) { index[variable[...]] = i }
        let me = getpid()
        var found: [(entry: Entry, variable: Int)] = []
        for pid in pids() where pid > after && pid != me {
            guard let entry = entry(pid), !entry.isGone, entry.startTicks >= since,
                var bytes = readFile("/proc/\(pid)/environ", limit: 1 << 20)
            else { continue }
            // A process in the middle of an exec shows an empty environment for a moment (the
            // new image's is not in place yet): a daemon caught there was missed, and outlived
            // its check. Look once more after the exec has had time to finish.
            if bytes.isEmpty, entry.parent != 2, entry.pid != 2 {
                usleep(2_000)
                bytes = readFile("/proc/\(pid)/environ", limit: 1 << 20) ?? []
            }
            var start = 0
            while start < bytes.count {
                let end = bytes[start...].firstIndex(of: 0) ?? bytes.count
                let item = bytes[start..<end]
                if item.starts(with: name), let i = index[item] {
                    found.append((entry, i))
                    break
                }
                start = end + 1
            }
        }
        return found
    }
}

/// What to look for after a command ended: processes holding its marker in their environment,
/// with higher ids than the command and started no earlier.
public struct LeftoverSearch: Sendable {
    var marker: [UInt8]
    var since: UInt64
    var after: Int32
}

/// Ends what finished commands left behind, on a thread of its own, several commands at a time:
/// a sweep takes every search waiting by then and reads `/proc` once for all of them, and sweeps
/// are at least `gather` apart. In a reconnect storm (hundreds of executors a second) that is one
/// look at `/proc` for dozens of commands instead of one for each, and no executor thread waits
/// for it. A lone command is swept at once. (Sweeps 20 ms apart were still 3% of the aggregator's
/// CPU in a storm of 10,000 operations; 100 ms apart, an outcome is recorded at most 0.1 s
/// later, while the executor's slot was given back at its exit.)
final class LeftoverSweeper: Sendable {
    static let shared = LeftoverSweeper(gather: .milliseconds(100))

    private struct Pending {
        var search: LeftoverSearch
        var completion: @Sendable (Int) -> Void
    }

    private struct State {
        var pending: [Pending] = []
        var started = false
    }

    private let gather: Duration
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)

    init(gather: Duration) {
        self.gather = gather
    }

    /// Queues a search; `completion` gets how many processes it ended, on the sweeper's thread.
    func submit(_ search: LeftoverSearch, completion: @escaping @Sendable (Int) -> Void) {
        let start = state.withLock { state -> Bool in
            state.pending.append(Pending(search: search, completion: completion))
            defer { state.started = true }
            return !state.started
        }
        if start { startThread() }
        wake.signal()
    }

    /// Queues a search and waits for it.
    @discardableResult
    func sweepAndWait(_ search: LeftoverSearch) -> Int {
        let done = DispatchSemaphore(value: 0)
        let killed = Mutex(0)
        submit(search) { n in
            killed.withLock { $0 = n }
            done.signal()
        }
        done.wait()
        return killed.withLock { $0 }
    }

    private func startThread() {
        var thread = pthread_t()
        let unmanaged = Unmanaged.passRetained(self)
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<LeftoverSweeper>.fromOpaque(argument).takeRetainedValue().loop()
            return nil
        }, unmanaged.toOpaque())
        if result == 0 {
            pthread_detach(thread)
        } else {
            // No thread: sweep on the caller's (never lose a completion).
            unmanaged.release()
            while case let batch = take(), !batch.isEmpty { finish(batch) }
            state.withLock { $0.started = false }
        }
    }

    private func take() -> [Pending] {
        state.withLock { state in
            defer { state.pending = [] }
            return state.pending
        }
    }

    private func finish(_ batch: [Pending]) {
        let killed = Self.sweep(batch.map(\.search))
        for (pending, n) in zip(batch, killed) { pending.completion(n) }
    }

    private func loop() {
        var lastSweep: ContinuousClock.Instant?
        while true {
            wake.wait()
            // At least `gather` since the last sweep began: searches that arrive meanwhile join this one.
            if let lastSweep, case let wait = lastSweep + gather - ContinuousClock.now, wait > .zero {
                let c = wait.components
                usleep(UInt32(clamping: c.seconds * 1_000_000 + c.attoseconds / 1_000_000_000_000))
            }
            let batch = take()
            if batch.isEmpty { continue }  // woken for searches an earlier sweep took
            lastSweep = ContinuousClock.now
            finish(batch)
        }
    }

    /// One look at `/proc` for every search of `searches`: each process is matched to the search
    /// whose marker it holds, and counted only if it is that command's descendant by its id and
    /// start time. Returns how many each search ended.
    static func sweep(_ searches: [LeftoverSearch]) -> [Int] {
        guard !searches.isEmpty else { return [] }
        let since = searches.map(\.since).min() ?? 0
        let after = searches.map(\.after).min() ?? 0
        let found = ProcessTable.living(withAny: searches.map(\.marker), since: since, after: after).filter { match in
            match.entry.pid > searches[match.variable].after && match.entry.startTicks >= searches[match.variable].since
        }
        ProcessTable.end(found.map(\.entry))
        var killed = Array(repeating: 0, count: searches.count)
        for match in found { killed[match.variable] += 1 }
        return killed
    }
}
