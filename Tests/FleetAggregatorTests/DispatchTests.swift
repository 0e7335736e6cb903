import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import Logging
import MetricsTestKit
import MQTT
import Synchronization
import TestSupport
import Testing

/// The aggregator service in-process with a queue whose executors are a stand-in `az`,
/// against a real broker, SQLite file and subprocesses.
struct DispatchFixture {
    let broker: MosquittoBroker
    let directory: String
    let az: StandInAzure
    let service: AggregatorService
    let running: Task<Void, any Error>
    let metrics: TestMetrics

    static func start(
        connectedWithin: Duration = .seconds(2), stableFor: Duration = .milliseconds(1500), limit: Int = 4, maxAttempts: Int = 3,
        timeout: Duration = .seconds(20)
    ) async throws -> DispatchFixture {
        let broker = try await MosquittoBroker.start()
        let directory = try temporaryDirectory("edgefleet-dispatch")
        let az = try StandInAzure()
        var logger = Logger(label: "aggregator")
        logger.logLevel = .error
        var thresholds = Thresholds()
        thresholds.connectedWithin = connectedWithin
        thresholds.budget = .seconds(120)
        thresholds.warnBefore = .seconds(60)
        thresholds.criticalBefore = .seconds(30)
        thresholds.stableFor = stableFor
        let executors: [OperationKind: ExecutorTemplate] = [
            .extensionInstall: ExecutorTemplate(
                argv: [az.path, "k8s-extension", "create", "--cluster-name", "{cluster.name}", "--name", "{params.name}"], timeout: timeout),
            .clusterUpgrade: ExecutorTemplate(
                argv: [az.path, "aksarc", "upgrade", "--name", "{cluster.name}", "--kubernetes-version", "{params.kubernetesVersion}", "--yes"],
                timeout: timeout),
        ]
        let configuration = AggregatorConfiguration(
            mqtt: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "aggregator-\(UUID().uuidString.prefix(6))"),
            databasePath: directory + "/fleet.sqlite", thresholds: thresholds, viewRefresh: .seconds(1), summaryInterval: .milliseconds(200),
            flushInterval: .milliseconds(200), executors: executors,
            dispatch: DispatchSettings(limit: limit, backoff: .milliseconds(200), maximumBackoff: .seconds(1)), maxAttempts: maxAttempts,
            dispatchInterval: .milliseconds(100))
        let metrics = TestMetrics()
        let service = try AggregatorService(configuration: configuration, logger: logger, metrics: AggregatorMetrics(factory: metrics))
        let running = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service.run() }
                group.addTask { try await service.queue.run() }
                try await group.waitForAll()
            }
        }
        // Heartbeats are not retained: wait until the aggregator is subscribed (it announces
        // itself after subscribing) before any site speaks.
        let (observer, messages) = try await fleetObserver(broker)
        try await messages.aggregatorOnline()
        await observer.shutdown()
        return DispatchFixture(broker: broker, directory: directory, az: az, service: service, running: running, metrics: metrics)
    }

    func stop() async {
        running.cancel()
        _ = try? await running.value
        broker.stop()
        az.remove()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func operation(_ id: String) -> DeferredOperation? { try? service.queue.store.operation(id: id) }

    /// Waits until every operation is in a final state (or `states`), failing after `timeout`.
    func waitUntil(_ ids: [String], are states: Set<OperationState>, timeout: Duration = .seconds(30)) async throws {
        let service = service
        do {
            try await withTimeout(timeout, "operations to be \(states.map(\.rawValue).sorted())") {
                while true {
                    let all = ids.map { try? service.queue.store.operation(id: $0) }
                    if all.allSatisfy({ $0.map { states.contains($0.state) } ?? false }) { return }
                    // A final state other than the one awaited will not change: stop waiting.
                    if let stuck = all.first(where: { $0.map { $0.state.isTerminal && !states.contains($0.state) } ?? false }), let stuck {
                        throw TestSupportError("operation \(stuck.id) ended \(stuck.state): \(stuck.history.map(\.note))")
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        } catch {
            let all = ids.compactMap { try? service.queue.store.operation(id: $0) }
            let byState = Dictionary(grouping: all, by: \.state).mapValues(\.count)
            let unexpected = all.first { !states.contains($0.state) }.map { " first other: \($0.id) \($0.state): \($0.history.map(\.note))" } ?? ""
            throw TestSupportError("\(error); states: \(byState)\(unexpected)")
        }
    }
}

/// Publishes heartbeats (and a status with cluster metadata) for many sites from one connection.
func announce(_ sites: [String], broker: MosquittoBroker, age: Double = 0, labels: [String: String]? = nil) async throws {
    var logger = Logger(label: "sites")
    logger.logLevel = .critical
    let client = try MQTTClient(configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "sites-\(UUID().uuidString.prefix(6))"), logger: logger)
    try await client.connect()
    let session = UInt64(Date().timeIntervalSince1970 * 1000)
    for site in sites {
        let id = try SiteID(site)
        // A site exists once it has announced itself.
        let presence = Presence(site: id, state: .online, session: session, heartbeatIntervalS: 10, at: Date())
        try await client.publish("edgefleet/v1/sites/\(site)/presence", payload: try FleetJSON.encode(presence), qos: .atLeastOnce, retain: true)
        let status = SiteStatus(site: id, session: session, at: Date(), cluster: ClusterInfo(name: "aks-\(site)", resourceGroup: "rg"), labels: labels)
        try await client.publish("edgefleet/v1/sites/\(site)/status", payload: try FleetJSON.encode(status), qos: .atLeastOnce, retain: true)
        let heartbeat = Heartbeat(site: id, session: session, seq: 1, sentAt: Date(), azure: AzureReport(reachable: age == 0, lastContactAgeS: age, probe: "endpoints"))
        try await client.publish("edgefleet/v1/sites/\(site)/heartbeat", payload: try FleetJSON.encode(heartbeat), qos: .atLeastOnce)
    }
    await client.shutdown()
}

@Suite("the dispatcher: queued operations run when the link is back", .timeLimit(.minutes(3)))
struct DispatchTests {
    func install(_ site: String, _ name: String, key: String? = nil, expiresAt: Date? = nil) -> SubmissionRequest {
        SubmissionRequest(site: site, kind: "extension.install", params: ["name": name], createdBy: "test", idempotencyKey: key, expiresAt: expiresAt)
    }

    @Test("queued while semi-connected; after the link is back, nothing until stableFor, then in order, one at a time, exact argv")
    func runsInOrderWhenStable() async throws {
        let fleet = try await DispatchFixture.start()
        defer { Task { await fleet.stop() } }
        let (observer, messages) = try await fleetObserver(fleet.broker)
        defer { Task { await observer.shutdown() } }
        let site = try SimulatedSite("store-7", brokerURL: fleet.broker.url)
        site.reportContact(at: Date().addingTimeInterval(-60))  // Azure gone a minute ago
        try await site.connect()
        try await site.status(cluster: ClusterInfo(name: "aks-store-7", resourceGroup: "rg"))
        site.startBeating()
        try await withTimeout(.seconds(10), "the site semi-connected") {
            while fleet.service.view(of: try SiteID("store-7"))?.mode != .semiConnected { try await Task.sleep(for: .milliseconds(20)) }
        }
        let hostile = "a b 'c' \"d\"; rm -rf / $(reboot)"
        var ids: [String] = []
        for name in ["first", "second", hostile] {
            let result = try fleet.service.submit(install("store-7", name))
            #expect(result.operation.state == .queued && result.reason.contains("semi-connected"))
            #expect(result.deadline != nil)
            ids.append(result.operation.id)
        }
        // Nothing runs while the site is semi-connected (the dispatcher passes every 100 ms).
        try await Task.sleep(for: .milliseconds(600))
        #expect(fleet.az.calls().isEmpty)

        site.regainAzure()
        try await withTimeout(.seconds(10), "the site connected") {
            while fleet.service.view(of: try SiteID("store-7"))?.mode != .connected { try await Task.sleep(for: .milliseconds(10)) }
        }
        try await fleet.waitUntil(ids, are: [.succeeded])
        let calls = fleet.az.calls()
        #expect(calls.map(\.id) == ids, "submission order")
        // Not before stableFor into the connected spell it ran in (on a loaded machine a late
        // heartbeat can make the site flap before the test sees it connected: the spell is read from
        // the aggregator's mode-changed events, not from when the test looked).
        // When the dispatcher decided (its claim, in the operation's history), not when the stand-in
        // logged its start: a flap between the two (a loaded CI machine) is not a dispatch at a semi-connected site.
        let firstOperation = try #require(try fleet.service.operation(id: ids[0]))
        let firstStart = try #require(firstOperation.history.first { $0.to == .dispatching }).at.timeIntervalSince1970
        let logged = try #require(calls.first).start
        #expect(firstStart <= logged + 0.001, "claimed after the stand-in started")
        // Events are stored before they are published: on a loaded machine the change to connected
        // may reach the observer after the operations ran. Wait for it (it must come).
        try await withTimeout(.seconds(20), "the mode change to connected") {
            while !messages.events("store-7").contains(where: { $0.type == .modeChanged && $0.to == "connected" }) {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let spell = messages.events("store-7").filter { $0.type == .modeChanged && $0.at.timeIntervalSince1970 <= firstStart }.last
        #expect(spell?.to == "connected", "ran while the site was \(spell?.to ?? "not yet connected")")
        #expect(spell.map { firstStart >= $0.at.timeIntervalSince1970 + 1.5 - 0.05 } == true, "ran before stableFor had passed")
        for (earlier, later) in zip(calls, calls.dropFirst()) {
            #expect((earlier.end ?? .infinity) <= later.start, "two operations of one site overlapped")
        }
        #expect(calls.last?.arguments == ["k8s-extension", "create", "--cluster-name", "aks-store-7", "--name", hostile])
        let done = try #require(fleet.operation(ids[0]))
        #expect(done.history.map(\.to) == [.queued, .dispatching, .succeeded])
        #expect(done.history.last?.note.contains("stand-in az: k8s-extension create") == true)
        // Every transition went out on the events topic, in order per operation.
        for id in ids {
            for type in [FleetEventType.operationQueued, .operationDispatched, .operationSucceeded] {
                _ = try await messages.event("store-7", "\(type.rawValue) of \(id)") { $0.type == type && $0.operationID == id }
            }
        }
        // Queue counts reach the summary and the metrics; dispatch latency is measured.
        try await withTimeout(.seconds(5), "the queue counts in the summary") {
            while fleet.service.summary().queue.succeeded != 3 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(try fleet.metrics.expectGauge("edgefleet_operations", [("state", "succeeded")]).lastValue == 3)
        #expect(try fleet.metrics.expectTimer("edgefleet_dispatch_latency_seconds").values.count == 3)
        await site.shutdown()
    }

    @Test("200 sites come back at once with 5 operations each: the fleet-wide limit holds, every site progresses, all run once")
    func stampede() async throws {
        let fleet = try await DispatchFixture.start(connectedWithin: .seconds(120), stableFor: .milliseconds(500), limit: 4)
        defer { Task { await fleet.stop() } }
        let sites = (0..<200).map { "site-\($0)" }
        var ids: [String] = []
        // Site by site (all of one site's, then the next's): serving by submission time would
        // then keep the first sites busy and starve the last ones.
        for site in sites {
            for round in 0..<5 { ids.append(try fleet.service.submit(install(site, "ext-\(round)")).operation.id) }
        }
        try await announce(sites, broker: fleet.broker)
        // Every site is stable 0.5 s after it connected; until then the first ones are served alone.
        // When the last one connected is read from the aggregator (on a loaded machine the
        // heartbeats of 200 sites take a while to be taken in).
        let siteIDs = try sites.map { try SiteID($0) }
        let lastConnected = try await withTimeout(.seconds(30), "every site connected") { () -> Date in
            while true {
                let views = siteIDs.compactMap { fleet.service.view(of: $0) }
                if views.count == siteIDs.count, views.allSatisfy({ $0.mode == .connected }) {
                    return views.compactMap(\.modeSince).max() ?? Date()
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let allReady = lastConnected.timeIntervalSince1970 + 0.5 + 0.3
        try await fleet.waitUntil(ids, are: [.succeeded], timeout: .seconds(120))
        let calls = fleet.az.calls()
        #expect(calls.count == 1000)
        #expect(Set(calls.map(\.id)).count == 1000, "an operation ran twice")
        #expect(fleet.az.peakConcurrency() <= 4)
        #expect(fleet.az.peakConcurrency() >= 2, "the limit was never used")
        // Round robin by site (least recently served first), not by submission time: once every
        // site is ready, the next 200 dispatches reach (nearly) every site.
        let siteOf = Dictionary(uniqueKeysWithValues: try ids.map { ($0, try #require(fleet.operation($0)).site) })
        // (On a loaded machine most of the work may be done before the last site is ready: the
        // window is then the sites that still had operations, and as many dispatches.)
        let before = calls.filter { $0.start < allReady }
        var ranBefore: [SiteID: Int] = [:]
        for call in before { if let site = siteOf[call.id] { ranBefore[site, default: 0] += 1 } }
        let stillWaiting = siteIDs.filter { (ranBefore[$0] ?? 0) < 5 }.count
        let window = min(200, stillWaiting)
        let afterReady = calls.filter { $0.start >= allReady }.prefix(window)
        let distinct = Set(afterReady.compactMap { siteOf[$0.id] }).count
        #expect(window >= 20, "only \(window) sites still had work once all were ready: nothing to judge the order by")
        #expect(afterReady.count == window && distinct >= window * 95 / 100, "only \(distinct) sites among \(window) dispatches once all were ready")
        // Per site, oldest first.
        for site in sites.prefix(20) {
            let order = calls.filter { siteOf[$0.id]?.rawValue == site }.map { $0.arguments.last ?? "" }
            #expect(order == ["ext-0", "ext-1", "ext-2", "ext-3", "ext-4"])
        }
    }

    @Test("exit 75 retries with backoff up to maxAttempts; a hung executor is killed at its timeout; other exits fail")
    func retriesAndTimeouts() async throws {
        let fleet = try await DispatchFixture.start(connectedWithin: .seconds(120), stableFor: .zero, maxAttempts: 3, timeout: .seconds(1))
        defer { Task { await fleet.stop() } }
        try await announce(["r1", "r2", "r3", "r4"], broker: fleet.broker)
        let flaky = try fleet.service.submit(install("r1", "flaky=2")).operation.id  // 75, 75, then 0
        let always = try fleet.service.submit(install("r2", "exit=75")).operation.id
        let hung = try fleet.service.submit(install("r3", "hang")).operation.id
        let broken = try fleet.service.submit(install("r4", "exit=3")).operation.id
        do {
            try await fleet.waitUntil([flaky, always, hung, broken], are: [.succeeded, .failed], timeout: .seconds(30))
        } catch {
            for id in [flaky, always, hung, broken] {
                Issue.record("\(id): \(fleet.operation(id).map { "\($0.state) \($0.history.map(\.note))" } ?? "missing")")
            }
            throw error
        }

        let f = try #require(fleet.operation(flaky))
        #expect(f.state == .succeeded && f.attempts == 3)
        #expect(f.history.filter { $0.note.contains("exit 75") }.count == 2)
        let calls = fleet.az.calls().filter { $0.id == flaky }
        #expect(calls.count == 3)
        // Exponential backoff: the announced waits grow (200 ms, then 400 ms, each ±20%), and
        // no retry starts before its wait is over.
        let waits = f.history.compactMap { entry -> Double? in
            guard let range = entry.note.range(of: "retry in ") else { return nil }
            let text = entry.note[range.upperBound...].prefix { !$0.isWhitespace && $0 != "\n" }
            return (try? DurationFormat.parse(String(text))).map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        }
        #expect(waits.count == 2 && waits[0] >= 0.16 && waits[0] <= 0.24 && waits[1] >= 0.32 && waits[1] <= 0.48, "\(waits)")
        if calls.count == 3, waits.count == 2 {
            #expect(calls[1].start - (calls[0].end ?? 0) >= waits[0] - 0.05)
            #expect(calls[2].start - (calls[1].end ?? 0) >= waits[1] - 0.05)
        }
        let a = try #require(fleet.operation(always))
        #expect(a.state == .failed && a.attempts == 3 && a.history.last?.note.contains("no attempts left") == true)
        let h = try #require(fleet.operation(hung))
        #expect(h.state == .failed && h.history.contains { $0.note.contains("timed out after 1s") })
        // The hung script's sleep died with its process group.
        let leftovers = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", fleet.az.hangCommand])
        #expect(leftovers.stdout.isEmpty, "a hung executor's children survived its timeout")
        let b = try #require(fleet.operation(broken))
        #expect(b.state == .failed && b.attempts == 1 && b.lastError == "exit 3")
        // An operator retries the failed one: it runs again (and fails again, as the stand-in says).
        _ = try fleet.service.retry(id: broken, by: "ops")
        try await fleet.waitUntil([broken], are: [.failed])
        #expect(fleet.az.calls().filter { $0.id == broken }.count == 2)
        #expect(fleet.operation(broken)?.history.contains { $0.note == "retried by ops" } == true)
        // notBefore holds an operation back even at a connected, stable site.
        let notBefore = Date().addingTimeInterval(1.0)
        let scheduled = try fleet.service.submit(
            SubmissionRequest(site: "r1", kind: "extension.install", params: ["name": "later"], createdBy: "test", notBefore: notBefore)).operation.id
        try await fleet.waitUntil([scheduled], are: [.succeeded])
        let run = try #require(fleet.az.calls().first { $0.id == scheduled })
        #expect(run.start >= notBefore.timeIntervalSince1970 - 0.01, "ran before notBefore")
    }

    @Test("a graceful stop terminates running executors and queues their operations again; nothing outlives the aggregator")
    func gracefulStop() async throws {
        let fleet = try await DispatchFixture.start(connectedWithin: .seconds(60), stableFor: .zero, timeout: .seconds(60))
        try await announce(["busy"], broker: fleet.broker)
        let id = try fleet.service.submit(install("busy", "hang")).operation.id
        try await withTimeout(.seconds(10), "the executor running") {
            while fleet.az.calls().first(where: { $0.id == id }) == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(fleet.operation(id)?.state == .dispatching)
        fleet.running.cancel()
        _ = try? await fleet.running.value
        let stopped = try #require(fleet.operation(id))
        #expect(stopped.state == .queued && stopped.attempts == 0)
        #expect(stopped.history.last?.note.contains("its executor was terminated") == true)
        let left = try await runAsync(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", fleet.az.hangCommand])
        #expect(left.stdout.isEmpty, "a running executor outlived the aggregator")
        await fleet.stop()
    }

    @Test("an operation whose executor needs cluster metadata the site has not reported waits for it instead of failing")
    func waitsForClusterMetadata() async throws {
        let fleet = try await DispatchFixture.start(connectedWithin: .seconds(60), stableFor: .zero)
        defer { Task { await fleet.stop() } }
        let site = try SimulatedSite("no-meta", brokerURL: fleet.broker.url)
        try await site.connect()
        try await site.heartbeat()
        try await withTimeout(.seconds(10), "the site connected") {
            while fleet.service.view(of: try SiteID("no-meta"))?.mode != .connected { try await Task.sleep(for: .milliseconds(20)) }
        }
        let id = try fleet.service.submit(install("no-meta", "x")).operation.id
        try await Task.sleep(for: .milliseconds(500))  // several dispatcher passes
        #expect(fleet.operation(id)?.state == .queued && fleet.operation(id)?.attempts == 0)
        #expect(fleet.az.calls().isEmpty)
        try await site.status(cluster: ClusterInfo(name: "aks-late", resourceGroup: "rg"))
        try await fleet.waitUntil([id], are: [.succeeded])
        #expect(fleet.az.calls().first?.arguments.contains("aks-late") == true)
        await site.shutdown()
    }

    @Test("expiry, cancel, bulk cancel, idempotency; a site past its deadline blocks its operations until an operator releases them")
    func lifecycle() async throws {
        let fleet = try await DispatchFixture.start(connectedWithin: .seconds(2), stableFor: .zero)
        defer { Task { await fleet.stop() } }
        // Expiry: a site that never comes back.
        let expiring = try fleet.service.submit(install("far-away", "x", expiresAt: Date().addingTimeInterval(0.5))).operation.id
        try await fleet.waitUntil([expiring], are: [.expired], timeout: .seconds(10))
        #expect(fleet.operation(expiring)?.history.last?.note.contains("expired") == true)

        // Idempotency, cancel and bulk cancel.
        let one = try fleet.service.submit(install("later", "a", key: "k1"))
        let again = try fleet.service.submit(install("later", "b", key: "k1"))
        #expect(again.existing && again.operation.id == one.operation.id)
        _ = try fleet.service.cancel(id: one.operation.id, by: "ops")
        for name in ["b", "c", "d"] { _ = try fleet.service.submit(install("later", name)) }
        let cancelled = try fleet.service.cancelAll(OperationFilter(site: try SiteID("later")), by: "ops")
        #expect(cancelled.count == 3)

        // A site whose certificate already expired: its operation is blocked, and stays blocked
        // when the link is back, until an operator releases it.
        let dark = try SimulatedSite("dark-site", brokerURL: fleet.broker.url)
        dark.setCertificateExpiry(Date().addingTimeInterval(-1))
        try await dark.connect()
        try await dark.status(cluster: ClusterInfo(name: "aks-dark", resourceGroup: "rg"))
        try await dark.heartbeat()
        try await withTimeout(.seconds(10), "the site disconnected") {
            while fleet.service.view(of: try SiteID("dark-site"))?.mode != .disconnected { try await Task.sleep(for: .milliseconds(20)) }
        }
        let held = try fleet.service.submit(install("dark-site", "held"))
        #expect(held.operation.state == .blocked)
        // Renewed certificate: the site is connected again, yet the operation waits for an operator.
        dark.setCertificateExpiry(Date().addingTimeInterval(3600))
        dark.startBeating()
        try await withTimeout(.seconds(10), "the site connected") {
            while fleet.service.view(of: try SiteID("dark-site"))?.mode != .connected { try await Task.sleep(for: .milliseconds(20)) }
        }
        try await Task.sleep(for: .milliseconds(400))  // several dispatcher passes
        #expect(fleet.operation(held.operation.id)?.state == .blocked)
        #expect(fleet.az.calls().isEmpty)
        // The site's view counts its blocked operation.
        try await withTimeout(.seconds(5), "the view's queue counts") {
            while fleet.service.view(of: try SiteID("dark-site"))?.queue.blocked != 1 { try await Task.sleep(for: .milliseconds(20)) }
        }
        _ = try fleet.service.release(id: held.operation.id, by: "ops")
        try await fleet.waitUntil([held.operation.id], are: [.succeeded])
        #expect(fleet.operation(held.operation.id)?.history.map(\.to) == [.queued, .blocked, .queued, .dispatching, .succeeded])
        await dark.shutdown()
    }
}
