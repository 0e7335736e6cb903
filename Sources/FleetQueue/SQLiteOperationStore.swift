public import FleetCore
public import GRDB
import Synchronization

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

private final class DataVersion: Sendable {
    let value = Mutex<Int64?>(nil)
}

/// Operations in the aggregator's SQLite file: one row per operation with the columns the
/// queue filters on, and the whole operation (params, times, attempts, history) as a JSON
/// document. Each call is one transaction.
public struct SQLiteOperationStore: OperationStore {
    /// Its database (WAL), and the one writer of it.
    let writer: any DatabaseWriter
    /// The writer connection's `PRAGMA data_version` at the last `changedElsewhere()`.
    private let dataVersion = DataVersion()

    /// Operations in the database `writer` writes, once `createOperations` and `createRuns`
    /// have run there (the owner of the file registers them in its migrator).
    public init(writer: any DatabaseWriter) {
        self.writer = writer
    }

    /// SQLite's `PRAGMA data_version` on the writer connection changes exactly when another
    /// connection (another process: this one writes only through `writer`) committed.
    public func changedElsewhere() throws -> Bool {
        let version = try writer.writeWithoutTransaction { db in try Int64.fetchOne(db, sql: "PRAGMA data_version") ?? 0 }
        return dataVersion.value.withLock { seen in
            defer { seen = version }
            return seen != version
        }
    }

    /// Migration "v2-operations": one row per operation. Never edit a migration that has landed.
    public static func createOperations(_ db: Database) throws {
        try db.create(table: "operations") { t in
            t.autoIncrementedPrimaryKey("sequence")  // submission order, and the listing cursor
            t.column("id", .text).notNull().unique()
            t.column("site", .text).notNull()
            t.column("kind", .text).notNull()
            t.column("state", .text).notNull()
            t.column("idempotencyKey", .text).unique()
            t.column("document", .text).notNull()  // DeferredOperation as JSON, history included
        }
        try db.create(index: "operations_by_site", on: "operations", columns: ["site", "state", "sequence"])
        try db.create(index: "operations_by_state", on: "operations", columns: ["state", "sequence"])
    }

    /// Migration "v3-runs": one row per executor started and not yet recorded as ended: how to
    /// find it again after the aggregator was killed (docs/design-notes.md, "An executor
    /// outlives its aggregator").
    public static func createRuns(_ db: Database) throws {
        try db.create(table: "runs") { t in
            t.primaryKey("operationID", .text)
            t.column("processGroup", .integer).notNull()
            t.column("startTicks", .integer).notNull()  // /proc/PID/stat field 22, clock ticks since boot
            t.column("bootID", .text).notNull()
            t.column("host", .text).notNull()
            t.column("startedAt", .double).notNull()
        }
    }

    public func insert(_ operation: DeferredOperation) throws -> (operation: DeferredOperation, superseded: [String]) {
        func json(_ operation: DeferredOperation) throws -> String { try FleetJSON.text(operation) }
        return try writer.write { db in
            if let key = operation.idempotencyKey,
                try Int.fetchOne(db, sql: "SELECT 1 FROM operations WHERE idempotencyKey = ?", arguments: [key]) != nil
            {
                throw OperationStoreError.duplicateIdempotencyKey(key)
            }
            var stored = operation
            var superseded: [String] = []
            if let target = operation.coalescingTarget {
                let older = try String.fetchAll(
                    db, sql: "SELECT document FROM operations WHERE site = ? AND kind = ? AND state IN ('queued', 'blocked') ORDER BY sequence",
                    arguments: [operation.site.rawValue, operation.kind.rawValue])
                for document in older {
                    var old = try Self.decodeOne(document)
                    guard old.coalescingTarget == target else { continue }
                    old.history.append(
                        OperationHistoryEntry(at: operation.createdAt, from: old.state, to: .superseded, note: "superseded by \(operation.id)"))
                    old.state = .superseded
                    try db.execute(
                        sql: "UPDATE operations SET state = 'superseded', document = ? WHERE id = ?", arguments: [try json(old), old.id])
                    superseded.append(old.id)
                }
                if !superseded.isEmpty {
                    stored.history.append(
                        OperationHistoryEntry(
                            at: operation.createdAt, from: operation.state, to: operation.state,
                            note: "supersedes \(superseded.joined(separator: ", "))"))
                }
            }
            try db.execute(
                sql: "INSERT INTO operations (id, site, kind, state, idempotencyKey, document) VALUES (?, ?, ?, ?, ?, '{}')",
                arguments: [stored.id, stored.site.rawValue, stored.kind.rawValue, stored.state.rawValue, stored.idempotencyKey])
            stored.sequence = db.lastInsertedRowID
            try db.execute(sql: "UPDATE operations SET document = ? WHERE sequence = ?", arguments: [try json(stored), stored.sequence])
            return (stored, superseded)
        }
    }

    public func operation(id: String) throws -> DeferredOperation? {
        try writer.read { db in
            try Self.decode(String.fetchOne(db, sql: "SELECT document FROM operations WHERE id = ?", arguments: [id]))
        }
    }

