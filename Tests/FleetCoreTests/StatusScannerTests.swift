import FleetCore
import Foundation
import Testing

/// The status fast path against `JSONDecoder`, the definition: whatever the scanner accepts,
/// the decoder decodes to the same status.
@Suite("the status scanner agrees with the full decoder")
struct StatusScannerTests {
    static func statuses() throws -> [SiteStatus] {
        var generator = SystemRandomNumberGenerator()
        let site = try SiteID("store-0042")
        let base = Date(timeIntervalSince1970: 1_795_000_000.123)
        var all: [SiteStatus] = []
        for i in 0..<300 {
            let states = CheckState.allCases
            let checks = (0..<(i % 5)).map { k in
                CheckResult(
                    name: "check-\(k)", state: states[(i + k) % states.count], observedAt: base.addingTimeInterval(Double(k)),
                    durationMs: [0, 12, 40_000, -1][(i + k) % 4], output: k % 2 == 0 ? "all nodes Ready" : "1 node(s) not Ready — é")
            }
            let cluster: ClusterInfo? =
                switch i % 3 {
                case 0: nil
                case 1: ClusterInfo(name: "aks-\(i)", resourceGroup: "rg", subscription: "00000000-0000-0000-0000-000000000000", customLocation: "cl", kubernetesVersion: "1.29.4")
                default: ClusterInfo(name: "aks-\(i)")
                }
            all.append(
                SiteStatus(
                    site: site, session: i % 4 == 0 ? UInt64.max : UInt64.random(in: 0...1_000_000, using: &generator),
                    at: base.addingTimeInterval(Double(i)), cluster: cluster, checks: checks,
                    capabilities: i % 2 == 0 ? [:] : ["clusterAutoscaler": i % 3 == 0, "gitops": true],
                    spoolDropped: i % 5 == 0 ? nil : [0, 3, -2, Int.max][i % 4], instance: i % 3 == 0 ? nil : "9f0c2a51d3e47b68",
                    labels: i % 4 == 1 ? nil : i % 4 == 2 ? [:] : ["region": "emea", "tier": "gold-\(i)"]))
        }
        return all
    }

    @Test("every encoded status: the scanner reads it, and reads what the decoder reads")
    func encoded() throws {
        for status in try Self.statuses() {
            let bytes = try FleetJSON.encode(status)
            let scanned = try #require(StatusScanner.scan(bytes), "the fast path gave up on \(String(decoding: bytes, as: UTF8.self))")
            #expect(scanned == (try FleetJSON.decode(SiteStatus.self, from: bytes)))
        }
    }

    static let base = #""schema":"edgefleet.status/1","site":"s1","session":1,"at":"2026-11-29T10:00:00.000Z""#
    static let check = #"{"name":"dns","state":"pass","observedAt":"2026-11-29T10:00:00.000Z","durationMs":5,"output":"ok"}"#

    @Test("hand-written variants: accepted ones agree with the decoder; the rest are left to it", arguments: [
        // accepted
        "{\(base),\"checks\":[],\"capabilities\":{}}",
        "  { \(base) , \"checks\" : [ \(check) , \(check.replacingOccurrences(of: "dns", with: "ntp")) ] , \"capabilities\" : { \"a\" : true } } ",
        "{\(base),\"checks\":[],\"capabilities\":{},\"cluster\":null,\"labels\":null,\"spoolDropped\":null,\"instance\":null}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"cluster\":{},\"labels\":{\"a\":\"\"},\"spoolDropped\":-0}",
        // left to the decoder (some of them it refuses, some it reads: either way it decides)
        "{\(base),\"checks\":[],\"capabilities\":{\"a\":true,\"a\":false}}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"spoolDropped\":1.0}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"spoolDropped\":- 1}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"spoolDropped\":9223372036854775808}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"spoolDropped\":-9223372036854775809}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"extra\":1}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"cluster\":{\"name\":\"a\",\"zone\":\"b\"}}",
        "{\(base),\"checks\":[\(check.replacingOccurrences(of: "pass", with: "ok"))],\"capabilities\":{}}",
        "{\(base),\"checks\":[\(check.replacingOccurrences(of: "\"ok\"", with: "\"line\\nnext\""))],\"capabilities\":{}}",
        "{\(base),\"checks\":[\(check.replacingOccurrences(of: "5", with: "5.5"))],\"capabilities\":{}}",
        "{\(base),\"checks\":[\(check),],\"capabilities\":{}}",
        "{\(base),\"checks\":[],\"capabilities\":{\"a\":1}}",
        "{\(base),\"checks\":[],\"capabilities\":{},\"labels\":{\"a\":1}}",
        "{\(base),\"capabilities\":{}}",
        "{\(base),\"checks\":[]}",
        "{\(base.replacingOccurrences(of: "status/1", with: "status/2")),\"checks\":[],\"capabilities\":{}}",
        "{\(base),\"checks\":[],\"capabilities\":{}} x",
        "{\(base),\"checks\":[],\"capabilities\":{}",
        "", "{}", "[]", "null",
    ])
    func variants(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard let scanned = StatusScanner.scan(bytes) else { return }  // the decoder decides
        #expect(scanned == (try? FleetJSON.decode(SiteStatus.self, from: bytes)), "the fast path read what the decoder does not: \(text)")
    }

    @Test("the canonical variants above are read by the fast path (the test would pass vacuously otherwise)")
    func acceptedVariants() throws {
        let accepted = [
            "{\(Self.base),\"checks\":[],\"capabilities\":{}}",
            "  { \(Self.base) , \"checks\" : [ \(Self.check) , \(Self.check.replacingOccurrences(of: "dns", with: "ntp")) ] , \"capabilities\" : { \"a\" : true } } ",
            "{\(Self.base),\"checks\":[],\"capabilities\":{},\"cluster\":null,\"labels\":null,\"spoolDropped\":null,\"instance\":null}",
            "{\(Self.base),\"checks\":[],\"capabilities\":{},\"cluster\":{},\"labels\":{\"a\":\"\"},\"spoolDropped\":-0}",
        ]
        for text in accepted {
            let scanned = try #require(StatusScanner.scan(Array(text.utf8)), "gave up on \(text)")
            #expect(scanned == (try FleetJSON.decode(SiteStatus.self, from: Array(text.utf8))))
        }
    }

    @Test("random byte mutations of a status: whatever the scanner accepts, the decoder reads the same")
    func mutations() throws {
        let bytes = try FleetJSON.encode(try Self.statuses().first { $0.checks.count >= 2 && $0.cluster != nil && $0.labels?.isEmpty == false }!)
        var generator = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<3_000 {
            var mutated = bytes
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let index = Int.random(in: 0..<mutated.count, using: &generator)
                mutated[index] = [0x30, 0x39, 0x22, 0x2C, 0x7B, 0x7D, 0x5B, 0x5D, 0x20, 0x2E, 0x65, 0x2D, 0x6E, 0x5C, UInt8.random(in: 0...255, using: &generator)]
                    .randomElement(using: &generator)!
            }
            guard let scanned = StatusScanner.scan(mutated) else { continue }
            accepted += 1
            #expect(scanned == (try? FleetJSON.decode(SiteStatus.self, from: mutated)), "disagree on \(String(decoding: mutated, as: UTF8.self))")
        }
        #expect(accepted > 0)
    }
}
