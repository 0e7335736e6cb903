@testable import Subprocesses
import LayeredSettings
import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("running probe and check commands")
struct CommandRunnerTests {
    @Test("the process table reads /proc/PID/stat on its bytes: this process's parent, group and start; a name with spaces and parentheses", .ownThread)
    func processTableEntry() throws {
        let me = try #require(ProcessTable.entry(getpid()))
        #expect(me.parent == getppid() && me.processGroup == getpgrp() && me.startTicks > 0 && !me.isGone)
        #expect(ProcessTable.pids().contains(getpid()))
        // A command whose name holds ") (" and spaces: the fields after the last ')' still read right.
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let odd = directory + "/a) (b c"
        try "#!/bin/sh\nsleep 5\n".write(toFile: odd, atomically: true, encoding: .utf8)
        chmod(odd, 0o755)
        let child = try ChildProcess(odd, [])
        defer { child.signal(SIGKILL); child.wait() }
        var entry: ProcessTable.Entry?
        for _ in 0..<200 {
            entry = ProcessTable.entry(child.pid)
            if entry != nil { break }
            usleep(5_000)
        }
        let found = try #require(entry)
        #expect(found.parent == getpid() && found.startTicks >= me.startTicks)
    }

    @Test("a runner's pipe is close-on-exec at both ends from its creation, and a spawned command holds neither", .ownThread)
    func pipesAreCloseOnExec() throws {
        let (read, write) = try #require(closeOnExecPipe())
        defer { close(read); close(write) }
        #expect(fcntl(read, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(write, F_GETFD) & FD_CLOEXEC != 0)
        // A command started now lists its descriptors: only 0, 1 and 2 (and the one ls opens to list them).
        let outcome = try CommandRunner.runBlocking(["/bin/sh", "-c", "ls /proc/self/fd"], timeout: .seconds(10), capture: .head(bytes: 4096)).get()
        let descriptors = Set(outcome.output.split(whereSeparator: \.isNewline).compactMap { Int32($0) })
        #expect(descriptors.contains(0) && descriptors.subtracting([0, 1, 2]).count <= 1, "the command got \(descriptors.sorted())")
    }

    @Test("exit codes map to check states as Nagios plugins do", arguments: [(0, CheckState.pass), (1, .warn), (2, .fail), (3, .unknown), (42, .unknown)] as [(Int32, CheckState)])
    func exitCodes(_ code: Int32, _ state: CheckState) async throws {
        let outcome = try await CommandRunner.run(["/bin/sh", "-c", "echo 'status line'; echo second; exit \(code)"], timeout: .seconds(10))
        #expect(outcome.exitCode == code)
        #expect(outcome.checkState == state)
        #expect(outcome.firstLine == "status line")
        #expect(!outcome.timedOut)
    }

    @Test("arguments reach the program as they are, never through a shell")
    func noShell() async throws {
        let outcome = try await CommandRunner.run(["printf", "%s|", "a b", "$(id)", "; exit 3"], timeout: .seconds(10))
        #expect(outcome.exitCode == 0)
        #expect(outcome.firstLine == "a b|$(id)|; exit 3|")
    }