    public func states(ids: [String]) throws -> [String: OperationState] {
        guard !ids.isEmpty else { return [:] }
        let list = try FleetJSON.text(ids)
        return try writer.read { db in
            var states: [String: OperationState] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT id, state FROM operations WHERE id IN (SELECT value FROM json_each(?))", arguments: [list])
            while let row = try rows.next() {
                if let state = OperationState(rawValue: row["state"]) { states[row["id"]] = state }
            }
            return states
        }
    }

    public func operation(idempotencyKey: String) throws -> DeferredOperation? {
        try writer.read { db in
            try Self.decode(String.fetchOne(db, sql: "SELECT document FROM operations WHERE idempotencyKey = ?", arguments: [idempotencyKey]))
        }
    }

    @discardableResult
    public func transition(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        return try writer.write { db in
            guard var operation = try Self.decode(String.fetchOne(db.cachedStatement(sql: "SELECT document FROM operations WHERE id = ?"), arguments: [id]))
            else { throw OperationStoreError.notFound(id) }
            guard expected.contains(operation.state), operation.state.canMove(to: to) else {
                throw OperationStoreError.conflict(id: id, expected: expected, found: operation.state)
            }
            let from = operation.state
            update(&operation)
            operation.state = to
            operation.history.append(OperationHistoryEntry(at: at, from: from, to: to, note: note))
            try db.cachedStatement(sql: "UPDATE operations SET state = ?, document = ? WHERE id = ?").execute(
                arguments: [to.rawValue, try FleetJSON.text(operation), id])
            // A run is recorded only while its operation is dispatching: its end is written with
            // the outcome, in the same transaction (one commit per finished executor, not two).
            if from == .dispatching, to != .dispatching {
                try db.cachedStatement(sql: "DELETE FROM runs WHERE operationID = ?").execute(arguments: [id])
            }
            return operation
        }
    }

    /// One UPDATE, conditional on the stored row being what the caller read (state `queued`, as
    /// many history entries): no read and no decoding of the stored document in the write
    /// transaction, and the new one encoded before it. (In a reconnect storm the claim is on the
    /// path from one executor's end to the next one's start.)
    public func claim(_ operation: DeferredOperation, at now: Date, note: String) throws -> DeferredOperation {
        guard operation.state == .queued else {
            throw OperationStoreError.conflict(id: operation.id, expected: [.queued], found: operation.state)
        }
        var claimed = operation
        claimed.attempts += 1
        claimed.state = .dispatching
        claimed.history.append(OperationHistoryEntry(at: now, from: .queued, to: .dispatching, note: note))
        let document = try FleetJSON.text(claimed)
        let changed = try writer.write { db in
            try db.cachedStatement(
                sql: """
                    UPDATE operations SET state = 'dispatching', document = ?
                    WHERE id = ? AND state = 'queued' AND json_array_length(document, '$.history') = ?
                    """
            ).execute(arguments: [document, operation.id, operation.history.count])
            return db.changesCount
        }
        guard changed == 1 else {
            let found = try self.operation(id: operation.id)
            guard let found else { throw OperationStoreError.notFound(operation.id) }
            // Moved, or changed and still queued (an older copy than the store's): either way not this claim.
            throw OperationStoreError.conflict(id: operation.id, expected: [.queued], found: found.state)
        }
        return claimed
    }

