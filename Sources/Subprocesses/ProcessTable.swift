import CProcess
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

    /// Live processes (not this one) whose environment holds `variable`; with `since`, only
    /// those started at or after that many clock ticks since boot (a command's descendants
    /// start after it: the environment of older processes is not read at all).
    /// `after`: only process ids above it are looked at (ids are handed out in increasing order
    /// until they wrap, so a command's descendants have higher ids than the command: a run
    /// reads a handful of files, not every process's).
    public static func living(withEnvironment variable: String, since: UInt64 = 0, after: Int32 = 0) -> [Entry] {
        let me = getpid()
        return pids().compactMap { pid in
            guard pid > after, pid != me, let entry = entry(pid), !entry.isGone, entry.startTicks >= since, environment(of: pid, contains: variable)
            else { return nil }
            return entry
        }
    }

    /// Kills (SIGKILL) every live process whose environment holds `variable` (what a finished
    /// command left behind, even in a session of its own) and reaps those that are this
    /// process's children (a child subreaper inherits them). Returns how many it killed.
    @discardableResult
    public static func killLeftovers(withEnvironment variable: String, since: UInt64 = 0, after: Int32 = 0) -> Int {
        let leftovers = living(withEnvironment: variable, since: since, after: after)
        for process in leftovers { kill(process.pid, SIGKILL) }
        let me = getpid()
        for process in leftovers {
            // A moment for the kill to land, then reap it if it is ours (never block).
            for _ in 0..<50 {
                var status: Int32 = 0
                let reaped = waitpid(process.pid, &status, WNOHANG)
                if reaped == process.pid || (reaped < 0 && errno == ECHILD) { break }
                if let now = entry(process.pid), now.parent != me, now.isGone { break }
                usleep(2_000)
            }
        }
        return leftovers.count
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
    public static func bootID() -> String {
        (readFile("/proc/sys/kernel/random/boot_id", limit: 128).map { String(decoding: $0, as: UTF8.self) } ?? "").filter { !$0.isWhitespace }
    }

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
}
