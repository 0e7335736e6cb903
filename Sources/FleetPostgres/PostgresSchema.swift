import PostgresNIO

/// The aggregator's tables in PostgreSQL, by versioned, append-only migrations, as in SQLite
/// (the same names, in the order they landed there). Never edit a migration that has landed;
/// add a new one at the end.
public enum PostgresSchema {
    static let migrations: [(name: String, statements: [String])] = [
        (
            "v1-sites",
            [
                // SiteRecord as JSON (text: written and read whole, never queried inside).
                "CREATE TABLE sites (site text PRIMARY KEY, record text NOT NULL, updated_at text NOT NULL)"
            ]
        ),
        (
            "v2-operations",
            [
                // One row per operation; the document is the whole DeferredOperation as JSON, and
                // history_count the length of its history (what a claim compares).
                """
                CREATE TABLE operations (
                    sequence bigserial PRIMARY KEY, id text NOT NULL UNIQUE, site text NOT NULL, kind text NOT NULL,
                    state text NOT NULL, idempotency_key text UNIQUE, history_count integer NOT NULL, document text NOT NULL)
                """,
                "CREATE INDEX operations_by_site ON operations (site, state, sequence)",
                "CREATE INDEX operations_by_state ON operations (state, sequence)",
            ]
        ),
        (
            "v3-runs",
            [
                """
                CREATE TABLE runs (
                    operation_id text PRIMARY KEY, process_group integer NOT NULL, start_ticks bigint NOT NULL,
                    boot_id text NOT NULL, host text NOT NULL, started_at double precision NOT NULL)
                """
            ]
        ),
        (
            "v4-forgotten-sites",
            ["CREATE TABLE forgotten_sites (site text PRIMARY KEY, forgotten_at text NOT NULL)"]
        ),
        (
            // PostgreSQL only (one SQLite aggregator leads alone): the replicas' lease, one row.
            "v5-leader-lease",
            [
                """
                CREATE TABLE leader_lease (
                    id integer PRIMARY KEY CHECK (id = 1), holder text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL)
                """,
                "INSERT INTO leader_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, 'epoch')",
            ]
        ),
        (
            // How long a dispatching operation's claim holds (its executor's longest possible run).
            "v6-claim-expiry",
            ["ALTER TABLE operations ADD COLUMN claim_expires timestamptz"]
        ),
        (
            // Operators' changes made through standbys, waiting for the leader to publish them.
            "v7-event-outbox",
            ["CREATE TABLE event_outbox (sequence bigserial PRIMARY KEY, event text NOT NULL)"]
        ),
        (
            "v8-audit",
            [
                "CREATE TABLE audit (id bigserial PRIMARY KEY, at timestamptz NOT NULL, principal text NOT NULL, entry jsonb NOT NULL)",
                "CREATE INDEX audit_principal ON audit (principal, id)",
            ]
        ),
        (
            "v9-rollouts",
            [
                """
                CREATE TABLE rollouts (
                    id text PRIMARY KEY, idempotency_key text UNIQUE, created_at timestamptz NOT NULL, state text NOT NULL,
                    version bigint NOT NULL, document text NOT NULL)
                """,
                "CREATE INDEX rollouts_state ON rollouts (state)",
            ]
        ),
        (
            // The published events (ids in publishing order) and each site's spans in one mode.
            "v10-events",
            [
                "CREATE TABLE events (id bigserial PRIMARY KEY, at_ms bigint NOT NULL, site text, type text NOT NULL, body text NOT NULL)",
                "CREATE INDEX events_site ON events (site, id)",
                "CREATE INDEX events_at ON events (at_ms, id)",
                """
                CREATE TABLE mode_spans (
                    site text NOT NULL, mode text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
                    contact_ms bigint, deadline_ms bigint)
                """,
                "CREATE INDEX mode_spans_site ON mode_spans (site, start_ms)",
                "CREATE INDEX mode_spans_end ON mode_spans (end_ms, start_ms, mode, contact_ms, deadline_ms, site)",
            ]
        ),
    ]

    /// Applies what is missing, in one transaction, under an advisory lock: replicas that start
    /// together migrate one after the other, and the second finds nothing left to do. A database
    /// migrated by a newer EdgeFleet (a migration this build does not know) is refused.
    public static func migrate(_ pool: PostgresPool) throws {
        try pool.transaction { connection in
            try connection.execute("SELECT pg_advisory_xact_lock(7046310001)")
            try connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            let applied = Set(try connection.query("SELECT name FROM schema_migrations").map { try $0.decode(String.self) })
            let known = Set(migrations.map(\.name))
            if let unknown = applied.subtracting(known).sorted().first {
                throw PostgresStoreError(
                    "the database was migrated by a newer EdgeFleet (migration '\(unknown)'); this version (\(migrations.last?.name ?? "")) cannot use it")
            }
            for migration in migrations where !applied.contains(migration.name) {
                for statement in migration.statements { try connection.execute(statement) }
                try connection.query("INSERT INTO schema_migrations (name) VALUES (\(migration.name))")
            }
        }
    }

    /// The migrations applied, in order (for tests and `/healthz`).
    public static func applied(_ pool: PostgresPool) throws -> [String] {
        try pool.withConnection { connection in
            try connection.query("SELECT name FROM schema_migrations ORDER BY applied_at, substring(name from '^v([0-9]+)')::int, name").map { try $0.decode(String.self) }
        }
    }
}
