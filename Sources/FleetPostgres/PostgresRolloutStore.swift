public import FleetAggregator
public import FleetCore
import PostgresNIO

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Rollouts in PostgreSQL: the same documents and version checks as in SQLite.
public struct PostgresRolloutStore: RolloutStore {
    let pool: PostgresPool

    public init(pool: PostgresPool) {
        self.pool = pool
    }

    static func encode(_ rollout: Rollout) throws -> String { try FleetJSON.text(rollout) }
    static func decode(_ text: String) throws -> Rollout { try FleetJSON.decode(Rollout.self, from: Array(text.utf8)) }

    public func insert(_ rollout: Rollout) throws -> Rollout {
        var stored = rollout
        stored.version = 1
        let document = try Self.encode(stored)
        let (id, key, createdAt, state) = (stored.id, stored.idempotencyKey, stored.createdAt, stored.state.rawValue)
        let inserted = try pool.withConnection { c in
            try c.query(
                """
                INSERT INTO rollouts (id, idempotency_key, created_at, state, version, document)
                VALUES (\(id), \(key), \(createdAt), \(state), 1, \(document)) ON CONFLICT DO NOTHING RETURNING id
                """
            ).count
        }
        guard inserted == 1 else { throw RolloutStoreError.duplicateIdempotencyKey }
        return stored
    }

    public func update(_ rollout: Rollout) throws -> Rollout {
        var stored = rollout
        stored.version = rollout.version + 1
        let document = try Self.encode(stored)
        let (id, state, version, previous) = (stored.id, stored.state.rawValue, stored.version, rollout.version)
        let changed = try pool.withConnection { c in
            try c.query(
                "UPDATE rollouts SET state = \(state), version = \(version), document = \(document) WHERE id = \(id) AND version = \(previous) RETURNING id"
            ).count
        }
        guard changed == 1 else { throw RolloutStoreError.conflict }
        return stored
    }

    public func rollout(id: String) throws -> Rollout? {
        try pool.withConnection { c in try c.query("SELECT document FROM rollouts WHERE id = \(id)").first?.decode(String.self) }.map(Self.decode)
    }

    public func rollout(idempotencyKey: String) throws -> Rollout? {
        try pool.withConnection { c in
            try c.query("SELECT document FROM rollouts WHERE idempotency_key = \(idempotencyKey)").first?.decode(String.self)
        }.map(Self.decode)
    }

    public func list(limit: Int) throws -> [Rollout] {
        let limit = Int64(limit)
        return try pool.withConnection { c in
            try c.query("SELECT document FROM rollouts ORDER BY created_at DESC, id DESC LIMIT \(limit)").map { try $0.decode(String.self) }
        }.map(Self.decode)
    }

    public func unfinishedVersions() throws -> [(id: String, version: Int64)] {
        try pool.withConnection { c in
            try c.query("SELECT id, version FROM rollouts WHERE state IN ('running', 'paused') ORDER BY created_at, id").map {
                let (id, version) = try $0.decode((String, Int64).self)
                return (id: id, version: version)
            }
        }
    }

    public func unfinished() throws -> [Rollout] {
        try pool.withConnection { c in
            try c.query("SELECT document FROM rollouts WHERE state IN ('running', 'paused') ORDER BY created_at, id").map { try $0.decode(String.self) }
        }.map(Self.decode)
    }
}
