import ArgumentParser
import Dispatch
import FleetAggregator
import FleetPostgres
import FleetQueue
import FleetCore
import Foundation
import Logging

/// Submission throughput into the queue (SQLite, or PostgreSQL) and paging through it.
struct QueueBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Submits N operations into a new queue (SQLite, or an empty PostgreSQL database), then lists the queued ones page by page; prints one JSON line.")

    @Option(help: "Database file (created), or a postgres:// URL of an empty database.") var database: String
    @Option(help: "The PostgreSQL password's file.") var passwordFile: String?
    @Option(help: "Threads submitting at once (as concurrent API clients).") var concurrency: Int = 1
    @Option(help: "Operations to submit.") var operations: Int = 100_000
    @Option(help: "Sites they are spread over.") var sites: Int = 1_000
    @Option(help: "Page size for the listing.") var pageSize: Int = 100

    func run() async throws {
        let store: any OperationStore =
            PostgresLocation.isURL(database)
            ? try PostgresStores.open(
                url: database, passwordFile: passwordFile, environment: [:], poolSize: max(4, concurrency), logger: Logger(label: "bench")
            ).stores.operations
            : SQLiteOperationStore(database: try AggregatorDatabase(path: database))
        let queue = DeferredQueue(
            store: store, executors: [.extensionInstall: ExecutorTemplate(argv: ["az", "k8s-extension", "create", "--name", "{params.name}"])])
        let semi = SiteSituation(mode: .semiConnected, stable: false, deadline: Date().addingTimeInterval(86_400), capabilities: [:])
        let (operations, sites, threads) = (operations, sites, max(1, concurrency))
        let failures = NSLock()
        nonisolated(unsafe) var firstError: (any Error)?
        let start = ContinuousClock.now
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for i in stride(from: thread, to: operations, by: threads) {
                do {
                    _ = try queue.submit(
                        SubmissionRequest(
                            site: "site-\(i % sites)", kind: "extension.install", params: ["name": "ext-\(i)"], createdBy: "bench",
                            idempotencyKey: "bench-\(i)"),
                        situation: semi, now: Date())
                } catch {
                    failures.withLock { if firstError == nil { firstError = error } }
                    return
                }
            }
        }
        if let firstError { throw firstError }
        let submitSeconds = (ContinuousClock.now - start).secondsValue

        var pages: [Double] = []
        var cursor: Int64?
        var listed = 0
        repeat {
            let t0 = ContinuousClock.now
            let page = try store.list(OperationFilter(states: [.queued]), after: cursor, limit: pageSize)
            pages.append((ContinuousClock.now - t0).secondsValue)
            listed += page.operations.count
            cursor = page.nextCursor
        } while cursor != nil
        let sorted = pages.sorted()
        func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)] }
        print(
            #"{"operations":\#(operations),"submitSeconds":\#(submitSeconds),"submitPerSecond":\#(Double(operations) / submitSeconds),"#
                + #""listed":\#(listed),"pages":\#(pages.count),"pageSize":\#(pageSize),"pageP50":\#(percentile(0.5)),"#
                + #""pageP99":\#(percentile(0.99)),"pageMax":\#(sorted.last ?? 0)}"#)
        if listed != operations { throw ExitCode(1) }
    }
}
