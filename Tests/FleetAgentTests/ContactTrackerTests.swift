import FleetAgent
import FleetCore
import Foundation
import Synchronization
import TestSupport
import Testing

/// Clocks a test moves by hand.
final class ManualClocks: Sendable {
    let reading: Mutex<SystemClocks.Reading>
    init(wall: Date, boot: String = "boot-a", bootTime: UInt64 = 1_000_000_000_000) {
        reading = Mutex(SystemClocks.Reading(wallClock: wall, bootID: boot, bootTimeNanoseconds: bootTime))
    }
    var clocks: SystemClocks { SystemClocks { self.reading.withLock { $0 } } }
    func advance(_ seconds: Double, wall: Double? = nil) {
        reading.withLock {
            $0.wallClock = $0.wallClock.addingTimeInterval(wall ?? seconds)
            $0.bootTimeNanoseconds! += UInt64(seconds * 1e9)
        }
    }
    func reboot(id: String, wallAdvance: Double) {
        reading.withLock {
            $0.wallClock = $0.wallClock.addingTimeInterval(wallAdvance)
            $0.bootID = id
            $0.bootTimeNanoseconds = 5_000_000_000
        }
    }
}

@Suite("the contact tracker: the 30-day clock survives restarts")
struct ContactTrackerTests {
    let start = RFC3339.parse("2026-11-01T00:00:00.000Z")!

    @Test("never in contact is nil; a contact's age grows; a restarted agent sees the same age")
    func survivesRestart() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let clocks = ManualClocks(wall: start)
        let first = ContactTracker(store: try AgentStateStore(directory: directory), clocks: clocks.clocks)
        #expect(first.lastContactAge == nil)
        try first.recordContact()
        clocks.advance(3600)
        #expect(first.lastContactAge == 3600)

        // The process restarts (same boot): the age keeps growing from the saved contact.
        clocks.advance(60)
        let second = ContactTracker(store: try AgentStateStore(directory: directory), clocks: clocks.clocks)
        #expect(second.lastContactAge == 3660)

        // NTP moves the wall clock back an hour: within this boot the age is unaffected.
        clocks.advance(10, wall: -3600)
        let third = ContactTracker(store: try AgentStateStore(directory: directory), clocks: clocks.clocks)
        #expect(third.lastContactAge == 3670)

        // After a reboot only the wall clock is left: contact at wall 0, now wall
        // 3600 + 60 - 3600 + 7200 = 7260 (the hour NTP took back is lost, as documented).
        clocks.reboot(id: "boot-b", wallAdvance: 7200)
        let afterReboot = ContactTracker(store: try AgentStateStore(directory: directory), clocks: clocks.clocks)
        #expect(afterReboot.lastContactAge == 7260)
    }

    @Test("the session counter goes up by one per connection and is kept on disk")
    func sessions() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let tracker = ContactTracker(store: try AgentStateStore(directory: directory))
        #expect(tracker.nextSession().session == 1)
        #expect(tracker.nextSession().session == 2)
        let restarted = ContactTracker(store: try AgentStateStore(directory: directory))
        #expect(restarted.currentSession == 2)
        #expect(restarted.nextSession().session == 3)
    }

    @Test("a corrupt state file is reported and the agent starts as never in contact")
    func corrupt() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try AgentStateStore(directory: directory)
        try "garbage".write(toFile: store.path, atomically: true, encoding: .utf8)
        let problems = Mutex<[String]>([])
        let tracker = ContactTracker(store: store, onProblem: { error in problems.withLock { $0.append(error.description) } })
        #expect(tracker.lastContactAge == nil)
        #expect(problems.withLock { $0.count } == 1)
    }
}
