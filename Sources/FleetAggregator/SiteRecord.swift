public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Everything the aggregator keeps about one site: what its agent said, and what the
/// aggregator last published about it. Stored as one JSON document per site in SQLite.
public struct SiteRecord: Codable, Sendable, Hashable {
    public var site: SiteID

    // Presence: the newest session and whether the agent said it is offline.
    public var session: UInt64?
    /// The agent instance of the newest session, when its agent names one.
    public var instance: String?
    public var presence: PresenceState?
    public var offlineReason: OfflineReason?
    public var presenceAt: Date?
    public var agent: AgentInfo?
    public var heartbeatIntervalS: Double = 10

    // Heartbeats, in the aggregator's clock.
    public var lastSeq: UInt64?
    public var lastHeartbeatAt: Date?
    /// When anything was last received from the agent.
    public var lastSeenAt: Date?
    /// Receive time minus the age the newest heartbeat reported.
    public var lastAzureContactAt: Date?
    public var azureReachable: Bool?
    public var earliestCertificateExpiry: Date?
    public var certificateSource: String?

    // Status.
    public var statusAt: Date?
    public var checks = CheckCounts()
    /// The checks of the newest status, for the operator surfaces.
    public var checkResults: [CheckResult] = []
    public var capabilities: [String: Bool] = [:]
    public var cluster: ClusterInfo?
    /// The labels of the newest status (`SiteLabels`).
    public var labels: [String: String] = [:]

    // What was last evaluated and published.
    public var mode: ConnectivityMode?
    public var modeSince: Date?
    public var liveness: Liveness?
    public var alert: AlertLevel?
    /// The highest deadline-alert level already announced for the current countdown.
    public var alertAnnounced: AlertLevel?
    public var expiredAt: Date?
    public var viewPublishedAt: Date?

    // Counters.
    public var seqGaps: UInt64 = 0
    public var duplicates: UInt64 = 0

    public init(site: SiteID) { self.site = site }

    /// Every field but `site` is read if present: a record written by an older version
    /// (before a field existed) still loads, so an upgrade never forgets a site's contact
    /// time or its passed deadline. Add new fields with a default, never as required.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        site = try c.decode(SiteID.self, forKey: .site)
        session = try c.decodeIfPresent(UInt64.self, forKey: .session)
        instance = try c.decodeIfPresent(String.self, forKey: .instance)
        presence = try c.decodeIfPresent(PresenceState.self, forKey: .presence)
        offlineReason = try c.decodeIfPresent(OfflineReason.self, forKey: .offlineReason)
        presenceAt = try c.decodeIfPresent(Date.self, forKey: .presenceAt)
        agent = try c.decodeIfPresent(AgentInfo.self, forKey: .agent)
        heartbeatIntervalS = try c.decodeIfPresent(Double.self, forKey: .heartbeatIntervalS) ?? 10
        lastSeq = try c.decodeIfPresent(UInt64.self, forKey: .lastSeq)
        lastHeartbeatAt = try c.decodeIfPresent(Date.self, forKey: .lastHeartbeatAt)
        lastSeenAt = try c.decodeIfPresent(Date.self, forKey: .lastSeenAt)
        lastAzureContactAt = try c.decodeIfPresent(Date.self, forKey: .lastAzureContactAt)
        azureReachable = try c.decodeIfPresent(Bool.self, forKey: .azureReachable)
        earliestCertificateExpiry = try c.decodeIfPresent(Date.self, forKey: .earliestCertificateExpiry)
        certificateSource = try c.decodeIfPresent(String.self, forKey: .certificateSource)
        statusAt = try c.decodeIfPresent(Date.self, forKey: .statusAt)
        checks = try c.decodeIfPresent(CheckCounts.self, forKey: .checks) ?? CheckCounts()
        checkResults = try c.decodeIfPresent([CheckResult].self, forKey: .checkResults) ?? []
        capabilities = try c.decodeIfPresent([String: Bool].self, forKey: .capabilities) ?? [:]
        cluster = try c.decodeIfPresent(ClusterInfo.self, forKey: .cluster)
        labels = try c.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
        mode = try c.decodeIfPresent(ConnectivityMode.self, forKey: .mode)
        modeSince = try c.decodeIfPresent(Date.self, forKey: .modeSince)
        liveness = try c.decodeIfPresent(Liveness.self, forKey: .liveness)
        alert = try c.decodeIfPresent(AlertLevel.self, forKey: .alert)
        alertAnnounced = try c.decodeIfPresent(AlertLevel.self, forKey: .alertAnnounced)
        expiredAt = try c.decodeIfPresent(Date.self, forKey: .expiredAt)
        viewPublishedAt = try c.decodeIfPresent(Date.self, forKey: .viewPublishedAt)
        seqGaps = try c.decodeIfPresent(UInt64.self, forKey: .seqGaps) ?? 0
        duplicates = try c.decodeIfPresent(UInt64.self, forKey: .duplicates) ?? 0
    }

    /// What the evaluator needs.
    public var knowledge: SiteKnowledge {
        SiteKnowledge(
            lastAzureContactAt: lastAzureContactAt, earliestCertificateExpiry: earliestCertificateExpiry,
            lastSeenAt: lastSeenAt, heartbeatInterval: .milliseconds(Int64((heartbeatIntervalS * 1000).rounded())),
            presenceOffline: presence == .offline, expiredAt: expiredAt, previousMode: mode, modeSince: modeSince)
    }
}

