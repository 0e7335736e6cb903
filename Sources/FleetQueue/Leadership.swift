public import FleetCore
public import Logging
public import ServiceLifecycle
import Synchronization

/// Who holds the lease now, as the database says. `holder` names one run of one replica
/// (`REPLICA@INCARNATION`): a replica restarted under the same id is another holder, and never
/// mistakes its predecessor's lease for its own.
public struct LeaseGrant: Sendable, Hashable {
    public var holder: String
    public var epoch: Int64

    public init(holder: String, epoch: Int64) {
        self.holder = holder
        self.epoch = epoch
    }

    /// The replica id part of `holder`.
    public var replica: String { String(holder.split(separator: "@", maxSplits: 1).first ?? Substring(holder)) }
}

/// Where replicas compete for the lead: one row in the shared database, with the epoch that
/// increases at every change of holder. Every call is one statement on the database's clock.
public protocol LeaseStore: Sendable {
    /// One round: renews the lease for `duration` when `holder` holds it at `epoch`; else takes
    /// it (epoch + 1) when it is free or has run out. Returns who holds it after the round (nil:
    /// nobody) and whether this round renewed or took it: a lease that still names `holder` but
    /// was not renewed (it stood down meanwhile) is not won again until it has run out, and then
    /// under a new epoch.
    func campaign(holder: String, epoch: Int64?, duration: Duration) throws -> (grant: LeaseGrant?, won: Bool)
    /// Gives the lease up at once (a graceful stop): another replica takes it at its next round.
    func release(holder: String, epoch: Int64) throws
}

/// This replica's role: the leader evaluates, publishes and dispatches; a standby ingests the
/// same messages (its state is warm), serves the API and waits to take over.
public enum ReplicaRole: String, Sendable, Hashable {
    case leader
    case standby
}

/// The lead among replicas, on a lease (`LeaseStore`), or sole (one aggregator on SQLite:
/// always the leader, epoch 1).
///
/// A leader renews every `lease / 4`. It counts its lease from the moment it *sent* a renewal
/// that succeeded, on its own monotonic clock, and gives the lead up when two thirds of the lease
/// have passed since then without another success: the database's lease, counted from when it
/// *received* the renewal, runs out later, so a deposed leader has stopped before anyone else
/// may start. Writes that matter (claiming an operation, recording its end) are fenced in the
/// database by holder and epoch as well (`fence`), so even a leader that stalled past its lease
/// cannot write late.
public final class Leadership: Service, Sendable {
    public let replicaID: String
    /// What this run of the replica writes as the lease's holder: its id and a random incarnation.
    public let holder: String
    public let lease: Duration
    let store: (any LeaseStore)?
    let logger: Logger

    private struct State {
        var role: ReplicaRole
        var epoch: Int64
        var leader: String?
        var validUntil: ContinuousClock.Instant?
        var observers: [@Sendable (ReplicaRole, Int64) -> Void] = []
        var stopped = false
    }
    private let state: Mutex<State>
    private let wake = Wakeup()

    /// The share of the lease a leader keeps the lead after its last renewal was sent: the rest
    /// (a third) is the margin in which what it already handed to the broker is delivered before
    /// anyone else may lead.
    static let holdFraction = 2.0 / 3.0

    /// One aggregator, nobody to compete with: the leader at epoch 1 from the start.
    public static func sole(replicaID: String, logger: Logger) -> Leadership {
        Leadership(replicaID: replicaID, lease: .seconds(3600), store: nil, logger: logger)
    }

    /// A replica that competes for the lead through `store`; a standby until it wins a round.
    public init(replicaID: String, lease: Duration, store: (any LeaseStore)?, logger: Logger) {
        self.replicaID = replicaID
        var generator = SystemRandomNumberGenerator()
        holder = "\(replicaID)@\(String(generator.next() as UInt64, radix: 16))"
        self.lease = lease
        self.store = store
        self.logger = logger
        state = Mutex(State(role: store == nil ? .leader : .standby, epoch: store == nil ? 1 : 0, leader: store == nil ? replicaID : nil))
    }

