public import FleetAggregator
public import FleetCore
import PostgresNIO

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The audit log in PostgreSQL: one log for every replica (an entry's id is the table's
/// sequence, so ids increase across replicas).
public struct PostgresAuditStore: AuditStore {
    let pool: PostgresPool

    public init(pool: PostgresPool) {
        self.pool = pool
    }

    @discardableResult
    public func append(_ entry: AuditEntry) throws -> AuditEntry {
        var stored = entry
        stored.id = nil
        let json = try FleetJSON.text(stored)
        let principal = entry.principal
        let at = entry.at
        let id = try pool.withConnection { c in
            try c.query("INSERT INTO audit (at, principal, entry) VALUES (\(at), \(principal), \(json)::jsonb) RETURNING id").first?
                .decode(Int64.self)
        }
        stored.id = id
        return stored
    }

    public func entries(before: Int64?, limit: Int, principal: String?) throws -> [AuditEntry] {
        let before = before ?? Int64.max
        let limit = Int64(limit)
        let rows = try pool.withConnection { c in
            if let principal {
                return try c.query(
                    "SELECT id, entry::text FROM audit WHERE id < \(before) AND principal = \(principal) ORDER BY id DESC LIMIT \(limit)"
                ).map { try $0.decode((Int64, String).self) }
            }
            return try c.query("SELECT id, entry::text FROM audit WHERE id < \(before) ORDER BY id DESC LIMIT \(limit)").map {
                try $0.decode((Int64, String).self)
            }
        }
        return rows.compactMap { id, text in
            guard var entry = try? FleetJSON.decode(AuditEntry.self, from: Array(text.utf8)) else { return nil }
            entry.id = id
            return entry
        }
    }
}
