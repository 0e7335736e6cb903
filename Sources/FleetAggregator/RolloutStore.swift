public import FleetCore
import GRDB

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

public enum RolloutStoreError: Error, Sendable, Hashable {
    /// Another rollout has this idempotency key.
    case duplicateIdempotencyKey
    /// The stored rollout changed since it was read (another replica, an operator): read it again.
    case conflict
}

/// Where rollouts are kept: one document per rollout, written whole with a version check
/// (replicas and operators may change one at the same time; the later writer reads again).
public protocol RolloutStore: Sendable {
    /// Stores a new rollout (version 1).
    func insert(_ rollout: Rollout) throws -> Rollout
    /// Writes `rollout` if the stored one still has its version; returns it with the next.
    func update(_ rollout: Rollout) throws -> Rollout
    func rollout(id: String) throws -> Rollout?
    func rollout(idempotencyKey: String) throws -> Rollout?
    /// Newest first.
    func list(limit: Int) throws -> [Rollout]
    /// Those still running or paused.
    func unfinished() throws -> [Rollout]
    /// The ids and versions of those still running or paused (a look that reads no document).
    func unfinishedVersions() throws -> [(id: String, version: Int64)]
}

/// Rollouts in the SQLite file.
public struct SQLiteRolloutStore: RolloutStore {
    let database: AggregatorDatabase

    public init(database: AggregatorDatabase) {
        self.database = database
    }

    static func create(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE rollouts (
                    id TEXT PRIMARY KEY,
                    idempotencyKey TEXT UNIQUE,
                    createdAt TEXT NOT NULL,
                    state TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    document TEXT NOT NULL
                );
                CREATE INDEX rollouts_state ON rollouts (state);
                """)
    }

    static func encode(_ rollout: Rollout) throws -> String {
        try FleetJSON.text(rollout)
    }

    static func decode(_ text: String) throws -> Rollout {
        try FleetJSON.decode(Rollout.self, from: Array(text.utf8))
    }

    public func insert(_ rollout: Rollout) throws -> Rollout {
        var stored = rollout
        stored.version = 1
        let document = try Self.encode(stored)
        do {
            try database.writer.write { db in
                try db.execute(
                    sql: "INSERT INTO rollouts (id, idempotencyKey, createdAt, state, version, document) VALUES (?, ?, ?, ?, 1, ?)",
                    arguments: [stored.id, stored.idempotencyKey, RFC3339.format(stored.createdAt), stored.state.rawValue, document])
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw RolloutStoreError.duplicateIdempotencyKey
        }
        return stored
    }

    public func update(_ rollout: Rollout) throws -> Rollout {
        var stored = rollout
        stored.version = rollout.version + 1
        let document = try Self.encode(stored)
        let changed = try database.writer.write { db in
            try db.execute(
                sql: "UPDATE rollouts SET state = ?, version = ?, document = ? WHERE id = ? AND version = ?",
                arguments: [stored.state.rawValue, stored.version, document, stored.id, rollout.version])
            return db.changesCount
        }
        guard changed == 1 else { throw RolloutStoreError.conflict }
        return stored
    }

    public func rollout(id: String) throws -> Rollout? {
        try database.writer.read { db in try String.fetchOne(db, sql: "SELECT document FROM rollouts WHERE id = ?", arguments: [id]) }.map(Self.decode)
    }

    public func rollout(idempotencyKey: String) throws -> Rollout? {
        try database.writer.read { db in
            try String.fetchOne(db, sql: "SELECT document FROM rollouts WHERE idempotencyKey = ?", arguments: [idempotencyKey])
        }.map(Self.decode)
    }

    public func list(limit: Int) throws -> [Rollout] {
        try database.writer.read { db in
            try String.fetchAll(db, sql: "SELECT document FROM rollouts ORDER BY createdAt DESC, id DESC LIMIT ?", arguments: [limit])
        }.map(Self.decode)
    }

    public func unfinishedVersions() throws -> [(id: String, version: Int64)] {
        try database.writer.read { db in
            try Row.fetchAll(db, sql: "SELECT id, version FROM rollouts WHERE state IN ('running', 'paused') ORDER BY createdAt, id").map {
                (id: $0["id"] as String, version: $0["version"] as Int64)
            }
        }
    }

    public func unfinished() throws -> [Rollout] {
        try database.writer.read { db in
            try String.fetchAll(db, sql: "SELECT document FROM rollouts WHERE state IN ('running', 'paused') ORDER BY createdAt, id")
        }.map(Self.decode)
    }
}
