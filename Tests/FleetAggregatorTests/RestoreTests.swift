import FleetAggregator
import FleetCore
import Foundation
import TestSupport
import Testing

@Suite("after a start the operator surfaces answer from the restored fleet, or say they are restoring", .timeLimit(.minutes(3)))
struct RestoreTests {
    static let stored = 60_000

    @Test("60,000 stored sites: each answer while they are read back is 503 restoring with Retry-After, never an empty fleet; /healthz is 503 restoring until then")
    func answersWhileRestoring() async throws {
        let directory = try temporaryDirectory("edgefleet-restore")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = directory + "/fleet.sqlite"
        let now = Date()
        let records = (0..<Self.stored).map { i -> SiteRecord in
            var record = SiteRecord(site: try! SiteID("restore-\(i)"))
            record.session = 1
            record.presence = .online
            record.presenceAt = now
            record.lastSeenAt = now
            return record
        }
        try await offload { try AggregatorStores.sqlite(path: database).sites.save(records, at: now) }

        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let aggregator = try AggregatorProcess(broker: broker, database: database, extra: ["--public-reads", "true"])
        let port = try await OperatorFixture.listeningPort(aggregator)
        let (restoringAnswers, healthStates) = try await withTimeout(.seconds(60), "the restored fleet") { () -> (Int, [String]) in
            var restoringAnswers = 0
            var healthStates: [String] = []
            while true {
                let health = try await HTTP.get(port: port, "/healthz")
                let state = try health.json()["status"] as? String ?? "?"
                if healthStates.last != state { healthStates.append(state) }
                #expect(health.status == (state == "restoring" ? 503 : 200), "\(health.status) \(health.text)")
                let fleet = try await HTTP.get(port: port, "/v1/fleet")
                if fleet.status == 503 {
                    #expect(fleet.errorCode == "restoring" && fleet.headers["retry-after"] == "1", "\(fleet.headers) \(fleet.text)")
                    restoringAnswers += 1
                    continue
                }
                #expect(fleet.status == 200)
                #expect(try fleet.json()["sites"] as? Int == Self.stored, "an answer before the fleet was restored: \(fleet.text.prefix(200))")
                let site = try await HTTP.get(port: port, "/v1/sites/restore-\(Self.stored - 1)")
                #expect(site.status == 200, "\(site.status) \(site.text.prefix(200))")
                let last = try await HTTP.get(port: port, "/healthz")
                healthStates.append(try last.json()["status"] as? String ?? "?")
                return (restoringAnswers, healthStates)
            }
        }
        // `healthStates` begins with `restoring` when the first look came before the restore ended.
        #expect(healthStates.last == "ok" && healthStates.allSatisfy { $0 == "restoring" || $0 == "ok" }, "\(healthStates)")
        print("restore test: \(restoringAnswers) answer(s) of 503 restoring before the fleet was read back; /healthz: \(healthStates)")
        await aggregator.terminateAndWait()
    }
}
