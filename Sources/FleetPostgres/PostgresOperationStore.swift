public import FleetCore
public import FleetQueue
import PostgresNIO

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The deferred-operation queue in PostgreSQL: the same rows and rules as the SQLite store (one
/// row per operation, the whole operation as a JSON document, every method one transaction),
/// shared by every aggregator replica on the database. Conditional writes (the claim, an
/// attempt's end) compare `history_count`, a column, instead of reading the document.
public struct PostgresOperationStore: OperationStore {
    let pool: PostgresPool
    /// The lease a dispatch write must hold (the claim, an attempt's end): holder and epoch,
    /// checked in the same statement against `leader_lease` (row locked for share, so a change of
    /// leader waits for the write, and a deposed leader's late write is refused). Nil: unfenced
    /// (a single aggregator, tests of the store alone).
    let fence: (@Sendable () -> LeaseGrant?)?

    /// Operations in `pool`'s database, once `PostgresSchema.migrate` has run there.
    public init(pool: PostgresPool, fence: (@Sendable () -> LeaseGrant?)? = nil) {
        self.pool = pool
        self.fence = fence
    }

    /// The fence's SQL condition and its holder and epoch (always true when unfenced); throws
    /// when fenced and this replica does not lead.
    private func leaseHeld(_ id: String) throws -> LeaseGrant? {
        guard let fence else { return nil }
        guard let grant = fence() else { throw OperationStoreError.notLeader(id: id, epoch: nil) }
        return grant
    }

    private static func json(_ operation: DeferredOperation) throws -> String {
        try FleetJSON.text(operation)
    }

    static func decodeOne(_ document: String) throws -> DeferredOperation {
        try FleetJSON.decoder().decode(DeferredOperation.self, from: Data(document.utf8))
    }

    public func insert(_ operation: DeferredOperation) throws -> (operation: DeferredOperation, superseded: [String]) {
        // Most kinds supersede nothing: one statement, one round trip. The sequence is drawn in
        // it and written into the document on the server; the unique index refuses a key used
        // before (answered as the duplicate it is, below).
        if operation.coalescingTarget == nil {
            do {
                let document = try Self.json(operation)
                let rows = try pool.withConnection { c in
                    try c.query(
                        """
                        INSERT INTO operations (sequence, id, site, kind, state, idempotency_key, history_count, document)
                        SELECT n, \(operation.id), \(operation.site.rawValue), \(operation.kind.rawValue), \(operation.state.rawValue),
                               \(operation.idempotencyKey), \(operation.history.count), jsonb_set(\(document)::jsonb, '{sequence}', to_jsonb(n))::text
                        FROM (SELECT nextval(pg_get_serial_sequence('operations', 'sequence')) AS n) AS drawn
                        RETURNING sequence
                        """)
                }
                guard let sequence = try rows.first?.decode(Int64.self) else { throw PostgresStoreError("INSERT returned no sequence") }
                var stored = operation
                stored.sequence = sequence
                return (stored, [])
            } catch let error as PostgresStoreError where error.isUniqueViolation {
                if let key = operation.idempotencyKey { throw OperationStoreError.duplicateIdempotencyKey(key) }
                throw error
            }
        }
        do {
            return try pool.transaction { c in
                if let key = operation.idempotencyKey, try !c.query("SELECT 1 FROM operations WHERE idempotency_key = \(key)").isEmpty {
                    throw OperationStoreError.duplicateIdempotencyKey(key)
                }
                var stored = operation
                var superseded: [String] = []
                if let target = operation.coalescingTarget {
                    let older = try c.query(
                        """
                        SELECT document FROM operations WHERE site = \(operation.site.rawValue) AND kind = \(operation.kind.rawValue)
                        AND state IN ('queued', 'blocked') ORDER BY sequence FOR UPDATE
                        """
                    ).map { try Self.decodeOne(try $0.decode(String.self)) }
                    for var old in older where old.coalescingTarget == target {
                        old.history.append(
                            OperationHistoryEntry(at: operation.createdAt, from: old.state, to: .superseded, note: "superseded by \(operation.id)"))
                        old.state = .superseded
                        try c.query(
                            """
                            UPDATE operations SET state = 'superseded', document = \(try Self.json(old)), history_count = \(old.history.count)
                            WHERE id = \(old.id)
                            """)
                        superseded.append(old.id)
                    }
                    if !superseded.isEmpty {
                        stored.history.append(
                            OperationHistoryEntry(
                                at: operation.createdAt, from: operation.state, to: operation.state,
                                note: "supersedes \(superseded.joined(separator: ", "))"))
                    }
                }
                let rows = try c.query(
                    """
                    INSERT INTO operations (id, site, kind, state, idempotency_key, history_count, document)
                    VALUES (\(stored.id), \(stored.site.rawValue), \(stored.kind.rawValue), \(stored.state.rawValue),
                            \(stored.idempotencyKey), \(stored.history.count), '{}')
                    RETURNING sequence
                    """)
                guard let sequence = try rows.first?.decode(Int64.self) else { throw PostgresStoreError("INSERT returned no sequence") }
                stored.sequence = sequence
                try c.query("UPDATE operations SET document = \(try Self.json(stored)) WHERE sequence = \(sequence)")
                return (stored, superseded)
            }
        } catch let error as PostgresStoreError where error.isUniqueViolation {
            // Two replicas took the same key at once: the other one's insert stands.
            if let key = operation.idempotencyKey { throw OperationStoreError.duplicateIdempotencyKey(key) }
            throw error
        }
    }

    public func operation(id: String) throws -> DeferredOperation? {
        try pool.withConnection { c in
            try c.query("SELECT document FROM operations WHERE id = \(id)").first.map { try Self.decodeOne(try $0.decode(String.self)) }
        }
    }

    public func states(ids: [String]) throws -> [String: OperationState] {
        guard !ids.isEmpty else { return [:] }
        return try pool.withConnection { c in
            var states: [String: OperationState] = [:]
            for row in try c.query("SELECT id, state FROM operations WHERE id = ANY(\(ids))") {
                let (id, state) = try row.decode((String, String).self)
                if let value = OperationState(rawValue: state) { states[id] = value }
            }
            return states
        }
    }

    public func operation(idempotencyKey: String) throws -> DeferredOperation? {
        try pool.withConnection { c in
            try c.query("SELECT document FROM operations WHERE idempotency_key = \(idempotencyKey)").first.map {
                try Self.decodeOne(try $0.decode(String.self))
            }
        }
    }

    @discardableResult
    public func transition(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        try transition(id: id, expected: expected, to: to, at: at, note: note, fenced: false, update: update)
    }

    /// The dispatcher's transitions carry the lease, checked in the same transaction (the lease
    /// row locked for share: a change of leader waits for it).
    @discardableResult
    public func transitionAsLeader(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        try transition(id: id, expected: expected, to: to, at: at, note: note, fenced: true, update: update)
    }

    private func transition(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String, fenced: Bool,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        let grant = fenced ? try leaseHeld(id) : nil
        return try pool.transaction { c in
            if let grant {
                let held = try c.query(
                    """
                    SELECT 1 FROM leader_lease WHERE id = 1 AND holder = \(grant.holder) AND epoch = \(grant.epoch) AND expires_at > now() FOR SHARE
                    """)
                guard !held.isEmpty else { throw OperationStoreError.notLeader(id: id, epoch: grant.epoch) }
            }
            guard let row = try c.query("SELECT document FROM operations WHERE id = \(id) FOR UPDATE").first else {
                throw OperationStoreError.notFound(id)
            }
            var operation = try Self.decodeOne(try row.decode(String.self))
            guard expected.contains(operation.state), operation.state.canMove(to: to) else {
                throw OperationStoreError.conflict(id: id, expected: expected, found: operation.state)
            }
            let from = operation.state
            update(&operation)
            operation.state = to
            operation.history.append(OperationHistoryEntry(at: at, from: from, to: to, note: note))
            try c.query(
                """
                UPDATE operations SET state = \(to.rawValue), document = \(try Self.json(operation)), history_count = \(operation.history.count)
                WHERE id = \(id)
                """)
            if from == .dispatching, to != .dispatching {
                try c.query("DELETE FROM runs WHERE operation_id = \(id)")
            }
            return operation
        }
    }

    public func claim(_ operation: DeferredOperation, at now: Date, note: String) throws -> DeferredOperation {
        guard operation.state == .queued else {
            throw OperationStoreError.conflict(id: operation.id, expected: [.queued], found: operation.state)
        }
        var claimed = operation
        claimed.attempts += 1
        claimed.state = .dispatching
        claimed.history.append(OperationHistoryEntry(at: now, from: .queued, to: .dispatching, note: note))
        let document = try Self.json(claimed)
        let grant = try leaseHeld(operation.id)
        let changed = try pool.withConnection { c in
            try c.changes(
                """
                UPDATE operations SET state = 'dispatching', document = \(document), history_count = \(claimed.history.count)
                WHERE id = \(operation.id) AND state = 'queued' AND history_count = \(operation.history.count)
                AND (\(grant == nil) OR EXISTS (
                    SELECT 1 FROM leader_lease WHERE id = 1 AND holder = \(grant?.holder ?? "") AND epoch = \(grant?.epoch ?? -1)
                    AND expires_at > now() FOR SHARE))
                """)
        }
        guard changed == 1 else {
            if let grant, try !holds(grant) { throw OperationStoreError.notLeader(id: operation.id, epoch: grant.epoch) }
            guard let found = try self.operation(id: operation.id) else { throw OperationStoreError.notFound(operation.id) }
            throw OperationStoreError.conflict(id: operation.id, expected: [.queued], found: found.state)
        }
        return claimed
    }

    @discardableResult
    public func complete(
        _ operation: DeferredOperation, to: OperationState, at now: Date, note: String, update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        guard operation.state == .dispatching, operation.state.canMove(to: to) else {
            return try transition(id: operation.id, expected: [.dispatching], to: to, at: now, note: note, update: update)
        }
        var completed = operation
        update(&completed)
        completed.state = to
        completed.history.append(OperationHistoryEntry(at: now, from: .dispatching, to: to, note: note))
        let document = try Self.json(completed)
        let grant = try leaseHeld(operation.id)
        let changed = try pool.transaction { c -> Int in
            let n = try c.changes(
                """
                UPDATE operations SET state = \(to.rawValue), document = \(document), history_count = \(completed.history.count)
                WHERE id = \(operation.id) AND state = 'dispatching' AND history_count = \(operation.history.count)
                AND (\(grant == nil) OR EXISTS (
                    SELECT 1 FROM leader_lease WHERE id = 1 AND holder = \(grant?.holder ?? "") AND epoch = \(grant?.epoch ?? -1)
                    AND expires_at > now() FOR SHARE))
                """)
            if n == 1 { try c.query("DELETE FROM runs WHERE operation_id = \(operation.id)") }
            return n
        }
        guard changed == 1 else {
            // A deposed leader's outcome is not written: the next leader finds the operation
            // still dispatching and runs it again (its history says why).
            if let grant, try !holds(grant) { throw OperationStoreError.notLeader(id: operation.id, epoch: grant.epoch) }
            return try transition(id: operation.id, expected: [.dispatching], to: to, at: now, note: note, update: update)
        }
        return completed
    }

    /// Whether the lease is still `grant`'s (after a fenced write changed nothing).
    private func holds(_ grant: LeaseGrant) throws -> Bool {
        try pool.withConnection { c in
            try !c.query(
                "SELECT 1 FROM leader_lease WHERE id = 1 AND holder = \(grant.holder) AND epoch = \(grant.epoch) AND expires_at > now()"
            ).isEmpty
        }
    }

    public func list(_ filter: OperationFilter, after cursor: Int64?, limit: Int) throws -> OperationPage {
        try page(filter, cursor: cursor, limit: limit, newestFirst: false)
    }

    /// A COUNT on the indexed columns: no document is read.
    public func count(_ filter: OperationFilter, limit: Int) throws -> Int {
        let (whereClause, binds) = try Self.whereClause(filter)
        let sql = "SELECT COUNT(*) FROM (SELECT 1 FROM operations \(whereClause) LIMIT \(max(1, limit))) AS limited"
        return try pool.withConnection { c in
            Int(try c.query(PostgresQuery(unsafeSQL: sql, binds: binds)).first?.decode(Int64.self) ?? 0)
        }
    }

    /// The WHERE clause of `filter` (and of a listing's cursor) on the indexed columns, with its binds.
    private static func whereClause(_ filter: OperationFilter, cursor: Int64? = nil, newestFirst: Bool = false) throws -> (String, PostgresBindings) {
        var clauses: [String] = []
        var binds = PostgresBindings()
        func parameter(_ value: some PostgresEncodable & Sendable) throws -> String {
            try binds.append(value)
            return "$\(binds.count)"
        }
        if let site = filter.site { clauses.append("site = \(try parameter(site.rawValue))") }
        if let kind = filter.kind { clauses.append("kind = \(try parameter(kind.rawValue))") }
        if let sites = filter.sites { clauses.append("site = ANY(\(try parameter(sites.map(\.rawValue).sorted())))") }
        if let states = filter.states { clauses.append("state = ANY(\(try parameter(states.map(\.rawValue).sorted())))") }
        if let cursor { clauses.append(newestFirst ? "sequence < \(try parameter(cursor))" : "sequence > \(try parameter(cursor))") }
        return (clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND "), binds)
    }

    public func listNewestFirst(_ filter: OperationFilter, before cursor: Int64?, limit: Int) throws -> OperationPage {
        try page(filter, cursor: cursor, limit: limit, newestFirst: true)
    }

    private func page(_ filter: OperationFilter, cursor: Int64?, limit: Int, newestFirst: Bool) throws -> OperationPage {
        let (whereClause, binds) = try Self.whereClause(filter, cursor: cursor, newestFirst: newestFirst)
        let limit = max(1, limit)
        let sql = "SELECT document FROM operations \(whereClause) ORDER BY sequence \(newestFirst ? "DESC" : "ASC") LIMIT \(limit + 1)"
        let documents = try pool.withConnection { c in
            try c.query(PostgresQuery(unsafeSQL: sql, binds: binds)).map { try $0.decode(String.self) }
        }
        let operations = try documents.prefix(limit).map(Self.decodeOne)
        return OperationPage(operations: operations, nextCursor: documents.count > limit ? operations.last?.sequence : nil)
    }

    public func counts() throws -> [SiteID: [OperationState: Int]] {
        try pool.withConnection { c in
            var result: [SiteID: [OperationState: Int]] = [:]
            for row in try c.query("SELECT site, state, COUNT(*) FROM operations GROUP BY site, state") {
                let (siteText, stateText, n) = try row.decode((String, String, Int64).self)
                guard let site = try? SiteID(siteText), let state = OperationState(rawValue: stateText) else { continue }
                result[site, default: [:]][state] = Int(n)
            }
            return result
        }
    }

    /// Replicas share the database: any of them may have written.
    public func changedElsewhere() throws -> Bool { true }

    public func counts(sites: Set<SiteID>) throws -> [SiteID: [OperationState: Int]] {
        guard !sites.isEmpty else { return [:] }
        let names = sites.map(\.rawValue)
        return try pool.withConnection { c in
            var result: [SiteID: [OperationState: Int]] = [:]
            for row in try c.query("SELECT site, state, COUNT(*) FROM operations WHERE site = ANY(\(names)) GROUP BY site, state") {
                let (siteText, stateText, n) = try row.decode((String, String, Int64).self)
                guard let site = try? SiteID(siteText), let state = OperationState(rawValue: stateText) else { continue }
                result[site, default: [:]][state] = Int(n)
            }
            return result
        }
    }

    public func holdClaim(id: String, for duration: Duration) throws {
        let milliseconds = Int64(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        try pool.withConnection { c in
            try c.query(
                """
                UPDATE operations SET claim_expires = now() + \(milliseconds) * interval '1 millisecond'
                WHERE id = \(id) AND state = 'dispatching'
                """)
        }
    }

    public func releaseClaim(id: String) throws {
        try pool.withConnection { c in
            try c.query("UPDATE operations SET claim_expires = now() WHERE id = \(id) AND state = 'dispatching'")
        }
    }

    public func claimLapsed(id: String) throws -> Bool {
        try pool.withConnection { c in
            try c.query("SELECT claim_expires IS NULL OR claim_expires <= now() FROM operations WHERE id = \(id)").first?.decode(Bool.self) ?? true
        }
    }

    public func enqueueEvent(_ event: FleetEvent) throws {
        let text = try FleetJSON.text(event)
        try pool.withConnection { c in
            try c.query("INSERT INTO event_outbox (event) VALUES (\(text))")
        }
    }

    /// Taken in one statement (deleted as they are read): a leader that dies right after loses
    /// them (events are notices; the operations themselves are in the database).
    public func takeQueuedEvents(limit: Int) throws -> [FleetEvent] {
        let rows = try pool.withConnection { c in
            try c.query(
                """
                DELETE FROM event_outbox WHERE sequence IN (SELECT sequence FROM event_outbox ORDER BY sequence LIMIT \(Int64(limit)))
                RETURNING sequence, event
                """
            ).map { try $0.decode((Int64, String).self) }
        }
        return try rows.sorted { $0.0 < $1.0 }.map { try FleetJSON.decoder().decode(FleetEvent.self, from: Data($0.1.utf8)) }
    }

    public func recordRun(_ run: ExecutorRun) throws {
        try pool.withConnection { c in
            try c.query(
                """
                INSERT INTO runs (operation_id, process_group, start_ticks, boot_id, host, started_at)
                VALUES (\(run.operationID), \(run.processGroup), \(Int64(clamping: run.startTicks)), \(run.bootID), \(run.host),
                        \(run.startedAt.timeIntervalSince1970))
                ON CONFLICT (operation_id) DO UPDATE SET process_group = excluded.process_group, start_ticks = excluded.start_ticks,
                    boot_id = excluded.boot_id, host = excluded.host, started_at = excluded.started_at
                """)
        }
    }

    public func forgetRun(operationID: String) throws {
        try pool.withConnection { c in
            try c.query("DELETE FROM runs WHERE operation_id = \(operationID)")
        }
    }

    public func runs() throws -> [ExecutorRun] {
        try pool.withConnection { c in
            try c.query("SELECT operation_id, process_group, start_ticks, boot_id, host, started_at FROM runs").map { row in
                let (id, group, ticks, boot, host, started) = try row.decode((String, Int32, Int64, String, String, Double).self)
                return ExecutorRun(
                    operationID: id, processGroup: group, startTicks: UInt64(max(0, ticks)), bootID: boot, host: host,
                    startedAt: Date(timeIntervalSince1970: started))
            }
        }
    }
}
