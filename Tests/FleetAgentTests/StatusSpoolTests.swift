import FleetAgent
import Foundation
import TestSupport
import Testing

@Suite("the offline status spool", .ownThread)
struct StatusSpoolTests {
    @Test("keeps messages in order across a reopen; full, it drops the oldest and counts them")
    func orderAndCapacity() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try StatusSpool(directory: directory + "/spool", capacity: 3)
        for i in 1...5 { try spool.append(Array("m\(i)".utf8)) }
        #expect(spool.count == 3 && spool.dropped == 2)
        // A crash leaves a temporary file behind: not a message.
        try "partial".write(toFile: directory + "/spool/000000000099.json.tmp", atomically: true, encoding: .utf8)
        let reopened = try StatusSpool(directory: directory + "/spool", capacity: 3)
        #expect(reopened.dropped == 2)
        var delivered: [String] = []
        while let first = reopened.first() {
            delivered.append(String(decoding: first, as: UTF8.self))
            reopened.removeFirst()
        }
        #expect(delivered == ["m3", "m4", "m5"])
        reopened.dropsReported(reopened.dropped)
        #expect(try StatusSpool(directory: directory + "/spool").dropped == 0)
        try reopened.append(Array("m6".utf8))
        #expect(reopened.first().map { String(decoding: $0, as: UTF8.self) } == "m6")
    }
}
