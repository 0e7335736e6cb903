import FleetAgent
import FleetCore
import Foundation
import TestSupport
import Testing

@Suite("the agent's durable state", .ownThread)
struct DurableStateTests {
    let t0 = RFC3339.parse("2026-11-20T10:00:00.000Z")!

    @Test("saving and loading round-trips; a missing file is a fresh state; no temporary file is left")
    func roundTrip() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try AgentStateStore(directory: directory + "/state")
        #expect(try store.load() == AgentState())
        let state = AgentState(session: 17, lastContact: ContactRecord(wallClock: t0, bootID: "boot-a", bootTimeNanoseconds: 5_000_000_000))
        try store.save(state)
        #expect(try AgentStateStore(directory: directory + "/state").load() == state)
        #expect(!FileManager.default.fileExists(atPath: store.path + ".tmp"))
        let mode = try FileManager.default.attributesOfItem(atPath: store.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test("a corrupt state file is moved aside and reported, never silently reused")
    func corrupt() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try AgentStateStore(directory: directory)
        try "{\"schema\":\"edgefleet.agent-state/1\",\"session\":".write(toFile: store.path, atomically: true, encoding: .utf8)
        #expect(throws: StateError.self) { try store.load() }
        #expect(FileManager.default.fileExists(atPath: store.path + ".corrupt"))
        #expect(try store.load() == AgentState())
    }

    @Test("a state directory that is a file, or cannot be written, is refused with its path")
    func badDirectory() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/not-a-directory"
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        #expect {
            try AgentStateStore(directory: file)
        } throws: { error in
            (error as? StateError)?.description.contains(file) == true
        }
    }

    @Test("within one boot the age follows the boot-time clock, whatever the wall clock does")
    func sameBoot() {
        let contact = ContactRecord(wallClock: t0, bootID: "boot-a", bootTimeNanoseconds: 100_000_000_000)
        // The wall clock was corrected backwards by a day after the contact: the age still grows.
        let later = SystemClocks.Reading(wallClock: t0.addingTimeInterval(-86_400), bootID: "boot-a", bootTimeNanoseconds: 160_000_000_000)
        #expect(contact.age(now: later) == 60)
    }

    @Test("after a reboot the age comes from the wall clock, and is never negative")
    func afterReboot() {
        let contact = ContactRecord(wallClock: t0, bootID: "boot-a", bootTimeNanoseconds: 100_000_000_000)
        let rebooted = SystemClocks.Reading(wallClock: t0.addingTimeInterval(3 * 86_400), bootID: "boot-b", bootTimeNanoseconds: 5_000_000_000)
        #expect(contact.age(now: rebooted) == 3 * 86_400)
        let clockBehind = SystemClocks.Reading(wallClock: t0.addingTimeInterval(-10), bootID: "boot-b", bootTimeNanoseconds: 1)
        #expect(contact.age(now: clockBehind) == 0)
    }

    @Test("the real clocks read a boot id and a boot-time clock on Linux")
    func systemClocks() {
        let a = SystemClocks.system.read()
        let b = SystemClocks.system.read()
        #if os(Linux)
        #expect(a.bootID != nil && a.bootID == b.bootID)
        #expect(a.bootTimeNanoseconds != nil && b.bootTimeNanoseconds! >= a.bootTimeNanoseconds!)
        #endif
        #expect(abs(a.wallClock.timeIntervalSinceNow) < 5)
    }
}
