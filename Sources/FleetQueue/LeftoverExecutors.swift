import Subprocesses

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
/// that left the group with `setsid`).
///
/// Why end rather than adopt (docs/design-notes.md, "An executor outlives its aggregator"):
/// the process is no longer our child, so its exit status cannot be collected, and the
/// pipe that carried its output died with the old aggregator; an adopted run's outcome
/// would be a guess. Ending it and queueing the operation again keeps the contract's
/// at-least-once rule and never runs one operation twice at the same time.
enum LeftoverExecutors {
    /// The run record of a process just started.
    static func run(operationID: String, pid: Int32, startedAt: Date) -> ExecutorRun {
        ExecutorRun(
            operationID: operationID, processGroup: pid, startTicks: ProcessTable.entry(pid)?.startTicks ?? 0, bootID: ProcessTable.bootID(),
            host: ProcessTable.hostName(), startedAt: startedAt)
    }

    /// Live processes of `run`'s group started no earlier than its leader, and any process
    /// whose environment names `operationID`.
    static func living(operationID: String, run: ExecutorRun?) -> [ProcessTable.Entry] {
        let marker = "EDGEFLEET_OPERATION_ID=\(operationID)"
        let me = getpid()
        return ProcessTable.pids().compactMap { pid in
            guard pid != me, let process = ProcessTable.entry(pid), !process.isGone else { return nil }
            if let run, process.processGroup == run.processGroup, process.startTicks >= run.startTicks { return process }
            return ProcessTable.environment(of: pid, contains: marker) ? process : nil
        }
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
}
