public import FleetCore
import GRDB

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Where the fleet's events are kept after they are published: every event with an id that
/// increases in publishing order, and, from the `mode-changed` events, each site's spans in
/// one mode (what the history is worked out from). Both are removed past the retention.
public protocol EventStore: Sendable {
    /// Stores `events` in order; returns them with their ids.
    func append(_ events: [FleetEvent]) throws -> [FleetEvent]
    /// Stored events matching `query`, oldest (lowest id) first, at most `query.limit`.
    func events(_ query: EventQuery) throws -> [FleetEvent]
    /// A site's spans that overlap `window`, oldest first.
    func spans(site: SiteID, window: HistoryWindow) throws -> [ModeSpan]
    /// The fleet over `window`: time per mode, `buckets` slices, the `top` sites by budget used.
    func fleetHistory(window: HistoryWindow, top: Int, buckets: Int) throws -> FleetHistory
    /// Removes events, and spans that ended, before `before`; returns how many events went.
    @discardableResult
    func prune(before: Date) throws -> Int
}

/// Span rows: an open span ends at this instant (2^53 − 1 ms), so "overlaps a window" is one range.
let openSpanEnd: Int64 = 9_007_199_254_740_991

extension EventStore {
    /// The history of `site` over `window`.
    public func siteHistory(_ site: SiteID, window: HistoryWindow) throws -> SiteHistory {
        SiteHistory.compute(site: site, spans: try spans(site: site, window: window), window: window)
    }
}

/// The events in the SQLite file.
public struct SQLiteEventStore: EventStore {
    let database: AggregatorDatabase

    public init(database: AggregatorDatabase) {
        self.database = database
    }

