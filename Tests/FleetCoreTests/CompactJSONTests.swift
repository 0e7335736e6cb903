import FleetCore
import Foundation
import Testing

/// `FleetJSON.encode` (the compact encoder) must write exactly what Foundation's encoder with the
/// contract's options writes: stored documents are compared by text, and readers of the topics
/// may too.
@Suite("compact JSON encoder")
struct CompactJSONTests {
    let site = try! SiteID("store-0042")
    let now = RFC3339.parse("2026-11-26T15:00:00.123Z")!

    func foundation<T: Encodable>(_ value: T) throws -> String { String(decoding: try FleetJSON.encoder().encode(value), as: UTF8.self) }
    func compact<T: Encodable>(_ value: T) throws -> String { try FleetJSON.text(value) }

    func same<T: Encodable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let expected = try foundation(value)
        #expect(try compact(value) == expected, sourceLocation: sourceLocation)
    }

    @Test("every payload type is written byte for byte as Foundation writes it")
    func payloads() throws {
        let status = SiteStatus(
            site: site, session: 3, at: now, cluster: ClusterInfo(name: "aks-store-42", resourceGroup: "rg"),
            checks: [
                CheckResult(name: "kube-api", state: .pass, observedAt: now, durationMs: 34, output: "ok"),
                CheckResult(name: "dns", state: .fail, observedAt: now, durationMs: 1_200, output: "line 1\nline \"2\"\t\\ / é"),
            ],
            capabilities: ["clusterAutoscaler": true, "arc": false])
        try same(status)
        try same(Presence(site: site, state: .online, session: 17, agent: AgentInfo(version: "0.3.0", host: "node-a"), heartbeatIntervalS: 10, at: now))
        try same(Heartbeat(site: site, session: .max, seq: 5, sentAt: now, azure: AzureReport(reachable: false, lastContactAgeS: nil, probe: "endpoints")))
        try same(Heartbeat(site: site, session: 1, seq: 0, sentAt: now, azure: AzureReport(reachable: true, lastContactAgeS: 12.25, probe: "arc")))
        for contact in [now, now.addingTimeInterval(-40 * 86_400), Date(timeIntervalSince1970: 0)] {
            let evaluation = ConnectivityEvaluator.evaluate(
                SiteKnowledge(lastAzureContactAt: contact, lastSeenAt: now), thresholds: Thresholds(), now: now)
            try same(
                SiteView(
                    site: site, evaluation: evaluation, lastHeartbeatAt: now, lastAzureContactAt: contact,
                    queue: QueueCounts(queued: 2, dispatching: 1, failed: 0, blocked: 3), checks: CheckCounts(status.checks),
                    labels: ["region": "emea", "tier": "gold", "a10": "x", "a9": "y", "Z": "upper"]))
        }
        var modes = ModeCounts()
        modes[.semiConnected] = 2
        let summary = FleetSummary(
            at: now, sites: 3, modes: modes, liveness: LivenessCounts(),
            nearestDeadlines: [DeadlineEntry(site: site, mode: .semiConnected, deadline: now, remainingS: 1.5)], queue: OperationCounts())
        try same(summary)
        for type in FleetEventType.allCases {
            try same(
                FleetEvent(
                    type: type, site: site, at: now, from: "connected", to: "semi-connected", contactAt: now, deadline: now.addingTimeInterval(86_400)))
        }
        try same(FleetEvent(type: .deadlineAlert, site: site, at: now, level: .critical, remainingS: 3_600.5))
        let operation = DeferredOperation(
            id: "op-1", sequence: 42, site: site, kind: .extensionInstall, params: ["name": "monitor", "version": "1.2.3", "zz": "a/b"],
            state: .failed, createdAt: now, createdBy: "alice@example.com", idempotencyKey: "k-1", notBefore: now, expiresAt: nil,
            attempts: 2, maxAttempts: 5, nextAttemptAt: now, lastError: "exit 1: \u{1b}[31mred\u{1b}[0m",
            history: [
                OperationHistoryEntry(at: now, from: nil, to: .queued, note: "submitted"),
                OperationHistoryEntry(at: now, from: .queued, to: .dispatching, note: ""),
            ])
        try same(operation)
        try same([operation, operation])
        try same(StoredEventBody(FleetEvent(type: .operationSucceeded, site: site, at: now, operationID: "op-1", kind: .extensionInstall, note: "ok")))
    }

    struct Edges: Encodable {
        var doubles: [Double] = [0, -0.0, 1, 1.5, -2.25, 1e20, 1e21, 1e-7, 123456789.123, 0.1, 1e300, .leastNonzeroMagnitude, Double(Int64.max), 100, 1e15]
        var float: Float = 1.1
        var integers: [Int64] = [0, 1, -1, 10, 99, 100, .max, .min]
        var unsigned: [UInt64] = [0, 7, .max]
        var small: [Int8] = [-128, 0, 127]
        var text: String = {
            var s = ""
            for i in 0..<0x21 { s.unicodeScalars.append(Unicode.Scalar(i)!) }
            return s + "\u{7f}\u{2028}\u{2029}/\\\"é😀 end"
        }()
        var keys: [String: Int] = ["b": 1, "a": 2, "B": 3, "a10": 4, "a9": 5, "é": 6, "_x": 7, "Z": 8, "": 9, "a b": 10, "\"q\"": 11]
        var intKeys: [Int: String] = [3: "c", 1: "a", 20: "t"]
        var enumKeys: [OperationState: Int] = [.queued: 1]
        var nothing: String? = nil
        var url = URL(string: "https://example.com/a?b=c")!
        var data = Data([0, 1, 2, 254, 255])
        var dates: [Date] = [
            Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: -1.5), Date(timeIntervalSince1970: 1_000_000_000.0005),
            Date(timeIntervalSince1970: 253_402_300_799.999), Date(timeIntervalSince1970: 1_900_000_000.9999),
        ]
        var nested: [[String: [Int]]] = [["x": [1, 2]], [:], ["y": []]]
        var empty = Empty()
        var optionals: [Int?] = [1, nil, 3]
    }

    struct Empty: Encodable {
        func encode(to encoder: any Encoder) throws {}
    }

    /// Containers used by hand: nested keyed and unkeyed, super encoders, a key given twice, nil.
    struct Manual: Encodable {
        enum Keys: String, CodingKey { case b, a, list, inner, twice, gone, parent }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode("first", forKey: .twice)
            try c.encode(2, forKey: .b)
            var list = c.nestedUnkeyedContainer(forKey: .list)
            try list.encode(1)
            try list.encodeNil()
            var deeper = list.nestedContainer(keyedBy: Keys.self)
            try deeper.encode(true, forKey: .a)
            var innerList = list.nestedUnkeyedContainer()
            try innerList.encode("x")
            try list.encode(Date(timeIntervalSince1970: 1))
            var inner = c.nestedContainer(keyedBy: Keys.self, forKey: .inner)
            try inner.encode(1.25, forKey: .b)
            try inner.encodeNil(forKey: .a)
            try c.encodeNil(forKey: .gone)
            try c.encode("second", forKey: .twice)
            let parent = c.superEncoder(forKey: .parent)
            var single = parent.singleValueContainer()
            try single.encode(["k": "v"])
            let base = c.superEncoder()
            var baseList = base.unkeyedContainer()
            try baseList.encode(9)
            try c.encode("late", forKey: .a)  // after the nested containers were handed out
            try list.encode("appended later")
        }
    }

    @Test("numbers, escapes, key order, dates, containers and fragments match Foundation's output")
    func edges() throws {
        try same(Edges())
        try same(Manual())
        try same("a fragment")
        try same(42)
        try same([Int]())
        try same([Empty()])
        try same([String: Int]())
        try same(Optional<Int>.none)
    }

    @Test("what Foundation refuses is refused, with the path to the value")
    func refusals() throws {
        struct Bad: Encodable { var values: [String: [Double]] }
        for value in [Double.nan, .infinity, -.infinity] {
            #expect(throws: EncodingError.self) { try FleetJSON.encoder().encode(Bad(values: ["x": [1, value]])) }
            do {
                _ = try FleetJSON.encode(Bad(values: ["x": [1, value]]))
                Issue.record("\(value) was encoded")
            } catch let EncodingError.invalidValue(_, context) {
                #expect(context.codingPath.map(\.stringValue) == ["values", "x", "Index 1"])
            }
        }
        #expect(throws: EncodingError.self) { try FleetJSON.encode(Float.nan) }
    }

    @Test("dates are written as RFC 3339 milliseconds, as the formatter writes them")
    func dates() throws {
        for seconds in [0, -0.0004, -1, 86_399.9995, 1_764_000_000.123, 4_102_444_800, -62_135_596_800, 253_402_300_800] as [Double] {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(try compact(date) == "\"\(RFC3339.format(date))\"")
            #expect(try compact(date) == foundation(date))
        }
        #expect(RFC3339.format(Date(timeIntervalSince1970: 1_764_000_000.123)) == "2025-11-24T16:00:00.123Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 253_402_300_800)) == "10000-01-01T00:00:00.000Z")
    }
}
