public import FleetAggregator
public import FleetCore
import PostgresNIO

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Site records and forgotten sites' tombstones in PostgreSQL: the same rules as the SQLite
/// store. Records are written in batches of `batch` per statement (arrays bound as parameters
/// and unnested on the server), so a flush of 100,000 records is a hundred round trips, not
/// 100,000.
public struct PostgresSiteStore: SiteStore {
    let pool: PostgresPool
    let batch: Int

    public init(pool: PostgresPool, batch: Int = 1_000) {
        self.pool = pool
        self.batch = max(1, batch)
    }

    public func loadAll() throws -> (records: [SiteRecord], problems: [String]) {
        let decoder = FleetJSON.decoder()
        let rows = try pool.withConnection { c in
            try c.query("SELECT site, record FROM sites").map { try $0.decode((String, String).self) }
        }
        var records: [SiteRecord] = []
        var problems: [String] = []
        records.reserveCapacity(rows.count)
        for (site, text) in rows {
            do {
                records.append(try decoder.decode(SiteRecord.self, from: Data(text.utf8)))
            } catch {
                problems.append("site \(site): stored record does not decode: \(error)")
            }
        }
        return (records, problems)
    }

    public func save(_ records: [SiteRecord], at now: Date) throws {
        let stamp = RFC3339.format(now)
        var start = records.startIndex
        while start < records.endIndex {
            let end = min(start + batch, records.endIndex)
            var sites: [String] = []
            var documents: [String] = []
            sites.reserveCapacity(end - start)
            documents.reserveCapacity(end - start)
            for record in records[start..<end] {
                sites.append(record.site.rawValue)
                documents.append(try FleetJSON.text(record))
            }
            try pool.withConnection { c in
                // A record taken for writing just before its site was forgotten is not written back.
                try c.query(
                    """
                    INSERT INTO sites (site, record, updated_at)
                    SELECT t.site, t.record, \(stamp) FROM unnest(\(sites)::text[], \(documents)::text[]) AS t(site, record)
                    WHERE NOT EXISTS (SELECT 1 FROM forgotten_sites f WHERE f.site = t.site)
                    ON CONFLICT (site) DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at
                    """)
            }
            start = end
        }
    }

    public func forget(_ site: SiteID, at now: Date) throws {
        try pool.transaction { c in
            try c.query("DELETE FROM sites WHERE site = \(site.rawValue)")
            try c.query(
                """
                INSERT INTO forgotten_sites (site, forgotten_at) VALUES (\(site.rawValue), \(RFC3339.format(now)))
                ON CONFLICT (site) DO UPDATE SET forgotten_at = excluded.forgotten_at
                """)
        }
    }

    public func revive(_ sites: Set<SiteID>) throws {
        guard !sites.isEmpty else { return }
        let names = sites.map(\.rawValue)
        try pool.withConnection { c in
            try c.query("DELETE FROM forgotten_sites WHERE site = ANY(\(names))")
        }
    }

    public func forgotten() throws -> Set<SiteID> {
        try pool.withConnection { c in
            Set(try c.query("SELECT site FROM forgotten_sites").compactMap { try? SiteID(try $0.decode(String.self)) })
        }
    }

    public func count() throws -> Int {
        try pool.withConnection { c in
            Int(try c.query("SELECT COUNT(*) FROM sites").first?.decode(Int64.self) ?? 0)
        }
    }
}