/// What applying one message did to a record.
public enum ApplyOutcome: Sendable, Hashable {
    /// Taken into the record.
    case applied
    /// A repeat or a leftover of an older session; nothing changed.
    case ignored(String)
    /// A heartbeat or status from a site that never announced itself (no presence): no site is made of it.
    case unannounced
    /// A new site while the fleet is at its cap.
    case overLimit
}

extension SiteRecord {
    /// How a message's session stands to the newest one known (docs/contract.md, "Sessions").
    enum SessionRelation { case current, newer, older }

    /// A message of another agent instance is a new session whatever its counter says (a
    /// restarted agent, or one whose state file was lost, is heard at once). Within one
    /// instance, or for agents that name none, the counter orders sessions; but once nothing
    /// has been taken from the site for `silenceLimit` seconds (offlineAfter heartbeat
    /// intervals) any session is taken as new, so a forged high counter silences a site for
    /// at most that long.
    func relation(session s: UInt64, instance i: String?, now: Date, silenceLimit: Double) -> SessionRelation {
        guard let session else { return .newer }
        if let i, i != instance { return .newer }
        if s > session { return .newer }
        if s == session { return .current }
        return silent(now: now, limit: silenceLimit) ? .newer : .older
    }

    func silent(now: Date, limit: Double) -> Bool {
        lastSeenAt.map { now.timeIntervalSince($0) >= limit } ?? true
    }

    private mutating func adopt(session s: UInt64, instance i: String?) {
        if s != session || i != instance { lastSeq = nil }
        session = s
        instance = i
    }

