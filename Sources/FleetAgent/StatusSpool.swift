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
    }

    public var count: Int { sequence.count }
    public var isEmpty: Bool { sequence.isEmpty }

    private func path(_ number: UInt64) -> String {
        let digits = String(number)
        return directory + "/" + String(repeating: "0", count: max(0, 12 - digits.count)) + digits + ".json"
    }

    /// Appends a message, dropping the oldest when the spool is full.
    public func append(_ payload: [UInt8]) throws(StateError) {
        while sequence.count >= capacity {
            let oldest = sequence.removeFirst()
            unlink(path(oldest))
            dropped += 1
        }
        try writeFileDurably(payload, to: path(next), directory: directory)
        sequence.append(next)
        next += 1
        try writeFileDurably(Array(String(dropped).utf8), to: directory + "/dropped", directory: directory)
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

    /// Resets the drop count once a status carrying it reached the broker.
    public func dropsReported() {
        dropped = 0
        unlink(directory + "/dropped")
    }}