    public var role: ReplicaRole { state.withLock { $0.role } }
    public var isLeader: Bool { role == .leader }
    /// The epoch of the current lead as this replica last saw it.
    public var epoch: Int64 { state.withLock { $0.epoch } }
    /// The leader's replica id as last seen (nil: unknown).
    public var leader: String? { state.withLock { $0.leader } }
    /// Whether the lead is decided by a lease (replicas on a shared database).
    public var isReplicated: Bool { store != nil }

    /// What fenced writes carry: this replica's id and epoch while it leads; nil otherwise.
    public var fence: LeaseGrant? {
        state.withLock { $0.role == .leader ? LeaseGrant(holder: holder, epoch: $0.epoch) : nil }
    }

    /// Called at every change of role (on the campaign's task; keep it short).
    public func onChange(_ observer: @escaping @Sendable (ReplicaRole, Int64) -> Void) {
        state.withLock { $0.observers.append(observer) }
    }

    /// Campaigns until a graceful shutdown (run it last in the service group: it gives the lease
    /// up after everything else stopped), cancellation or `stop()`; then gives the lease up if it
    /// holds it. A sole leader has nothing to do until the shutdown.
    public func run() async {
        guard store != nil else {
            // Nothing to do, but a service that returns ends the group: wait for the shutdown.
            try? await gracefulShutdown()
            return
        }
        await withGracefulShutdownHandler {
            await campaign()
        } onGracefulShutdown: {
            self.stop()
        }
    }

    private func campaign() async {
        guard let store else { return }
        let renewEvery = lease / 4
        while !state.withLock({ $0.stopped }) && !Task.isCancelled {
            let sent = ContinuousClock.now
            let (mine, epoch) = state.withLock { ($0.role == .leader, $0.epoch) }
            do {
                let (grant, won) = try store.campaign(holder: holder, epoch: mine ? epoch : nil, duration: lease)
                if let grant, won {
                    set(.leader, epoch: grant.epoch, leader: replicaID, validUntil: sent + lease * Self.holdFraction)
                } else {
                    set(.standby, epoch: grant?.epoch ?? epoch, leader: grant?.replica, validUntil: nil)
                }
            } catch {
                // The lead is kept only while the last renewal's lease runs (the check below).
                logger.warning("leader lease: \(error)")
            }
            // Until the next round, or the instant the lead must be given up, whichever is first.
            var until = ContinuousClock.now + renewEvery
            if let validUntil = state.withLock({ $0.validUntil }) { until = min(until, validUntil) }
            await wake.wait(until: until)
            let lapsed = state.withLock { s in s.role == .leader && (s.validUntil.map { ContinuousClock.now >= $0 } ?? true) }
            if lapsed {
                logger.error("leader lease lapsed (no renewal reached the database): standing down")
                set(.standby, epoch: epoch, leader: nil, validUntil: nil)
            }
        }
        let (mine, epoch) = state.withLock { ($0.role == .leader, $0.epoch) }
        if mine {
            set(.standby, epoch: epoch, leader: nil, validUntil: nil)
            do {
                try store.release(holder: holder, epoch: epoch)
            } catch {
                logger.warning("cannot give the leader lease up (it runs out by itself): \(error)")
            }
        }
    }

    /// Ends the campaign (a graceful stop): the lead is given up.
    public func stop() {
        state.withLock { $0.stopped = true }
        wake.signal()
    }

    private func set(_ role: ReplicaRole, epoch: Int64, leader: String?, validUntil: ContinuousClock.Instant?) {
        let (changed, observers) = state.withLock { s -> (Bool, [@Sendable (ReplicaRole, Int64) -> Void]) in
            let changed = s.role != role || (role == .leader && s.epoch != epoch)
            s.role = role
            s.epoch = max(s.epoch, epoch)
            s.leader = leader
            s.validUntil = validUntil
            return (changed, s.observers)
        }
        guard changed else { return }
        logger.notice("replica \(replicaID) is now \(role.rawValue)", metadata: ["epoch": "\(epoch)", "leader": "\(leader ?? "none")"])
        for observer in observers { observer(role, epoch) }
    }
}
