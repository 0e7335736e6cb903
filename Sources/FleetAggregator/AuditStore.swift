public import FleetCore
import GRDB

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Where the audit log is kept: appended to, read newest first. In the aggregator's database,
/// so that replicas share one log and it survives restarts.
public protocol AuditStore: Sendable {
    /// Stores `entry`; returns it with its id.
    @discardableResult
    func append(_ entry: AuditEntry) throws -> AuditEntry
    /// Entries older than `before` (an id; nil: the newest), newest first, at most `limit`,
    /// only those of `principal` when given.
    func entries(before: Int64?, limit: Int, principal: String?) throws -> [AuditEntry]
}

/// The audit log in the SQLite file.
public struct SQLiteAuditStore: AuditStore {
    let database: AggregatorDatabase

    public init(database: AggregatorDatabase) {
        self.database = database
    }

    static func create(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE audit (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at TEXT NOT NULL,
                    principal TEXT NOT NULL,
                    entry TEXT NOT NULL
                );
                CREATE INDEX audit_principal ON audit (principal, id);
                """)
    }

    @discardableResult
    public func append(_ entry: AuditEntry) throws -> AuditEntry {
        var stored = entry
        stored.id = nil
        let json = try FleetJSON.text(stored)
        let id = try database.writer.write { db in
            try db.execute(
                sql: "INSERT INTO audit (at, principal, entry) VALUES (?, ?, ?)", arguments: [RFC3339.format(entry.at), entry.principal, json])
            return db.lastInsertedRowID
        }
        stored.id = id
        return stored
    }

    public func entries(before: Int64?, limit: Int, principal: String?) throws -> [AuditEntry] {
        try database.writer.read { db in
            var sql = "SELECT id, entry FROM audit WHERE id < ?"
            var arguments: StatementArguments = [before ?? Int64.max]
            if let principal {
                sql += " AND principal = ?"
                arguments += [principal]
            }
            sql += " ORDER BY id DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).compactMap { row -> AuditEntry? in
                let text: String = row["entry"]
                guard var entry = try? FleetJSON.decode(AuditEntry.self, from: Array(text.utf8)) else { return nil }
                entry.id = row["id"]
                return entry
            }
        }
    }
}
