#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Finds and ends executors that an earlier aggregator process started and did not see end
/// (it was killed): from `/proc`, by the process group and start time recorded when each
/// run started, and by the `EDGEFLEET_OPERATION_ID` every executor carries in its
/// environment (which also finds a run killed before its record was written, and children
/// that left the group with `setsid`). Linux only; elsewhere nothing is found.
///
/// Why end rather than adopt (docs/design-notes.md, "An executor outlives its aggregator"):
/// the process is no longer our child, so its exit status cannot be collected, and the
/// pipe that carried its output died with the old aggregator; an adopted run's outcome
/// would be a guess. Ending it and queueing the operation again keeps the contract's
/// at-least-once rule and never runs one operation twice at the same time.
enum LeftoverExecutors {
    /// One process as `/proc/PID/stat` describes it.
    struct ProcessInfo: Equatable {
        var pid: Int32
        var state: Character
        var processGroup: Int32
        var startTicks: UInt64
    }

    /// This boot's id: process ids and start ticks only mean something within one boot.
    static func bootID() -> String {
        (readFile("/proc/sys/kernel/random/boot_id").map { String(decoding: $0, as: UTF8.self) } ?? "")
            .filter { !$0.isWhitespace }
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `/proc/PID/stat`, parsed after the command name (which may hold spaces and parentheses).
    static func info(_ pid: Int32) -> ProcessInfo? {
        guard let bytes = readFile("/proc/\(pid)/stat"), let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " ")).map { String(decoding: $0, as: UTF8.self) }
        // fields[0] is field 3 (state); pgrp is field 5, starttime field 22.
        guard fields.count > 19, let state = fields[0].first, let group = Int32(fields[2]), let start = UInt64(fields[19]) else { return nil }
        return ProcessInfo(pid: pid, state: state, processGroup: group, startTicks: start)
    }

    /// The run record of a process just started.
    static func run(operationID: String, pid: Int32, startedAt: Date) -> ExecutorRun {
        ExecutorRun(
            operationID: operationID, processGroup: pid, startTicks: info(pid)?.startTicks ?? 0, bootID: bootID(), host: hostName(),
            startedAt: startedAt)
    }

    /// Live processes (zombies are gone) of `run`'s group started no earlier than its leader,
    /// and any process whose environment names `operationID`.
    static func living(operationID: String, run: ExecutorRun?) -> [ProcessInfo] {
        guard let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        let marker = Array("EDGEFLEET_OPERATION_ID=\(operationID)".utf8) + [0]
        let me = getpid()
        var found: [ProcessInfo] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = Int32(name), pid != me, let process = info(pid), process.state != "Z", process.state != "X" else { continue }
            if let run, process.processGroup == run.processGroup, process.startTicks >= run.startTicks {
                found.append(process)
                continue
            }
            if let environment = readFile("/proc/\(pid)/environ"), contains(environment, marker) {
                found.append(process)
            }
        }
        return found
    }

    /// Ends every leftover of one operation's run: SIGTERM, then SIGKILL after `grace`, and
    /// waits (up to 5 s more) until none is alive. Returns how many were found and whether
    /// all are gone. Blocks: call it off the cooperative pool.
    static func end(operationID: String, run: ExecutorRun?, grace: Duration) -> (found: Int, gone: Bool) {
        var alive = living(operationID: operationID, run: run)
        let found = alive.count
        guard found > 0 else { return (0, true) }
        for signal in [SIGTERM, SIGKILL] {
            for process in alive { kill(process.pid, signal) }
            let deadline = ContinuousClock.now + (signal == SIGTERM ? grace : .seconds(5))
            while !alive.isEmpty, ContinuousClock.now < deadline {
                usleep(50_000)
                alive = living(operationID: operationID, run: run)
            }
            if alive.isEmpty { return (found, true) }
        }
        return (found, false)
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        // Entries are NUL-separated: the marker matches at the start or after a NUL.
        guard needle.count <= haystack.count + 1 else { return false }
        var start = 0
        while start < haystack.count {
            let end = haystack[start...].firstIndex(of: 0) ?? haystack.count
            if haystack[start..<end].elementsEqual(needle.dropLast()) { return true }
            start = end + 1
        }
        return false
    }

    private static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            result += buffer[0..<n]
            if result.count > 1 << 20 { break }
        }
        return result
    }
}
