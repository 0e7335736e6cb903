public import FleetCore

/// The fleet's site records by site id: the records in one dense array, and an index from
/// site to row.
///
/// A `[SiteID: SiteRecord]` keeps each record inline in its hash table, which is at most
/// three-quarters full and sized in powers of two: 100,001 records of about 440 bytes took
/// 262,144 slots, 117 MB, the largest part of the aggregator's memory at the 100,000-site
/// benchmark's peak. Here the rows are dense (a removal moves the last row into the hole) and
/// the hash table holds only row numbers.
public struct SiteTable: Sendable {
    private var rows: ContiguousArray<SiteRecord> = []
    private var rowOf: [SiteID: Int] = [:]

    public init() {}

    public var count: Int { rows.count }
    public var isEmpty: Bool { rows.isEmpty }

    /// The record of `site`; setting nil removes it. A record is always stored under its own site.
    public subscript(site: SiteID) -> SiteRecord? {
        get { rowOf[site].map { rows[$0] } }
        set {
            guard let newValue else {
                removeValue(forKey: site)
                return
            }
            precondition(newValue.site == site, "a record is stored under its own site")
            if let row = rowOf[site] {
                rows[row] = newValue
            } else {
                rowOf[site] = rows.count
                rows.append(newValue)
            }
        }
    }

    /// What `body` reads of a site's record, without copying the record.
    public func read<T>(_ site: SiteID, _ body: (SiteRecord) -> T) -> T? {
        guard let row = rowOf[site] else { return nil }
        return body(rows[row])
    }

    public func contains(_ site: SiteID) -> Bool { rowOf[site] != nil }

    @discardableResult
    public mutating func removeValue(forKey site: SiteID) -> SiteRecord? {
        guard let row = rowOf.removeValue(forKey: site) else { return nil }
        let last = rows.count - 1
        if row != last {
            rows.swapAt(row, last)
            rowOf[rows[row].site] = row
        }
        return rows.removeLast()
    }

    /// Every site, in no particular order.
    public var keys: LazyMapSequence<ContiguousArray<SiteRecord>, SiteID> { rows.lazy.map(\.site) }

    /// Every record, in no particular order.
    public var values: ContiguousArray<SiteRecord> { rows }

    /// Changes every record in place (a loop over `keys` that set each record would copy the
    /// whole table at its first change, the keys holding on to it).
    public mutating func updateEach(_ body: (inout SiteRecord) -> Void) {
        for row in rows.indices {
            body(&rows[row])
            precondition(rowOf[rows[row].site] == row, "a record keeps its site")
        }
    }
}
