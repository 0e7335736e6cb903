import FleetAggregator
import FleetCore
import Foundation
import TestSupport
import Testing

/// The event store's rules on both backends: ids in order, paging and filters, the spans the
/// mode changes make, a site's history and the fleet's, and retention.
@Suite("stored events and history on SQLite and PostgreSQL (real servers)")
struct EventStoreTests {
    static let t0 = Date(timeIntervalSince1970: 1_790_000_000)
    static func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }
    static let budget = 1_000.0

    /// A mode change as the aggregator makes it: the contact and deadline it knew.
    static func mode(_ site: String, _ from: String?, _ to: String, at seconds: Double, contact: Double?) throws -> FleetEvent {
        FleetEvent(
            type: .modeChanged, site: try SiteID(site), at: at(seconds), from: from, to: to,
            contactAt: contact.map(at), deadline: contact.map { at($0 + budget) })
    }

    /// Site a: known at 0 (connected), loses Azure at 100 (semi at 115), back at 300; loses it
    /// at 400, past its deadline at 1,400, back at 1,600. Site b: connected at 50, loses Azure
    /// at 60 (semi at 75), still out. Other events in between.
    static func story() throws -> [FleetEvent] {
        [
            try mode("a", nil, "connected", at: 0, contact: 0),
            try mode("b", nil, "connected", at: 50, contact: 50),
            try mode("b", "connected", "semi-connected", at: 75, contact: 60),
            FleetEvent(type: .livenessChanged, site: try SiteID("a"), at: at(90), from: "online", to: "stale"),
            try mode("a", "connected", "semi-connected", at: 115, contact: 100),
            try mode("a", "semi-connected", "connected", at: 300, contact: 300),
            FleetEvent(type: .operationQueued, site: try SiteID("a"), at: at(310), operationID: "op-1", kind: .clusterUpgrade),
            try mode("a", "connected", "semi-connected", at: 415, contact: 400),
            FleetEvent(type: .deadlineAlert, site: try SiteID("a"), at: at(1_200), level: .critical, remainingS: 200),
            try mode("a", "semi-connected", "disconnected", at: 1_400, contact: 400),
            try mode("a", "disconnected", "connected", at: 1_600, contact: 1_600),
            FleetEvent(type: .leaderChanged, site: nil, at: at(1_700), to: "r2", note: "epoch 2"),
        ]
    }

    /// The store's calls off the cooperative pool: they block (PostgreSQL's pool waits on a
    /// semaphore), and two tests blocking both of the pool's threads stall every other test.
    struct Offloaded: Sendable {
        let store: any EventStore
        func append(_ events: [FleetEvent]) async throws -> [FleetEvent] { try await offload { try store.append(events) } }
        func events(_ query: EventQuery) async throws -> [FleetEvent] { try await offload { try store.events(query) } }
        func siteHistory(_ site: SiteID, window: HistoryWindow) async throws -> SiteHistory {
            try await offload { try store.siteHistory(site, window: window) }
        }
        func fleetHistory(window: HistoryWindow, top: Int, buckets: Int) async throws -> FleetHistory {
            try await offload { try store.fleetHistory(window: window, top: top, buckets: buckets) }
        }
        func prune(before: Date) async throws -> Int { try await offload { try store.prune(before: before) } }
    }

    @Test("ids increase in order; pages by cursor; filters by site, type, since and until", arguments: StoreBackend.allCases)
    func paging(_ backend: StoreBackend) async throws {
        let fresh = try await offload { try FreshStores(backend) }
        defer { fresh.remove() }
        let store = Offloaded(store: fresh.stores.events)
        let story = try Self.story()
        // Two batches, as two publishing passes would store them.
        let first = try await store.append(Array(story.prefix(5)))
        let stored = first + (try await store.append(Array(story.dropFirst(5))))
        let ids = stored.compactMap(\.id)
        #expect(ids.count == story.count && ids == ids.sorted() && Set(ids).count == ids.count)
        #expect(stored.map { var e = $0; e.id = nil; return e } == story)

        var seen: [FleetEvent] = []
        var after: Int64?
        repeat {
            let page = try await store.events(EventQuery(after: after, limit: 5))
            seen += page
            after = page.count == 5 ? page.last?.id : nil
        } while after != nil
        #expect(seen == stored)
        let a = try await store.events(EventQuery(site: try SiteID("a"), limit: 100))
        #expect(a.count == 9 && a.allSatisfy { $0.site?.rawValue == "a" })
        let changes = try await store.events(EventQuery(types: [.modeChanged], since: Self.at(100), until: Self.at(1_400), limit: 100))
        #expect(changes.map(\.at) == [Self.at(115), Self.at(300), Self.at(415)])
        #expect(try await store.events(EventQuery(since: Self.at(1_650), limit: 100)).map(\.type) == [.leaderChanged])
        #expect(try await store.events(EventQuery(types: [.deadlineAlert, .operationQueued], limit: 100)).count == 2)
    }

    @Test("a site's history: time in each mode, outages, the longest stretch without Azure, the most budget used, exact", arguments: StoreBackend.allCases)
    func siteHistory(_ backend: StoreBackend) async throws {
        let fresh = try await offload { try FreshStores(backend) }
        defer { fresh.remove() }
        let store = Offloaded(store: fresh.stores.events)
        _ = try await store.append(try Self.story())
        // The window [-100, 2,000): 100 s before the site was known.
        let history = try await store.siteHistory(try SiteID("a"), window: HistoryWindow(from: Self.at(-100), to: Self.at(2_000)))
        #expect(history.unrecordedS == 100)
        #expect(history.modes["connected"] == 630.0)  // 115 + 115 + 400
        #expect(history.modes["semi-connected"] == 1_170.0)  // 185 + 985
        #expect(history.modes["disconnected"] == 200)
        #expect(history.outages == 2 && history.outagesPastDeadline == 1)
        // From the last contact (400) to the moment it was known back (1,600).
        #expect(history.longestWithoutAzure == Outage(from: Self.at(400), to: Self.at(1_600), seconds: 1_200, pastDeadline: true))
        #expect(history.maxBudgetUsed == BudgetPeak(share: 1.2, at: Self.at(1_600), usedS: 1_200, budgetS: Self.budget))
        #expect(history.spans.map(\.mode) == [.connected, .semiConnected, .connected, .semiConnected, .disconnected, .connected])

        // A window that starts inside the second outage still measures it from its contact; at
        // the window's end (now, for the API) it is still going.
        let late = try await store.siteHistory(try SiteID("a"), window: HistoryWindow(from: Self.at(1_000), to: Self.at(1_500)))
        #expect(late.unrecordedS == 0 && late.modes["semi-connected"] == 400 && late.modes["disconnected"] == 100)
        #expect(late.outages == 1 && late.longestWithoutAzure == Outage(from: Self.at(400), to: nil, seconds: 1_100, pastDeadline: true))
        #expect(late.maxBudgetUsed?.share == 1.1 && late.maxBudgetUsed?.at == Self.at(1_500))

        // Site b is still out: the stretch runs to the end of the window.
        let b = try await store.siteHistory(try SiteID("b"), window: HistoryWindow(from: Self.at(0), to: Self.at(560)))
        #expect(b.longestWithoutAzure == Outage(from: Self.at(60), to: nil, seconds: 500, pastDeadline: false))
        #expect(b.maxBudgetUsed?.share == 0.5)
    }

    @Test("the fleet: site-seconds per mode, slices, and the ranking by budget used", arguments: StoreBackend.allCases)
    func fleetHistory(_ backend: StoreBackend) async throws {
        let fresh = try await offload { try FreshStores(backend) }
        defer { fresh.remove() }
        let store = Offloaded(store: fresh.stores.events)
        _ = try await store.append(try Self.story())
        let window = HistoryWindow(from: Self.at(0), to: Self.at(2_000))
        let fleet = try await store.fleetHistory(window: window, top: 10, buckets: 4)
        // a: connected 115+115+400, semi 1,170, disconnected 200; b: connected 25, semi 1,925.
        #expect(fleet.modeSeconds["connected"] == 655)
        #expect(fleet.modeSeconds["semi-connected"] == 3_095.0)  // 1,170 + 1,925
        #expect(fleet.modeSeconds["disconnected"] == 200)
        #expect(abs((fleet.modeShare["semi-connected"] ?? 0) - 3_095.0 / 3_950.0) < 1e-9)
        // b used 1,940 s of 1,000 by the end of the window; a 1,200 s at 1,600.
        #expect(fleet.ranking.map { $0.site?.rawValue } == ["b", "a"])
        #expect(fleet.ranking.first?.share == 1.94 && fleet.ranking.first?.at == Self.at(2_000))
        #expect(fleet.ranking.last?.share == 1.2 && fleet.ranking.last?.at == Self.at(1_600))
        // Slices of 500 s: the last one has a back (connected) and b out (semi-connected) throughout.
        #expect(fleet.series.count == 4 && fleet.series.first?.from == Self.at(0))
        #expect(fleet.series.last?.sites["connected"] == 0.8 && fleet.series.last?.sites["semi-connected"] == 1)
        #expect(fleet.series.last?.sites["disconnected"] == 0.2)
    }

    @Test("retention removes events and ended spans older than the cutoff, and nothing newer", arguments: StoreBackend.allCases)
    func retention(_ backend: StoreBackend) async throws {
        let fresh = try await offload { try FreshStores(backend) }
        defer { fresh.remove() }
        let store = Offloaded(store: fresh.stores.events)
        // Enough for several slices of the removal.
        var many: [FleetEvent] = []
        for n in 0..<12_000 {
            many.append(FleetEvent(type: .livenessChanged, site: try SiteID("s-\(n % 50)"), at: Self.at(Double(n) / 10), from: "online", to: "stale"))
        }
        _ = try await store.append(many)
        _ = try await store.append(
            try Self.story().map {
                var e = $0
                e.at = e.at.addingTimeInterval(10_000)
                e.contactAt = e.contactAt?.addingTimeInterval(10_000)
                e.deadline = e.deadline?.addingTimeInterval(10_000)
                return e
            })
        #expect(try await store.prune(before: Self.at(1_000)) == 10_000)
        let left = try await store.events(EventQuery(limit: 5_000))
        #expect(left.count == 2_000 + 12 && left.allSatisfy { $0.at >= Self.at(1_000) })
        // The spans of the moved story are still there.
        let history = try await store.siteHistory(try SiteID("a"), window: HistoryWindow(from: Self.at(9_000), to: Self.at(12_000)))
        #expect(history.outages == 2)
    }
}