    static func create(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at_ms INTEGER NOT NULL,
                    site TEXT,
                    type TEXT NOT NULL,
                    body TEXT NOT NULL
                );
                CREATE INDEX events_site ON events (site, id);
                CREATE INDEX events_at ON events (at_ms, id);
                CREATE TABLE mode_spans (
                    site TEXT NOT NULL,
                    mode TEXT NOT NULL,
                    start_ms INTEGER NOT NULL,
                    end_ms INTEGER NOT NULL,
                    contact_ms INTEGER,
                    deadline_ms INTEGER
                );
                CREATE INDEX mode_spans_site ON mode_spans (site, start_ms);
                CREATE INDEX mode_spans_end ON mode_spans (end_ms, start_ms, mode, contact_ms, deadline_ms, site);
                """)
    }

    public func append(_ events: [FleetEvent]) throws -> [FleetEvent] {
        guard !events.isEmpty else { return [] }
        return try database.writer.write { db in
            var stored: [FleetEvent] = []
            stored.reserveCapacity(events.count)
            let insert = try db.cachedStatement(sql: "INSERT INTO events (at_ms, site, type, body) VALUES (?, ?, ?, ?)")
            // `+end_ms`: by the site index (the one on end_ms would walk every open span).
            let close = try db.cachedStatement(sql: "UPDATE mode_spans SET end_ms = ? WHERE site = ? AND +end_ms = \(openSpanEnd)")
            let open = try db.cachedStatement(
                sql: "INSERT INTO mode_spans (site, mode, start_ms, end_ms, contact_ms, deadline_ms) VALUES (?, ?, ?, \(openSpanEnd), ?, ?)")
            for var event in events {
                event.id = nil
                let body = try StoredEventBody.encode(event)
                let atMs = event.at.millisecondsSince1970
                try insert.execute(arguments: [atMs, event.site?.rawValue, event.type.rawValue, body])
                event.id = db.lastInsertedRowID
                if let site = event.site?.rawValue {
                    switch event.type {
                    case .modeChanged:
                        try close.execute(arguments: [atMs, site])
                        if let mode = event.to {
                            try open.execute(arguments: [
                                site, mode, atMs, event.contactAt?.millisecondsSince1970, event.deadline?.millisecondsSince1970,
                            ])
                        }
                    case .siteForgotten:
                        try close.execute(arguments: [atMs, site])
                    default:
                        break
                    }
                }
                stored.append(event)
            }
            return stored
        }
    }

    public func events(_ query: EventQuery) throws -> [FleetEvent] {
        try database.writer.read { db in
            var after = query.after ?? 0
            // Without a site, the rows are walked in id order from the first that can match:
            // the lowest id at or after `since` (from the covering index on (at_ms, id)).
            if query.site == nil, query.after == nil, let since = query.since {
                let first = try Int64.fetchOne(db, sql: "SELECT MIN(id) FROM events WHERE at_ms >= ?", arguments: [since.millisecondsSince1970])
                after = max(after, (first ?? Int64.max) - 1)
            }
            var sql = "SELECT id, at_ms, site, type, body FROM events WHERE id > ?"
            var arguments: StatementArguments = [after]
            if let site = query.site {
                sql += " AND site = ?"
                arguments += [site.rawValue]
            }
            if !query.types.isEmpty {
                sql += " AND type IN (\(query.types.map { _ in "?" }.joined(separator: ", ")))"
                for type in query.types.sorted(by: { $0.rawValue < $1.rawValue }) { arguments += [type.rawValue] }
            }
            // `+at_ms`: filter, never choose the at index (the order is the id's).
            if let since = query.since {
                sql += " AND +at_ms >= ?"
                arguments += [since.millisecondsSince1970]
            }
            if let until = query.until {
                sql += " AND +at_ms < ?"
                arguments += [until.millisecondsSince1970]
            }
            sql += " ORDER BY id LIMIT ?"
            arguments += [query.limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).compactMap { row -> FleetEvent? in
                StoredEventBody.event(id: row[0], atMs: row[1], site: row[2], type: row[3], body: row[4])
            }
        }
    }

    public func spans(site: SiteID, window: HistoryWindow) throws -> [ModeSpan] {
        try database.writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT mode, start_ms, end_ms, contact_ms, deadline_ms FROM mode_spans
                    WHERE site = ? AND start_ms < ? AND end_ms > ? ORDER BY start_ms
                    """,
                arguments: [site.rawValue, window.to.millisecondsSince1970, window.from.millisecondsSince1970]
            ).compactMap(Self.span)
        }
    }

    static func span(_ row: Row) -> ModeSpan? {
        let modeText: String = row["mode"]
        guard let mode = ConnectivityMode(rawValue: modeText) else { return nil }
        let end: Int64 = row["end_ms"]
        let contact: Int64? = row["contact_ms"]
        let deadline: Int64? = row["deadline_ms"]
        return ModeSpan(
            mode: mode, from: Date(millisecondsSince1970: row["start_ms"]), to: end == openSpanEnd ? nil : Date(millisecondsSince1970: end),
            contactAt: contact.map(Date.init(millisecondsSince1970:)), deadline: deadline.map(Date.init(millisecondsSince1970:)))
    }

    public func fleetHistory(window: HistoryWindow, top: Int, buckets: Int) throws -> FleetHistory {
        let fromMs = window.from.millisecondsSince1970
        let toMs = window.to.millisecondsSince1970
        return try database.writer.read { db in
            // One pass over the spans that overlap the window, from the covering index on end_ms.
            var builder = FleetSeriesBuilder(window: window, buckets: buckets)
            var ranking = BudgetRanking(window: window)
            let cursor = try Row.fetchCursor(
                db, sql: "SELECT mode, start_ms, end_ms, contact_ms, deadline_ms, site FROM mode_spans WHERE end_ms > ? AND start_ms < ?",
                arguments: [fromMs, toMs])
            let modes = Dictionary(uniqueKeysWithValues: ConnectivityMode.allCases.map { ($0.rawValue, $0) })
            while let row = try cursor.next() {
                guard let mode = modes[row[0] as String] else { continue }
                let end: Int64 = row[2]
                builder.add(mode, startMs: row[1], endMs: end)
                if mode == .semiConnected || mode == .disconnected, let contact = row[3] as Int64?, let deadline = row[4] as Int64? {
                    ranking.add(site: row[5], endMs: end, contactMs: contact, deadlineMs: deadline)
                }
            }
            return builder.finish(ranking: ranking.top(top))
        }
    }

    @discardableResult
    public func prune(before: Date) throws -> Int {
        let cutoff = before.millisecondsSince1970
        var removed = 0
        // In slices, so that ingest's writes are never held up for long.
        while true {
            let n = try database.writer.write { db -> Int in
                try db.execute(sql: "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at_ms < ? LIMIT 5000)", arguments: [cutoff])
                return db.changesCount
            }
            removed += n
            if n < 5000 { break }
        }
        while true {
            let n = try database.writer.write { db -> Int in
                try db.execute(
                    sql: "DELETE FROM mode_spans WHERE rowid IN (SELECT rowid FROM mode_spans WHERE end_ms < ? LIMIT 5000)", arguments: [cutoff])
                return db.changesCount
            }
            if n < 5000 { break }
        }
        return removed
    }
}