    /// Applies a validated message received at `now` (the aggregator's clock). The rules
    /// are docs/contract.md's: sessions as `relation` says; an offline presence of another
    /// instance (the Last Will of an earlier run) is ignored; heartbeats count `seq` gaps and
    /// drop repeats; contact time is receive time minus age.
    /// `live` is false for a retained message the broker replays on subscribing: it says
    /// what the agent last said, not that it is there now, so it does not count as seen.
    mutating func apply(_ input: SiteInput, now: Date, live: Bool = true, offlineAfterIntervals: Int = 10) -> ApplyOutcome {
        let silenceLimit = Double(max(1, offlineAfterIntervals)) * heartbeatIntervalS
        switch input {
        case .presence(let p):
            if p.state == .offline, let theirs = p.instance, let ours = instance, theirs != ours {
                return .ignored("offline presence of instance \(theirs), not the current \(ours)")
            }
            if relation(session: p.session, instance: p.instance, now: now, silenceLimit: silenceLimit) == .older {
                return .ignored("presence of session \(p.session), older than \(session ?? 0)")
            }
            adopt(session: p.session, instance: p.instance)
            presence = p.state
            offlineReason = p.state == .offline ? p.reason : nil
            presenceAt = p.at
            if let agent = p.agent { self.agent = agent }
            if let interval = p.heartbeatIntervalS { heartbeatIntervalS = interval }
            if p.state == .online, live { lastSeenAt = now }
            return .applied

        case .heartbeat(let h):
            switch relation(session: h.session, instance: h.instance, now: now, silenceLimit: silenceLimit) {
            case .older:
                duplicates += 1
                return .ignored("heartbeat of session \(h.session), older than \(session ?? 0)")
            case .current:
                if let lastSeq, h.seq <= lastSeq {
                    // A repeat or a late one: a few behind. Further behind than offlineAfter
                    // heartbeats, the counter itself went back (a forged seq far ahead of the
                    // agent's): taken, so that a forgery silences the site for at most
                    // offlineAfter intervals (and a big one for none); so is anything after
                    // that much silence.
                    guard lastSeq - h.seq > UInt64(max(1, offlineAfterIntervals)) || silent(now: now, limit: silenceLimit) else {
                        duplicates += 1
                        return .ignored("heartbeat seq \(h.seq) after \(lastSeq)")
                    }
                } else if let lastSeq, h.seq > lastSeq &+ 1 {
                    // Saturating: a jump to UInt64.max from a broken agent must not trap.
                    let (sum, overflow) = seqGaps.addingReportingOverflow(h.seq &- lastSeq &- 1)
                    seqGaps = overflow ? .max : sum
                }
            case .newer:
                adopt(session: h.session, instance: h.instance)
            }
            // A heartbeat is proof the agent is there, whatever presence said last.
            if live {
                presence = .online
                offlineReason = nil
            }
            lastSeq = h.seq
            lastHeartbeatAt = now
            lastSeenAt = now
            azureReachable = h.azure.reachable
            // The agent's reported age is the truth (it keeps the contact on disk and on its
            // monotonic clock); `null` (never, or state lost) does not erase what we knew.
            // Receive time minus age wobbles by the transit time from one heartbeat to the
            // next; a contact less than a second earlier than the known one is that wobble,
            // not news, and is ignored so that the deadline does not jitter backwards.
            if let contact = h.azureContact(receivedAt: now) {
                if let known = lastAzureContactAt, contact < known, known.timeIntervalSince(contact) < 1 {
                    // transit jitter
                } else {
                    lastAzureContactAt = contact
                }
            }
            // A report with an error (a file the agent could not read) says nothing about the
            // certificates: the known expiry stands, or a site past it would flip to connected.
            if let certificates = h.certificates, certificates.error == nil {
                earliestCertificateExpiry = certificates.earliestNotAfter
                certificateSource = certificates.source
            }
            return .applied

        case .status(let s):
            // Ordered by session and arrival, not by the agent's clock (which may be wrong):
            // only a status of an older session is stale.
            switch relation(session: s.session, instance: s.instance, now: now, silenceLimit: silenceLimit) {
            case .older: return .ignored("status of session \(s.session), older than \(session ?? 0)")
            case .newer where live: adopt(session: s.session, instance: s.instance)
            case .newer, .current: break
            }
            statusAt = s.at
            checks = CheckCounts(s.checks)
            checkResults = s.checks
            capabilities = s.capabilities
            cluster = s.cluster
            labels = s.labels ?? [:]
            if live { lastSeenAt = now }
            return .applied
        }
    }
}

/// Written for every site whose record changed (5,000 at once when a fleet reconnects).
extension SiteRecord: JSONWritable {
    public func write(to json: inout JSONWriter) throws {
        json.beginObject()
        try json.field("agent", agent)
        json.field("alert", alert)
        json.field("alertAnnounced", alertAnnounced)
        json.field("azureReachable", azureReachable)
        json.field("capabilities", capabilities)
        json.field("certificateSource", certificateSource)
        try json.field("checkResults", checkResults)
        try json.field("checks", checks)
        try json.field("cluster", cluster)
        json.field("duplicates", duplicates)
        json.field("earliestCertificateExpiry", earliestCertificateExpiry)
        json.field("expiredAt", expiredAt)
        try json.field("heartbeatIntervalS", heartbeatIntervalS)
        json.field("instance", instance)
        json.field("labels", labels)
        json.field("lastAzureContactAt", lastAzureContactAt)
        json.field("lastHeartbeatAt", lastHeartbeatAt)
        json.field("lastSeenAt", lastSeenAt)
        json.field("lastSeq", lastSeq)
        json.field("liveness", liveness)
        json.field("mode", mode)
        json.field("modeSince", modeSince)
        json.field("offlineReason", offlineReason)
        json.field("presence", presence)
        json.field("presenceAt", presenceAt)
        json.field("seqGaps", seqGaps)
        json.field("session", session)
        json.field("site", site)
        json.field("statusAt", statusAt)
        json.field("viewPublishedAt", viewPublishedAt)
        json.endObject()
    }
}
