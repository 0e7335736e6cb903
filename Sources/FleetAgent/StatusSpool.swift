import FleetCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// Status messages that could not be published, kept on disk in order until the
/// broker is back: `spool/000000000042.json`, one file per message, each written
/// atomically. Bounded: when full, the oldest is dropped and counted, and the count
/// goes out with the next status that reaches the broker.
///
/// Used from one task at a time (the agent's status outbox).
public final class StatusSpool: @unchecked Sendable {
    public let directory: String
    public let capacity: Int
    private var sequence: [UInt64]
    private var next: UInt64
    /// Dropped since the last delivered status (kept in memory and in `dropped`).
    public private(set) var dropped: Int

    public init(directory: String, capacity: Int = 10_000) throws(StateError) {
        self.directory = directory
        self.capacity = max(1, capacity)
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw StateError("cannot create the spool directory '\(directory)': \(String(cString: strerror(errno)))")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        // Leftover temporary files from a crash are not messages.
        for name in names where name.hasSuffix(".tmp") { unlink(directory + "/" + name) }
        sequence = names.compactMap { $0.hasSuffix(".json") ? UInt64($0.dropLast(5)) : nil }.sorted()
        next = (sequence.last ?? 0) + 1
        dropped = (try? String(contentsOfFile: directory + "/dropped", encoding: .utf8)).flatMap { Int($0.filter(\.isNumber)) } ?? 0
        // After a restart the current status is a new reading, not a dropped change: if any was
        // dropped, it follows the spool, and the drops all count.
        currentPending = dropped > 0
    }

    public var count: Int { sequence.count }
    public var isEmpty: Bool { sequence.isEmpty }

    private func path(_ number: UInt64) -> String {
        let digits = String(number)
        return directory + "/" + String(repeating: "0", count: max(0, 12 - digits.count)) + digits + ".json"
    }

    /// Appends a message, dropping the oldest when the spool is full. A message that cannot be
    /// written (a full disk) is dropped too, and counted: every change that cannot be kept
    /// shows in `spoolDropped` of the next status that reaches the broker.
    public func append(_ payload: [UInt8]) throws(StateError) {
        while sequence.count >= capacity {
            let oldest = sequence.removeFirst()
            unlink(path(oldest))
            dropped += 1
        }
        do {
            try writeFileDurably(payload, to: path(next), directory: directory)
        } catch {
            dropped += 1
            currentPending = true
            newestDroppedIsCurrent = true
            saveDropped()
            throw error
        }
        sequence.append(next)
        next += 1
        currentPending = false
        newestDroppedIsCurrent = false
        saveDropped()
    }

    /// The agent's current status must follow the spool when it is delivered: the newest
    /// changes could not be spooled (or, after a restart, some were dropped), so the spool's
    /// last message is older than what the agent knows now.
    public private(set) var currentPending = false
    /// The newest change was dropped, and it is what the current status says: delivering the
    /// current status delivers it, so it is not lost (see `deliveringCurrent()`).
    public private(set) var newestDroppedIsCurrent = false

    /// Before a delivery that ends with the current status: the newest dropped change is about to
    /// arrive after all, so it no longer counts as dropped.
    public func deliveringCurrent() {
        guard newestDroppedIsCurrent else { return }
        newestDroppedIsCurrent = false
        dropped = max(0, dropped - 1)
        saveDropped()
    }

    /// The drop count on disk, so that a restart still reports it; a disk too full for it
    /// leaves it in memory (reported all the same while the process lives).
    private func saveDropped() {
        if dropped == 0 {
            unlink(directory + "/dropped")
        } else {
            try? writeFileDurably(Array(String(dropped).utf8), to: directory + "/dropped", directory: directory)
        }
    }

    /// The oldest message, if any.
    public func first() -> [UInt8]? {
        guard let number = sequence.first else { return nil }
        return FileManager.default.contents(atPath: path(number)).map(Array.init)
    }

    /// Removes the oldest message once the broker acknowledged it.
    public func removeFirst() {
        guard !sequence.isEmpty else { return }
        unlink(path(sequence.removeFirst()))
    }

    /// Takes `count` off the drop count once a status carrying it reached the broker (drops
    /// counted meanwhile stay for the next one).
    public func dropsReported(_ count: Int) {
        dropped = max(0, dropped - count)
        saveDropped()
    }

    /// The current status reached the broker directly (the spool was empty).
    public func currentDelivered() {
        currentPending = false
        newestDroppedIsCurrent = false
    }}
