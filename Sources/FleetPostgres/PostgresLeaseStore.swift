public import FleetQueue
import PostgresNIO

/// The replicas' lease in PostgreSQL: one row (`leader_lease`), every round one statement on the
/// database's clock (`now()`), so replicas on machines whose clocks disagree still agree on
/// who leads.
public struct PostgresLeaseStore: LeaseStore {
    let pool: PostgresPool

    public init(pool: PostgresPool) {
        self.pool = pool
    }

    public func campaign(holder: String, epoch: Int64?, duration: Duration) throws -> LeaseGrant? {
        let milliseconds = Int64(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        return try pool.withConnection { c in
            // Renew when held by this holder at this epoch; else take it when it has run out
            // (a new epoch). One statement: two replicas taking it at once cannot both win.
            let taken = try c.query(
                """
                UPDATE leader_lease SET
                    epoch = CASE WHEN holder = \(holder) AND epoch = \(epoch ?? -1) THEN epoch ELSE epoch + 1 END,
                    holder = \(holder), expires_at = now() + \(milliseconds) * interval '1 millisecond'
                WHERE id = 1 AND ((holder = \(holder) AND epoch = \(epoch ?? -1) AND expires_at > now()) OR expires_at <= now())
                RETURNING holder, epoch
                """)
            if let row = taken.first {
                let (holder, epoch) = try row.decode((String, Int64).self)
                return LeaseGrant(holder: holder, epoch: epoch)
            }
            guard let row = try c.query("SELECT holder, epoch FROM leader_lease WHERE id = 1 AND expires_at > now()").first else { return nil }
            let (current, currentEpoch) = try row.decode((String, Int64).self)
            return LeaseGrant(holder: current, epoch: currentEpoch)
        }
    }

    public func release(holder: String, epoch: Int64) throws {
        try pool.withConnection { c in
            try c.query("UPDATE leader_lease SET expires_at = now() WHERE id = 1 AND holder = \(holder) AND epoch = \(epoch)")
        }
    }
}
