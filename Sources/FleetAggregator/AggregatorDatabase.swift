public import FleetCore
public import FleetQueue
public import GRDB

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The aggregator's SQLite database: one file, WAL, schema by append-only migrations.
/// Site records live here; the deferred-operation queue (`SQLiteOperationStore`) joins them in
/// the same file, with its migrations registered here in the order they landed.
public final class AggregatorDatabase: Sendable {
    public let writer: DatabasePool
    public let path: String

    /// Opens (creating if needed) and migrates the database at `path`.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.label = "edgefleet"
        self.path = path
        writer = try DatabasePool(path: path, configuration: configuration)  // WAL
        try Self.migrator.migrate(writer)
    }

    /// Never edit a migration that has landed; add a new one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-sites") { db in
            try db.create(table: "sites") { t in
                t.primaryKey("site", .text)
                t.column("record", .text).notNull()  // SiteRecord as JSON
                t.column("updatedAt", .text).notNull()
            }
        }
        // The queue's tables are the queue's (FleetQueue); the order here is the order they landed in.
        migrator.registerMigration("v2-operations", migrate: SQLiteOperationStore.createOperations)
        migrator.registerMigration("v3-runs", migrate: SQLiteOperationStore.createRuns)
        migrator.registerMigration("v4-forgotten-sites") { db in
            // Sites an operator forgot: their retained presence must not make them again.
            try db.create(table: "forgotten_sites") { t in
                t.primaryKey("site", .text)
                t.column("forgottenAt", .text).notNull()
            }
        }
        migrator.registerMigration("v5-audit", migrate: SQLiteAuditStore.create)
        migrator.registerMigration("v6-rollouts", migrate: SQLiteRolloutStore.create)
        migrator.registerMigration("v7-events", migrate: SQLiteEventStore.create)
        return migrator
    }
}

/// Where the aggregator keeps its state: site records and the deferred-operation queue, in one
/// database (SQLite, the embedded default; or PostgreSQL, shared by replicas: `FleetPostgres`).
public struct AggregatorStores: Sendable {
    public var sites: any SiteStore
    public var operations: any OperationStore
    /// Every change asked of the API, by whom.
    public var audit: any AuditStore
    /// Rollouts (waves of one operation kind over the sites a selector matches).
    public var rollouts: any RolloutStore
    /// The fleet's published events and the mode spans its history is worked out from.
    public var events: any EventStore
    /// For logs: the file's path, or the URL without secrets.
    public var description: String

    public init(
        sites: any SiteStore, operations: any OperationStore, audit: any AuditStore, rollouts: any RolloutStore, events: any EventStore,
        description: String
    ) {
        self.events = events
        self.sites = sites
        self.operations = operations
        self.audit = audit
        self.rollouts = rollouts
        self.description = description
    }

    /// Both in the SQLite file at `path` (created and migrated if needed).
    public static func sqlite(path: String) throws -> AggregatorStores {
        let database = try AggregatorDatabase(path: path)
        return AggregatorStores(
            sites: SQLiteSiteStore(database: database), operations: SQLiteOperationStore(database: database), audit: SQLiteAuditStore(database: database),
            rollouts: SQLiteRolloutStore(database: database), events: SQLiteEventStore(database: database),
            description: path)
    }
}

/// Where site records and the forgotten sites' tombstones live. Narrow on purpose: the
/// aggregator only uses this, so a second backend (PostgreSQL) can implement it.
public protocol SiteStore: Sendable {
    /// Every stored record. A record that no longer decodes is skipped and returned as a
    /// problem (never a crash, never a silently empty fleet).
    func loadAll() throws -> (records: [SiteRecord], problems: [String])
    /// Writes records (in transactions of a bounded size); a forgotten site's record is not written back.
    func save(_ records: [SiteRecord], at now: Date) throws
    /// Removes a site's record and remembers that it was forgotten, in one transaction.
    func forget(_ site: SiteID, at now: Date) throws
    /// Drops the tombstones of forgotten sites that came back.
    func revive(_ sites: Set<SiteID>) throws
    /// Every forgotten site.
    func forgotten() throws -> Set<SiteID>
    func count() throws -> Int
}

