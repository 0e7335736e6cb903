import ArgumentParser
import Dispatch
import FleetAggregator
import FleetCore
import FleetPostgres
import FleetSimulator
import Foundation
import Logging

/// The stores the history benchmark writes and reads: an SQLite file, or a PostgreSQL database.
func historyStores(_ database: String, passwordFile: String?) throws -> AggregatorStores {
    PostgresLocation.isURL(database)
        ? try PostgresStores.open(url: database, passwordFile: passwordFile, environment: [:], poolSize: 4, logger: Logger(label: "bench")).stores
        : try AggregatorStores.sqlite(path: database)
}

/// Writes a made-up past (`HistoryGenerator`) for N sites over D days through the event store's
/// own append (so the spans are made as the aggregator makes them); prints one JSON line.
struct HistorySeed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history-seed", abstract: "Stores generated events for N sites over D days ending now; prints one JSON line.")

    @Option(help: "Database file (created), or a postgres:// URL of an empty database.") var database: String
    @Option(help: "The PostgreSQL password's file.") var passwordFile: String?
    @Option(help: "Sites.") var sites: Int = 100_000
    @Option(help: "Days of past.") var days: Int = 365
    @Option(help: "Site id prefix.") var prefix: String = "site"

    func run() async throws {
        let stores = try historyStores(database, passwordFile: passwordFile)
        let generator = HistoryGenerator()
        let end = Date()
        let start = end.addingTimeInterval(-Double(days) * 86_400)
        let began = ContinuousClock.now
        var events = 0
        var batch: [FleetEvent] = []
        for index in 0..<sites {
            let site = try historySite(prefix, index)
            batch += generator.events(site: site, index: index, from: start, to: end)
            if batch.count >= 5_000 || index == sites - 1 {
                // In time order within a batch, as the aggregator publishes them.
                batch.sort { $0.at < $1.at }
                _ = try stores.events.append(batch)
                events += batch.count
                batch.removeAll(keepingCapacity: true)
            }
        }
        let seconds = (ContinuousClock.now - began).secondsValue
        print(#"{"sites": \#(sites), "days": \#(days), "events": \#(events), "seconds": \#(String(format: "%.1f", seconds)), "eventsPerSecond": \#(Int(Double(events) / seconds))}"#)
    }
}

/// Times a site's history for random sites and the fleet's history, straight on the store.
struct HistoryQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history-query", abstract: "Times site histories (random sites) and the fleet history on a seeded store; prints one JSON line.")

    @Option(help: "Database file, or a postgres:// URL.") var database: String
    @Option(help: "The PostgreSQL password's file.") var passwordFile: String?
    @Option(help: "Sites seeded (ids prefix-000000 ...).") var sites: Int = 100_000
    @Option(help: "Site id prefix.") var prefix: String = "site"
    @Option(help: "Site histories to time.") var samples: Int = 200
    @Option(help: "The site history window, in days.") var siteWindow: Int = 90
    @Option(help: "The fleet window, in days.") var fleetWindow: Int = 90

    func run() async throws {
        let stores = try historyStores(database, passwordFile: passwordFile)
        let now = Date()
        var random = SystemRandomNumberGenerator()
        var times: [Double] = []
        for _ in 0..<samples {
            let site = try historySite(prefix, Int.random(in: 0..<sites, using: &random))
            let t0 = ContinuousClock.now
            let history = try stores.events.siteHistory(site, window: HistoryWindow(from: now.addingTimeInterval(-Double(siteWindow) * 86_400), to: now))
            times.append((ContinuousClock.now - t0).secondsValue * 1000)
            precondition(!history.spans.isEmpty, "no history for \(site)")
        }
        times.sort()
        var fleet: [Double] = []
        var ranked = 0
        for _ in 0..<3 {
            let t0 = ContinuousClock.now
            let history = try stores.events.fleetHistory(
                window: HistoryWindow(from: now.addingTimeInterval(-Double(fleetWindow) * 86_400), to: now), top: 20, buckets: 60)
            fleet.append((ContinuousClock.now - t0).secondsValue)
            ranked = history.ranking.count
        }
        print(
            #"{"siteHistoryMs": {"p50": \#(f(times[times.count / 2])), "p99": \#(f(times[min(times.count - 1, times.count * 99 / 100)])), "max": \#(f(times.last ?? 0))}, "fleetHistorySeconds": [\#(fleet.map(f).joined(separator: ", "))], "ranked": \#(ranked), "siteWindowDays": \#(siteWindow), "fleetWindowDays": \#(fleetWindow)}"#
        )
    }

    func f(_ value: Double) -> String { String(format: "%.3f", value) }
}

/// The id `history-seed` gives its `index`th site, which `history-query` asks for.
func historySite(_ prefix: String, _ index: Int) throws -> SiteID {
    try SiteID("\(prefix)-\(String(format: "%06d", index))")
}
