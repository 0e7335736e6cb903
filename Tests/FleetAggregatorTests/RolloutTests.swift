import FleetCore
import Foundation
import Subprocesses
import TestSupport
import Testing

/// Rollouts through the real processes: 200 simulated sites in three regions (`edgefleet
/// simulate`), the aggregator, the stand-in `az` failing where told.
@Suite("rollouts", .timeLimit(.minutes(4)))
struct RolloutTests {
    @Test("a rollout over a region of 200 sites: the canary first and waited for, then waves; a semi-connected site holds nothing back and is never skipped; past the failure threshold it pauses; resumed, it completes; a site past its deadline is left out; idempotent creation; cancel")
    func waves() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        // North: ro-001..070, south: 071..140, west: 141..200. ro-030 and ro-031 lost Azure 20 minutes
        // ago (semi-connected, back at 45 s); ro-005 two hours ago (past its 1 h deadline).
        let scenario = f.directory + "/scenario.yaml"
        try """
            sites: 200
            prefix: ro
            heartbeatInterval: 1s
            regions: {north: 70, south: 70, west: 60}
            events:
              - {at: 0s, ids: [ro-030, ro-031], contactAge: 20m}
              - {at: 0s, ids: [ro-005], contactAge: 2h}
              - {at: 45s, ids: [ro-030, ro-031], restore: true}
            """.write(toFile: scenario, atomically: true, encoding: .utf8)
        let simulator = try ChildProcess(
            try builtProduct("edgefleet").path, ["simulate", "--broker", f.fleet.broker.url, "--scenario", scenario],
            outputPath: f.directory + "/simulate.log")
        let simulated = Date()
        defer {
            simulator.signal(SIGTERM)
            _ = simulator.wait()
        }
        try await withTimeout(.seconds(60), "200 sites with their regions and modes") {
            while true {
                let fleet = try await f.get("/v1/fleet").json()
                let modes = fleet["modes"] as? [String: Int] ?? [:]
                let north = try await f.get("/v1/sites?selector=region%3Dnorth&limit=100").json()["sites"] as? [[String: Any]] ?? []
                if fleet["sites"] as? Int == 200, modes["connected"] == 197, modes["disconnected"] == 1, modes["semi-connected"] == 2, north.count == 70 { return }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        // Five sites of the fourth wave fail (more than the threshold of 3).
        let failing = (50...54).map { "aks-ro-0\($0)" }
        try failing.joined(separator: "\n").appending("\n").write(toFile: f.az.directory + "/fail-sites", atomically: true, encoding: .utf8)

        let request = #"""
            {"kind": "extension.install", "selector": "region=north", "params": {"name": "monitoring"}, "canary": 2, "batch": "20",
             "maxFailures": "3", "waitFor": "2s", "idempotencyKey": "north-monitoring"}
            """#
        let created = try await f.post("/v1/rollouts", request)
        #expect(created.status == 201, "\(created.text)")
        let rollout = try #require(try created.json()["rollout"] as? [String: Any])
        let id = try #require(rollout["id"] as? String)
        #expect(rollout["waves"] as? Int == 5)
        let planned = try #require(rollout["sites"] as? [[String: Any]])
        #expect(planned.count == 69)
        #expect((rollout["skipped"] as? [[String: Any]])?.map { $0["site"] as? String } == ["ro-005"])
        #expect(planned.prefix(2).map { $0["site"] as? String } == ["ro-001", "ro-002"] && planned.prefix(2).allSatisfy { $0["wave"] as? Int == 0 })
        func wave(of site: String) -> Int? { planned.first { $0["site"] as? String == site }?["wave"] as? Int }
        #expect(wave(of: "ro-030") == 2 && wave(of: "ro-050") == 3 && wave(of: "ro-070") == 4)
        // Only the canary's operations exist yet.
        #expect(planned.filter { $0["operationID"] != nil }.count == 2)
        // Created again with the same key: the same rollout.
        let again = try await f.post("/v1/rollouts", request)
        #expect(try again.status == 200 && (again.json()["existing"] as? Bool) == true)
        #expect(((try again.json()["rollout"] as? [String: Any])?["id"] as? String) == id)

        // It pauses itself once the fourth wave's failures pass the threshold; the fifth never starts.
        @Sendable func current() async throws -> Rollout { try FleetJSON.decode(Rollout.self, from: Array(try await f.get("/v1/rollouts/\(id)").text.utf8)) }
        let paused = try await withTimeout(.seconds(90), "the rollout to pause itself") { () -> Rollout in
            while true {
                let r = try await current()
                if r.state == .paused { return r }
                #expect(r.state == .running)
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        #expect(paused.reason?.contains("threshold") == true, "\(paused.reason ?? "")")
        #expect(paused.wave == 3)
        #expect(paused.counts.pending == 7)
        #expect(paused.counts.failed >= 4, "it pauses at the fourth failure")
        // A pause starts no new wave; the fourth wave's operations already queued still run.
        let settled = try await withTimeout(.seconds(60), "the fourth wave's operations to end") { () -> Rollout in
            while true {
                let r = try await current()
                if r.counts.queued == 0 && r.counts.dispatching == 0 { return r }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        #expect(settled.state == .paused && settled.wave == 3 && settled.counts.pending == 7)
        #expect(settled.counts.failed == 5)
        // Progress on /metrics and on the dashboard (a page per rollout).
        let metrics = try await f.get("/metrics").text
        #expect(metrics.contains("edgefleet_rollouts{state=\"paused\"} 1"))
        #expect(metrics.contains("edgefleet_rollout_sites{rollout=\"\(id)\",state=\"failed\"} 5"), "\(metrics.split(separator: "\n").filter { $0.contains("rollout") })")
        let listPage = try await HTTP.get(port: f.port, "/rollouts", token: OperatorFixture.token)
        #expect(listPage.status == 200 && listPage.text.contains("data-rollout='\(id)' data-state='paused'"))
        let rolloutPage = try await HTTP.get(port: f.port, "/rollouts/\(id)", token: OperatorFixture.token)
        #expect(rolloutPage.status == 200 && rolloutPage.text.contains("Wave 1 (canary)") && rolloutPage.text.contains("ro-005"))
        #expect(rolloutPage.text.contains("Wave 5 <span class=small>not started</span>") && rolloutPage.text.contains("threshold"))
        #expect(try await HTTP.get(port: f.port, "/rollouts/ro-none", token: OperatorFixture.token).status == 404)

        // The order of the runs: the canary's both ended before any other started; every wave's
        // operations started after the previous wave's ended, except those of the semi-connected
        // sites, which were still waiting when the next wave started.
        var waveOf: [String: Int] = [:]
        var siteOf: [String: String] = [:]
        for site in paused.sites {
            if let op = site.operationID {
                waveOf[op] = site.wave
                siteOf[op] = site.site.rawValue
            }
        }
        let calls = f.az.calls().filter { waveOf[$0.id] != nil }
        #expect(Set(calls.map(\.id)).count == calls.count, "an operation ran twice")
        let semiOps = Set(siteOf.filter { $0.value == "ro-030" || $0.value == "ro-031" }.keys)
        #expect(semiOps.count == 2, "the semi-connected sites were skipped")
        for w in 1...3 {
            let before = calls.filter { (waveOf[$0.id] ?? 0) < w && !semiOps.contains($0.id) }.compactMap(\.end).max() ?? 0
            let firstOfWave = calls.filter { waveOf[$0.id] == w }.map(\.start).min() ?? .infinity
            #expect(before <= firstOfWave, "wave \(w + 1) started before the one before it ended")
        }
        let wave4Start = calls.filter { waveOf[$0.id] == 3 }.map(\.start).min() ?? 0
        let semiStarts = calls.filter { semiOps.contains($0.id) }.map(\.start)
        #expect(semiStarts.allSatisfy { $0 > wave4Start }, "a semi-connected site held the next wave back")
        #expect(wave4Start < simulated.timeIntervalSince1970 + 45, "the fourth wave waited for the semi-connected sites' link")
        // Nothing at another region's sites.
        let otherRegions = try await f.get("/v1/operations?selector=region!%3Dnorth&limit=1000").json()["operations"] as? [[String: Any]] ?? []
        #expect(otherRegions.isEmpty)

        // Resumed (the failures acknowledged, the cause fixed): the last wave runs, and once the
        // semi-connected sites are back the rollout completes.
        try FileManager.default.removeItem(atPath: f.az.directory + "/fail-sites")
        let resumed = try await f.post("/v1/rollouts/\(id)/resume")
        #expect(try resumed.status == 200 && (resumed.json()["state"] as? String) == "running")
        #expect(try await f.post("/v1/rollouts/\(id)/resume").status == 409)
        let done = try await withTimeout(.seconds(120), "the rollout to complete") { () -> Rollout in
            while true {
                let r = try await current()
                if r.state == .completed { return r }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let counts = done.counts
        #expect(counts.succeeded == 64 && counts.failed == 5 && counts.pending == 0 && counts.skipped == 1, "\(counts)")

        // Events: created, every wave, paused by itself, resumed, completed. The API may tell of the
        // completion before its event has come through the broker: wait for the event first.
        _ = try await f.fleet.messages.next(timeout: .seconds(30), "the rollout's completed event") { message in
            guard message.topic == "edgefleet/v1/fleet/events", let event = try? FleetJSON.decode(FleetEvent.self, from: message.payload) else { return false }
            return event.rollout == id && event.type == .rolloutCompleted
        }
        let events = f.fleet.messages.received.filter { $0.topic == "edgefleet/v1/fleet/events" }
            .compactMap { try? FleetJSON.decode(FleetEvent.self, from: $0.payload) }.filter { $0.rollout == id }
        let types = events.map(\.type)
        #expect(types.first == .rolloutCreated && types.last == .rolloutCompleted, "\(types)")
        #expect(types.filter { $0 == .rolloutWaveStarted }.count == 5 && types.contains(.rolloutPaused) && types.contains(.rolloutResumed))

        // The CLI.
        let list = try await f.cli(["rollout", "list"])
        #expect(list.status == 0 && list.stdout.contains(id) && list.stdout.contains("completed"))
        let show = try await f.cli(["rollout", "show", id])
        #expect(show.status == 0 && show.stdout.contains("ro-050") && show.stdout.contains("failed") && show.stdout.contains("left out: ro-005"))

        // Another, cancelled at once: its waiting operations are cancelled, no other wave starts.
        let west = try await f.post(
            "/v1/rollouts", #"{"kind": "extension.install", "selector": "region=west", "params": {"name": "x"}, "batch": "100%", "waitFor": "1h"}"#)
        let westID = try #require((try west.json()["rollout"] as? [String: Any])?["id"] as? String)
        let cancelled = try await f.cli(["rollout", "cancel", westID])
        #expect(cancelled.status == 0 && cancelled.stdout.contains("cancelled"), "\(cancelled.stderr)")
        #expect(try await f.post("/v1/rollouts/\(westID)/pause").status == 409)
        #expect(try await f.get("/v1/rollouts/nope").status == 404)
        for bad in [#"{"kind": "extension.install", "selector": "region=nowhere", "params": {"name": "x"}}"#,
                    #"{"kind": "extension.install", "selector": "region", "params": {"name": "x"}}"#,
                    #"{"kind": "cluster.delete", "selector": "region=north"}"#,
                    #"{"kind": "extension.install", "selector": "region=north", "params": {"name": "x"}, "batch": "150%"}"#,
                    #"{"kind": "kubectl.get", "selector": "region=north"}"#] {
            let refused = try await f.post("/v1/rollouts", bad)
            #expect(refused.status == 400 || refused.status == 422, "\(bad): \(refused.status) \(refused.text)")
        }
    }
}

@Suite("rollouts: expiry", .timeLimit(.minutes(2)))
struct RolloutExpiryTests {
    @Test("a rollout whose wave waits on sites without their link expires at expiresAt: the waves not started never start")
    func expires() async throws {
        let fleet = try await DispatchFixture.start()
        defer { Task { await fleet.stop() } }
        let sites = (1...4).map { "ex-\($0)" }
        // Semi-connected (their last contact 30 s ago; connected within 2 s, a 120 s budget): the first wave's operations wait.
        try await announce(sites, broker: fleet.broker, age: 30, labels: ["pool": "ex"])
        try await withTimeout(.seconds(20), "the four sites") {
            while fleet.service.views(mode: .semiConnected, selector: try LabelSelector(parsing: "pool=ex")).count < 4 { try await Task.sleep(for: .milliseconds(100)) }
        }
        let (created, _) = try fleet.service.createRollout(
            RolloutRequest(kind: "extension.install", selector: "pool=ex", params: ["name": "m"], batch: "2", waitFor: "1h", expiresIn: "2s"), by: "test")
        #expect(created.waves == 2 && created.wave == 0 && created.sites.filter { $0.operationID != nil }.count == 2)
        let expired = try await withTimeout(.seconds(20), "the rollout to expire") { () -> Rollout in
            while true {
                if let r = try fleet.service.rollout(id: created.id), r.state == .expired { return r }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        #expect(expired.wave == 0 && expired.counts.pending == 2, "\(expired.counts)")
        #expect(expired.reason?.contains("before wave 2 of 2") == true)
        // Its first wave's operations expire in the queue by themselves (they carry the expiry).
        for site in expired.sites where site.operationID != nil {
            let operation = try #require(try fleet.service.operation(id: site.operationID!))
            #expect(operation.expiresAt == created.expiresAt)
        }
    }
}