    /// One conditional UPDATE from the caller's copy (as for `claim`: in a reconnect storm the
    /// outcome of every executor is written here), and the run record's DELETE, in one
    /// transaction; when the stored operation changed since the claim, `transition`.
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
        let document = try FleetJSON.text(completed)
        let changed = try writer.write { db -> Int in
            try db.cachedStatement(
                sql: """
                    UPDATE operations SET state = ?, document = ?
                    WHERE id = ? AND state = 'dispatching' AND json_array_length(document, '$.history') = ?
                    """
            ).execute(arguments: [to.rawValue, document, operation.id, operation.history.count])
            guard db.changesCount == 1 else { return 0 }
            try db.cachedStatement(sql: "DELETE FROM runs WHERE operationID = ?").execute(arguments: [operation.id])
            return 1
        }
        guard changed == 1 else {
            return try transition(id: operation.id, expected: [.dispatching], to: to, at: now, note: note, update: update)
        }
        return completed
    }

    public func list(_ filter: OperationFilter, after cursor: Int64?, limit: Int) throws -> OperationPage {
        try page(filter, cursor: cursor, limit: limit, newestFirst: false)
    }

    /// A COUNT on the indexed columns: no document is read (a submission says how many wait ahead of it).
    public func count(_ filter: OperationFilter, limit: Int) throws -> Int {
        let (whereClause, arguments) = Self.whereClause(filter)
        let sql = "SELECT COUNT(*) FROM (SELECT 1 FROM operations \(whereClause) LIMIT \(max(1, limit)))"
        return try writer.read { db in try Int.fetchOne(db.cachedStatement(sql: sql), arguments: StatementArguments(arguments)) ?? 0 }
    }

    /// The WHERE clause of `filter` (and of a listing's cursor) on the indexed columns, with its arguments.
    private static func whereClause(
        _ filter: OperationFilter, cursor: Int64? = nil, newestFirst: Bool = false
    ) -> (String, [(any DatabaseValueConvertible)?]) {
        var clauses: [String] = []
        var arguments: [(any DatabaseValueConvertible)?] = []
        if let site = filter.site {
            clauses.append("site = ?")
            arguments.append(site.rawValue)
        }
        if let kind = filter.kind {
            clauses.append("kind = ?")
            arguments.append(kind.rawValue)
        }
        if let sites = filter.sites {
            // One argument however many sites (a selector may match 100,000): a JSON array.
            clauses.append("site IN (SELECT value FROM json_each(?))")
            arguments.append((try? FleetJSON.text(sites.map(\.rawValue).sorted())) ?? "[]")
        }
        if let states = filter.states {
            clauses.append("state IN (\(Array(repeating: "?", count: states.count).joined(separator: ", ")))")
            arguments += states.map(\.rawValue).sorted().map { $0 as (any DatabaseValueConvertible)? }
        }
        if let cursor {
            clauses.append(newestFirst ? "sequence < ?" : "sequence > ?")
            arguments.append(cursor)
        }
        return (clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND "), arguments)
    }

    public func listNewestFirst(_ filter: OperationFilter, before cursor: Int64?, limit: Int) throws -> OperationPage {
        try page(filter, cursor: cursor, limit: limit, newestFirst: true)
    }

    private func page(_ filter: OperationFilter, cursor: Int64?, limit: Int, newestFirst: Bool) throws -> OperationPage {
        let (whereClause, arguments) = Self.whereClause(filter, cursor: cursor, newestFirst: newestFirst)
        let limit = max(1, limit)
        let sql = "SELECT document FROM operations \(whereClause) ORDER BY sequence \(newestFirst ? "DESC" : "ASC") LIMIT \(limit + 1)"
        let documents = try writer.read { db in
            try String.fetchAll(db, sql: sql, arguments: StatementArguments(arguments))
        }
        let operations = try documents.prefix(limit).map { try Self.decodeOne($0) }
        let more = documents.count > limit
        return OperationPage(operations: operations, nextCursor: more ? operations.last?.sequence : nil)
    }

    public func counts() throws -> [SiteID: [OperationState: Int]] {
        try writer.read { db in
            var result: [SiteID: [OperationState: Int]] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT site, state, COUNT(*) AS n FROM operations GROUP BY site, state")
            while let row = try rows.next() {
                let siteText: String = row["site"]
                let stateText: String = row["state"]
                guard let site = try? SiteID(siteText), let state = OperationState(rawValue: stateText) else { continue }
                result[site, default: [:]][state] = row["n"]
            }
            return result
        }
    }

    public func counts(sites: Set<SiteID>) throws -> [SiteID: [OperationState: Int]] {
        guard !sites.isEmpty else { return [:] }
        return try writer.read { db in
            var result: [SiteID: [OperationState: Int]] = [:]
            // One indexed look per site (operations_by_site starts with the site).
            let statement = try db.cachedStatement(sql: "SELECT state, COUNT(*) AS n FROM operations WHERE site = ? GROUP BY state")
            for site in sites {
                let rows = try Row.fetchCursor(statement, arguments: [site.rawValue])
                while let row = try rows.next() {
                    let stateText: String = row["state"]
                    guard let state = OperationState(rawValue: stateText) else { continue }
                    result[site, default: [:]][state] = row["n"]
                }
            }
            return result
        }
    }

    public func recordRun(_ run: ExecutorRun) throws {
        try writer.write { db in
            try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO runs (operationID, processGroup, startTicks, bootID, host, startedAt) VALUES (?, ?, ?, ?, ?, ?)"
            ).execute(
                arguments: [run.operationID, run.processGroup, Int64(clamping: run.startTicks), run.bootID, run.host, run.startedAt.timeIntervalSince1970])
        }
    }

    public func forgetRun(operationID: String) throws {
        try writer.write { db in
            try db.execute(sql: "DELETE FROM runs WHERE operationID = ?", arguments: [operationID])
        }
    }

    public func runs() throws -> [ExecutorRun] {
        try writer.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM runs").map { row in
                ExecutorRun(
                    operationID: row["operationID"], processGroup: row["processGroup"], startTicks: UInt64(max(0, row["startTicks"] as Int64)),
                    bootID: row["bootID"], host: row["host"], startedAt: Date(timeIntervalSince1970: row["startedAt"]))
            }
        }
    }

    static func decode(_ document: String?) throws -> DeferredOperation? {
        try document.map(decodeOne)
    }

    static func decodeOne(_ document: String) throws -> DeferredOperation {
        try FleetJSON.decoder().decode(DeferredOperation.self, from: Data(document.utf8))
    }
}
