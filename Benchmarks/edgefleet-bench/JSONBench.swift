import ArgumentParser
import FleetAggregator
import FleetCore
import Foundation

/// The documents the aggregator writes most (site views, operation documents, events, site
/// records), encoded by Foundation's `JSONEncoder` with the contract's options and by
/// `CompactJSON` through their `Encodable` conformance, and `FleetJSON.encode` (each one's
/// hand-written `JSONWritable` writer), alternately in rounds on one thread: CPU time per
/// document each, and that all wrote the same bytes.
struct JSONEncodeBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "json-encode", abstract: "Foundation's JSON encoder against FleetJSON.encode.")

    @Option(help: "Documents of each kind per round.") var count = 20_000
    @Option(help: "Rounds (each measures both encoders).") var rounds = 5

    func run() throws {
        let site = try SiteID("storm-0042")
        let now = Date()
        let evaluation = ConnectivityEvaluator.evaluate(
            SiteKnowledge(lastAzureContactAt: now.addingTimeInterval(-3_600), lastSeenAt: now), thresholds: Thresholds(), now: now)
        let view = SiteView(
            site: site, evaluation: evaluation, lastHeartbeatAt: now, lastAzureContactAt: now, queue: QueueCounts(queued: 1, dispatching: 1),
            checks: CheckCounts(), labels: ["region": "emea", "tier": "gold"])
        var operation = DeferredOperation(
            id: "01J0000000000000000000000", sequence: 4_242, site: site, kind: .extensionInstall, params: ["name": "ext-1"], state: .succeeded,
            createdAt: now, createdBy: "token", maxAttempts: 5,
            history: [
                OperationHistoryEntry(at: now, from: nil, to: .queued, note: "submitted"),
                OperationHistoryEntry(at: now, from: .queued, to: .dispatching, note: "attempt 1"),
            ])
        operation.attempts = 1
        let event = FleetEvent(type: .operationSucceeded, site: site, at: now, operationID: operation.id, kind: .extensionInstall, note: "exit 0")
        var record = SiteRecord(site: site)
        record.lastHeartbeatAt = now
        record.lastSeenAt = now
        record.lastAzureContactAt = now
        record.session = 7
        record.mode = .connected
        record.modeSince = now

        let foundation = FleetJSON.encoder()
        func measure(_ name: String, _ encode: () throws -> [UInt8]) rethrows -> Double {
            let start = cpuSeconds()
            var bytes = 0
            for _ in 0..<count { bytes &+= try encode().count }
            precondition(bytes > 0)
            return (cpuSeconds() - start) / Double(count) * 1e6
        }
        func compare<T: Encodable>(_ name: String, _ value: T) throws {
            let expected = Array(try foundation.encode(value))
            guard try FleetJSON.encode(value) == expected, try CompactJSON.encodeCodable(value) == expected else {
                throw ValidationError("\(name): the encoders disagree")
            }
            var slow: [Double] = []
            var codable: [Double] = []
            var fast: [Double] = []
            for _ in 0..<rounds {
                slow.append(try measure(name) { Array(try foundation.encode(value)) })
                codable.append(try measure(name) { try CompactJSON.encodeCodable(value) })
                fast.append(try measure(name) { try FleetJSON.encode(value) })
            }
            let s = slow.sorted()[rounds / 2], c = codable.sorted()[rounds / 2], f = fast.sorted()[rounds / 2]
            print(
                "| \(name) | \(try FleetJSON.encode(value).count) | \(String(format: "%.1f", s)) | \(String(format: "%.1f", c)) | \(String(format: "%.1f", f)) | \(String(format: "%.1f", s / f))x |"
            )
        }
        print("| document | bytes | Foundation µs | compact, through Codable µs | FleetJSON.encode (its writer) µs | faster than Foundation |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        try compare("site view", view)
        try compare("operation document (2 history entries)", operation)
        try compare("event", event)
        try compare("site record", record)
    }

    private func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}