/// Site records in SQLite, written behind the in-memory state in batches.
public struct SQLiteSiteStore: SiteStore {
    let database: AggregatorDatabase

    public init(database: AggregatorDatabase) {
        self.database = database
    }

    /// Every stored record. A record that no longer decodes is skipped and returned as a
    /// problem (never a crash, never a silently empty fleet).
    public func loadAll() throws -> (records: [SiteRecord], problems: [String]) {
        let decoder = FleetJSON.decoder()
        return try database.writer.read { db in
            var records: [SiteRecord] = []
            var problems: [String] = []
            let rows = try Row.fetchCursor(db, sql: "SELECT site, record FROM sites")
            while let row = try rows.next() {
                let site: String = row["site"]
                let text: String = row["record"]
                do {
                    records.append(try decoder.decode(SiteRecord.self, from: Data(text.utf8)))
                } catch {
                    problems.append("site \(site): stored record does not decode: \(error)")
                }
            }
            return (records, problems)
        }
    }

    /// Writes records, in transactions of at most `batch` records (encoding a whole
    /// 100,000-site fleet at once would hold all of its JSON in memory).
    /// In transactions of 250 records: a bigger one holds the writer (and every operation's
    /// claim waiting for it) for tens of milliseconds.
    public func save(_ records: [SiteRecord], at now: Date) throws { try save(records, at: now, batch: 250) }

    public func save(_ records: [SiteRecord], at now: Date, batch: Int) throws {
        var start = records.startIndex
        while start < records.endIndex {
            let end = min(start + batch, records.endIndex)
            try saveBatch(records[start..<end], at: now)
            start = end
        }
    }

    private func saveBatch(_ records: ArraySlice<SiteRecord>, at now: Date) throws {
        var rows: [(String, String)] = []
        rows.reserveCapacity(records.count)
        for record in records {
            rows.append((record.site.rawValue, try FleetJSON.text(record)))
        }
        let stamp = RFC3339.format(now)
        try database.writer.write { db in
            let statement = try db.cachedStatement(
                sql: """
                    INSERT INTO sites (site, record, updatedAt)
                    SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM forgotten_sites WHERE site = ?)
                    ON CONFLICT(site) DO UPDATE SET record = excluded.record, updatedAt = excluded.updatedAt
                    """)
            // A record taken for writing just before its site was forgotten is not written back.
            for (site, json) in rows {
                try statement.execute(arguments: [site, json, stamp, site])
            }
        }
    }

    /// Removes a site's record and remembers that it was forgotten, in one transaction.
    public func forget(_ site: SiteID, at now: Date) throws {
        try database.writer.write { db in
            try db.execute(sql: "DELETE FROM sites WHERE site = ?", arguments: [site.rawValue])
            try db.execute(
                sql: "INSERT OR REPLACE INTO forgotten_sites (site, forgottenAt) VALUES (?, ?)", arguments: [site.rawValue, RFC3339.format(now)])
        }
    }

    /// Drops the tombstones of forgotten sites that came back.
    public func revive(_ sites: Set<SiteID>) throws {
        guard !sites.isEmpty else { return }
        try database.writer.write { db in
            for site in sites { try db.execute(sql: "DELETE FROM forgotten_sites WHERE site = ?", arguments: [site.rawValue]) }
        }
    }

    /// Every forgotten site.
    public func forgotten() throws -> Set<SiteID> {
        try database.writer.read { db in
            Set(try String.fetchAll(db, sql: "SELECT site FROM forgotten_sites").compactMap { try? SiteID($0) })
        }
    }

    public func count() throws -> Int {
        try database.writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sites") ?? 0 }
    }
}

extension SQLiteOperationStore {
    /// The queue's store in the aggregator's database file.
    public init(database: AggregatorDatabase) { self.init(writer: database.writer) }
}
