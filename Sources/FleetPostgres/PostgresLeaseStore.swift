public import FleetQueue
import PostgresNIO
import Synchronization

/// The replicas' lease in PostgreSQL: one row (`leader_lease`), every round one statement on the
/// database's clock (`now()`), so replicas on machines whose clocks disagree still agree on
/// who leads.
///
/// It has a connection of its own: through the pool, a renewal waited behind the store's traffic
/// (four connections busy with claims, outcomes and site flushes during a storm) and the lease
/// lapsed while the database was fine. Its calls fail after `timeout` (a third of a 3 s lease
/// by default), and a connection that failed is replaced at the next round.
public final class PostgresLeaseStore: LeaseStore {
    let pool: PostgresPool
    let timeout: Duration
    private let connection = Mutex<PostgresPool.Connection?>(nil)

    public init(pool: PostgresPool, timeout: Duration = .seconds(1)) {
        self.pool = pool
        self.timeout = timeout
    }

    /// The lease's connection (opened or replaced when needed); one caller at a time.
    private func withConnection<T>(_ body: (PostgresPool.Connection) throws -> T) throws -> T {
        try connection.withLock { held in
            if held == nil || held?.isClosed == true {
                held?.close()
                held = try pool.dedicatedConnection(timeout: timeout)
            }
            do {
                return try body(held!)
            } catch {
                if held?.isClosed == true {
                    held?.close()
                    held = nil
                }
                throw error
            }
        }
    }

    public func campaign(holder: String, epoch: Int64?, duration: Duration) throws -> (grant: LeaseGrant?, won: Bool) {
        let milliseconds = Int64(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        return try withConnection { c in
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
                return (LeaseGrant(holder: holder, epoch: epoch), true)
            }
            guard let row = try c.query("SELECT holder, epoch FROM leader_lease WHERE id = 1 AND expires_at > now()").first else { return (nil, false) }
            let (current, currentEpoch) = try row.decode((String, Int64).self)
            return (LeaseGrant(holder: current, epoch: currentEpoch), false)
        }
    }

    public func release(holder: String, epoch: Int64) throws {
        try withConnection { c in
            try c.query("UPDATE leader_lease SET expires_at = now() WHERE id = 1 AND holder = \(holder) AND epoch = \(epoch)")
        }
    }
}