    @Test("a command that hangs is killed with its whole process group at the timeout")
    func timeoutKillsGroup() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pidFile = directory + "/child.pid"
        let started = ContinuousClock.now
        let outcome = try await CommandRunner.run(
            ["/bin/sh", "-c", "sleep 300 & echo $! > \(pidFile); echo waiting; wait"], timeout: .milliseconds(500))
        let elapsed = ContinuousClock.now - started
        #expect(outcome.timedOut)
        #expect(outcome.checkState == .unknown)
        #expect(outcome.signal == SIGKILL)
        #expect(outcome.firstLine == "waiting")
        // Ended at the timeout, not by the 300 s sleep. (The bound is loose: under the whole suite
        // on 2 cores this took 5.6 s twice, the runner's thread waiting its turn; the outcome
        // above, SIGKILL at the timeout, is what says it was cut.)
        #expect(elapsed < .seconds(20))
        let child = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        // The background child was in the same group: it must be gone (or a zombie reaped by init shortly).
        var alive = kill(child, 0) == 0
        for _ in 0..<100 where alive {
            try await Task.sleep(for: .milliseconds(20))
            alive = kill(child, 0) == 0 && !isZombie(child)
        }
        #expect(!alive, "the hung command's child \(child) survived the timeout")
    }

    @Test("a command that prints a lot is read to the end; only a bounded first line is kept")
    func chatty() async throws {
        let outcome = try await CommandRunner.run(
            ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\000' x; echo; seq 1 100000"], timeout: .seconds(20), outputLimit: 40)
        #expect(outcome.exitCode == 0)
        #expect(outcome.firstLine == String(repeating: "x", count: 40) + "…")
    }

    @Test("a command that exits but leaves a child holding its output is finished, not timed out; the child is killed")
    func leftoverChild() async throws {
        let marker = "edgefleet-leftover-\(UInt32.random(in: 0...UInt32.max))"
        let outcome = try await CommandRunner.run(
            ["/bin/sh", "-c", "sh -c 'sleep 30; echo \(marker)' & echo done"], timeout: .seconds(10), capture: .head(bytes: 100))
        #expect(!outcome.timedOut && outcome.exitCode == 0)
        #expect(outcome.duration < .seconds(5))
        #expect(outcome.output.hasPrefix("done"))
        let left = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", marker])
        #expect(left.stdout.isEmpty, "the leftover child survived")
    }

    @Test("a command that prints 100 MB is ended past the bound (1 MiB), quickly, its state unknown")
    func flood() async throws {
        let outcome = try await CommandRunner.run(["/bin/sh", "-c", "head -c 100000000 /dev/zero; echo done"], timeout: .seconds(60))
        #expect(outcome.outputExceeded)
        #expect(!outcome.timedOut)
        #expect(outcome.checkState == .unknown)
        #expect(outcome.duration < .seconds(10), "read for \(outcome.duration)")
        let bounded = try await CommandRunner.run(["/bin/sh", "-c", "seq 1 10"], timeout: .seconds(10), maximumOutput: 1_000)
        #expect(!bounded.outputExceeded && bounded.checkState == .pass)
    }

    @Test("a daemon the command starts in a session of its own (setsid) is ended when the command ends")
    func setsidDaemon() async throws {
        let marker = "600.\(UInt32.random(in: 1000...999_999))"
        let outcome = try await CommandRunner.run(["/bin/sh", "-c", "setsid sleep \(marker) > /dev/null 2>&1 & echo started"], timeout: .seconds(10))
        #expect(outcome.exitCode == 0 && outcome.firstLine == "started")
        var left = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "sleep \(marker)"]).stdout
        for _ in 0..<50 where !left.isEmpty {
            try await Task.sleep(for: .milliseconds(20))
            left = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "sleep \(marker)"]).stdout
                .split(separator: "\n").filter { !isZombie(pid_t($0) ?? 0) }.joined(separator: "\n")
        }
        #expect(left.isEmpty, "the daemon outlived its command: \(left)")
    }

    @Test("the leftovers of commands that end together are swept in shared looks at /proc: each daemon ends with its own command, a daemon of a command still running is left alone")
    func sweepsTogether() async throws {
        let tag = UInt32.random(in: 1000...999_999)
        func daemons(_ pattern: String) throws -> [String] {
            // The whole command line (-x): the shells that started them hold the pattern too.
            try run(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-x", "-f", pattern]).stdout
                .split(separator: "\n").map(String.init).filter { !isZombie(pid_t($0) ?? 0) }
        }
        // Still running while the others end (until the test says so): its daemon must outlive their sweeps.
        let directory = try temporaryDirectory("edgefleet-sweep")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let release = directory + "/release"
        let long = Task {
            try await CommandRunner.run(
                ["/bin/sh", "-c", "setsid sleep 600.\(tag)0 > /dev/null 2>&1 & while [ ! -e '\(release)' ]; do sleep 0.05; done; echo done"],
                timeout: .seconds(120))
        }
        for _ in 0..<250 where try daemons("sleep 600.\(tag)0").isEmpty { try await Task.sleep(for: .milliseconds(20)) }
        #expect(try daemons("sleep 600.\(tag)0").count == 1)
        let outcomes = try await withThrowingTaskGroup(of: CommandOutcome.self) { group in
            for i in 1...8 {
                group.addTask {
                    try await CommandRunner.run(["/bin/sh", "-c", "setsid sleep 600.\(tag)\(i) > /dev/null 2>&1 & echo started"], timeout: .seconds(10))
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.count == 8 && outcomes.allSatisfy { $0.firstLine == "started" })
        // Each run returns after its sweep: nothing of the eight is left (zombies aside).
        for i in 1...8 { #expect(try daemons("sleep 600.\(tag)\(i)").isEmpty, "daemon \(i) outlived its command") }
        #expect(try daemons("sleep 600.\(tag)0").count == 1, "a running command's daemon was ended by another command's sweep")
        FileManager.default.createFile(atPath: release, contents: nil)
        let ended = try await long.value
        #expect(ended.firstLine == "done")
        #expect(try daemons("sleep 600.\(tag)0").isEmpty)
    }

    @Test("one sweep for several markers counts each marker's processes and kills only those")
    func sweepCounts() async throws {
        let a = "EDGEFLEET_RUN=\(UInt64.random(in: 1...UInt64.max))"
        let b = "EDGEFLEET_RUN=\(UInt64.random(in: 1...UInt64.max))"
        let c = "EDGEFLEET_RUN=\(UInt64.random(in: 1...UInt64.max))"
        func start(_ variable: String) throws -> Int32 {
            let parts = variable.split(separator: "=", maxSplits: 1)
            return try spawnProcess(["/bin/sleep", "600"], environment: [String(parts[0]): String(parts[1])])
        }
        let first = try start(a)
        let others = [try start(b), try start(b)]
        let spared = try start(c)
        defer {
            kill(spared, SIGKILL)
            var status: Int32 = 0
            waitpid(spared, &status, 0)
        }
        // One sweep for the searches of two commands (both started before the first process).
        let killed = LeftoverSweeper.sweep([
            LeftoverSearch(marker: Array(a.utf8), since: 0, after: first - 1),
            LeftoverSearch(marker: Array(b.utf8), since: 0, after: first - 1),
        ])
        #expect(killed == [1, 2])
        for pid in [first] + others { #expect(ProcessTable.entry(pid) == nil, "process \(pid) still there") }
        #expect(ProcessTable.entry(spared).map { !$0.isGone } == true)
    }

    @Test("with .head(bytes:) the output is kept up to the limit, with how much was cut")
    func headCapture() async throws {
        let outcome = try await CommandRunner.run(["/bin/sh", "-c", "seq 1 1000"], timeout: .seconds(10), capture: .head(bytes: 20))
        #expect(outcome.output.hasPrefix("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n"))
        #expect(outcome.output.contains("more bytes not kept"))
    }

    @Test("a program that does not exist is an error, not a crash")
    func missing() async {
        await #expect(throws: CommandError.self) {
            _ = try await CommandRunner.run(["/nonexistent/edgefleet-check"], timeout: .seconds(5))
        }
    }
}

