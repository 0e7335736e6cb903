import FleetCore
import Foundation
import Testing

/// The heartbeat fast path against `JSONDecoder`, the definition: whatever the scanner accepts,
/// the decoder decodes to the same heartbeat.
@Suite("the heartbeat scanner agrees with the full decoder")
struct HeartbeatScannerTests {
    static func heartbeats() throws -> [Heartbeat] {
        var generator = SystemRandomNumberGenerator()
        let site = try SiteID("store-0042")
        let base = Date(timeIntervalSince1970: 1_795_000_000.123)
        var all: [Heartbeat] = []
        for i in 0..<400 {
            let age: Double? = i % 7 == 0 ? nil : [0, 1.5, 12, 86_400.25, 1e-3, 3.0e6][i % 6]
            let certificates: CertificateReport? =
                switch i % 4 {
                case 0: nil
                case 1: CertificateReport(earliestNotAfter: base.addingTimeInterval(86_400), source: "kubeconfig")
                case 2: CertificateReport(earliestNotAfter: nil, source: nil, error: "cannot read /etc/x.pem")
                default: CertificateReport(earliestNotAfter: nil, source: nil)
                }
            all.append(
                Heartbeat(
                    site: site, session: i % 5 == 0 ? UInt64.max : UInt64.random(in: 0...1_000_000, using: &generator),
                    seq: UInt64.random(in: 0...UInt64.max, using: &generator), sentAt: base.addingTimeInterval(Double(i)),
                    azure: AzureReport(reachable: i % 2 == 0, lastContactAgeS: age, probe: i % 3 == 0 ? "command" : "endpoints"),
                    certificates: certificates, instance: i % 3 == 0 ? nil : "9f0c2a51d3e47b68"))
        }
        return all
    }

    @Test("every encoded heartbeat: the scanner reads it, and reads what the decoder reads")
    func encoded() throws {
        for heartbeat in try Self.heartbeats() {
            let bytes = try FleetJSON.encode(heartbeat)
            let scanned = try #require(HeartbeatScanner.scan(bytes), "the fast path gave up on \(String(decoding: bytes, as: UTF8.self))")
            #expect(scanned == (try FleetJSON.decode(Heartbeat.self, from: bytes)))
        }
    }

    @Test("hand-written variants: accepted ones agree with the decoder; the rest are left to it", arguments: [
        // accepted
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":0,"probe":"endpoints"}}"#,
        #"  { "seq" : 2 , "site":"s1", "session":1,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"probe":"x","lastContactAgeS":null,"reachable":false},"schema":"edgefleet.heartbeat/1" } "#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1e3,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":-0.5,"probe":"e"},"certificates":null}"#,
        // left to the decoder (some of them it refuses, some it reads: either way it decides)
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":01,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1.,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2.5,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":-1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":18446744073709551616,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s\u0031","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"seq":3,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"},"extra":1}"#,
        #"{"schema":"edgefleet.heartbeat/2","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"S1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"yesterday","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":1,"lastContactAgeS":1,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1,"probe":"e"}} x"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z","azure":{"reachable":true,"lastContactAgeS":1e999,"probe":"e"}}"#,
        #"{"schema":"edgefleet.heartbeat/1","site":"s1","session":1,"seq":2,"sentAt":"2026-11-29T10:00:00.000Z""#,
        "", "{}", "[]", "null",
    ])
    func variants(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard let scanned = HeartbeatScanner.scan(bytes) else { return }  // the decoder decides
        #expect(scanned == (try? FleetJSON.decode(Heartbeat.self, from: bytes)), "the fast path read what the decoder does not: \(text)")
    }

    @Test("random byte mutations of a heartbeat: whatever the scanner accepts, the decoder reads the same")
    func mutations() throws {
        let bytes = try FleetJSON.encode(try Self.heartbeats()[1])
        var generator = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<3_000 {
            var mutated = bytes
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let index = Int.random(in: 0..<mutated.count, using: &generator)
                mutated[index] = [0x30, 0x39, 0x22, 0x2C, 0x7B, 0x7D, 0x20, 0x2E, 0x65, 0x2D, 0x6E, 0x5C, UInt8.random(in: 0...255, using: &generator)]
                    .randomElement(using: &generator)!
            }
            guard let scanned = HeartbeatScanner.scan(mutated) else { continue }
            accepted += 1
            #expect(scanned == (try? FleetJSON.decode(Heartbeat.self, from: mutated)), "disagree on \(String(decoding: mutated, as: UTF8.self))")
        }
        #expect(accepted > 0)
    }
}
