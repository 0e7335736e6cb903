#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A stretch of time a site spent in one mode, as the stored `mode-changed` events tell it.
public struct ModeSpan: Codable, Sendable, Hashable {
    public var mode: ConnectivityMode
    public var from: Date
    /// Absent while the site is still in this mode.
    public var to: Date?
    /// The last Azure contact and the deadline the aggregator knew when the span began.
    public var contactAt: Date?
    public var deadline: Date?

    public init(mode: ConnectivityMode, from: Date, to: Date?, contactAt: Date? = nil, deadline: Date? = nil) {
        self.mode = mode
        self.from = from
        self.to = to
        self.contactAt = contactAt
        self.deadline = deadline
    }

    /// Seconds of this span inside `[start, end)`, with an open span running to `end`.
    public func seconds(within start: Date, _ end: Date) -> Double {
        max(0, min(to ?? end, end).timeIntervalSince(max(from, start)))
    }

    /// The share of the site's budget (deadline − contact, normally 30 days) used at `instant`.
    public func budgetShare(at instant: Date) -> Double? {
        guard mode == .semiConnected || mode == .disconnected, let contactAt, let deadline, deadline > contactAt else { return nil }
        return instant.timeIntervalSince(contactAt) / deadline.timeIntervalSince(contactAt)
    }
}

/// A time window for history: `[from, to)`.
public struct HistoryWindow: Codable, Sendable, Hashable {
    public var from: Date
    public var to: Date
    public var seconds: Double { to.timeIntervalSince(from) }

    public init(from: Date, to: Date) {
        self.from = from
        self.to = to
    }

    /// The window `length` long ending at `now`, refused past `maximum` (the event retention).
    public static func ending(at now: Date, length: Duration, maximum: Duration) throws(HistoryError) -> HistoryWindow {
        guard length > .zero else { throw HistoryError("the window must be longer than zero") }
        guard length <= maximum else {
            throw HistoryError("the window \(DurationFormat.format(length)) is longer than the events are kept (\(DurationFormat.format(maximum)))")
        }
        return HistoryWindow(from: now.addingTimeInterval(-length.secondsValue), to: now)
    }
}

public struct HistoryError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A stretch without Azure: from the last contact to the moment the aggregator knew the site
/// was connected again (absent while it lasts).
public struct Outage: Codable, Sendable, Hashable {
    public var from: Date
    public var to: Date?
    public var seconds: Double
    /// It went past its deadline (the site turned disconnected).
    public var pastDeadline: Bool

    public init(from: Date, to: Date?, seconds: Double, pastDeadline: Bool) {
        self.from = from
        self.to = to
        self.seconds = seconds
        self.pastDeadline = pastDeadline
    }
}

/// The largest share of the budget a site used, and when.
public struct BudgetPeak: Codable, Sendable, Hashable {
    public var site: SiteID?
    /// Time without Azure over the budget (deadline − contact); above 1 past the deadline.
    public var share: Double
    public var at: Date
    public var usedS: Double
    public var budgetS: Double

    public init(site: SiteID? = nil, share: Double, at: Date, usedS: Double, budgetS: Double) {
        self.site = site
        self.share = share
        self.at = at
        self.usedS = usedS
        self.budgetS = budgetS
    }
}

/// `GET /v1/sites/{site}/history`: what a site's stored events say about a window.
public struct SiteHistory: Codable, Sendable, Hashable {
    public var site: SiteID
    public var window: HistoryWindow
    /// Seconds in each mode inside the window, where the history is recorded.
    public var modes: [String: Double]
    /// Seconds of the window before the aggregator first stored the site's mode (or after
    /// events older than the retention were removed).
    public var unrecordedS: Double
    public var longestWithoutAzure: Outage?
    public var maxBudgetUsed: BudgetPeak?
    /// Stretches without Azure that overlap the window, and how many went past the deadline.
    public var outages: Int
    public var outagesPastDeadline: Int
    /// The spans that overlap the window, oldest first (the dashboard's timeline).
    public var spans: [ModeSpan]

    /// Works out a site's history from the spans that overlap `window` (oldest first), with
    /// an open span running to `window.to`.
    public static func compute(site: SiteID, spans: [ModeSpan], window: HistoryWindow) -> SiteHistory {
        var modes: [String: Double] = [:]
        for mode in ConnectivityMode.allCases { modes[mode.rawValue] = 0 }
        var recorded = 0.0
        for span in spans {
            let s = span.seconds(within: window.from, window.to)
            modes[span.mode.rawValue, default: 0] += s
            recorded += s
        }
        let outages = Self.outages(spans, until: window.to)
        let longest = outages.max { $0.seconds < $1.seconds }
        var peak: BudgetPeak?
        for span in spans {
            let at = min(span.to ?? window.to, window.to)
            guard let share = span.budgetShare(at: at), let contactAt = span.contactAt, let deadline = span.deadline else { continue }
            if peak.map({ share > $0.share }) ?? true {
                peak = BudgetPeak(share: share, at: at, usedS: at.timeIntervalSince(contactAt), budgetS: deadline.timeIntervalSince(contactAt))
            }
        }
        return SiteHistory(
            site: site, window: window, modes: modes, unrecordedS: max(0, window.seconds - recorded), longestWithoutAzure: longest,
            maxBudgetUsed: peak, outages: outages.count, outagesPastDeadline: outages.filter(\.pastDeadline).count, spans: spans)
    }

    /// Consecutive spans away from Azure (semi-connected, disconnected) form one outage, from
    /// the contact the first one carries to the start of the next connected span.
    static func outages(_ spans: [ModeSpan], until end: Date) -> [Outage] {
        var result: [Outage] = []
        var current: Outage?
        for span in spans {
            switch span.mode {
            case .semiConnected, .disconnected:
                if current == nil {
                    let from = span.contactAt ?? span.from
                    current = Outage(from: from, to: nil, seconds: 0, pastDeadline: false)
                }
                if span.mode == .disconnected { current?.pastDeadline = true }
            case .connected, .unknown:
                if var outage = current {
                    outage.to = span.from
                    outage.seconds = span.from.timeIntervalSince(outage.from)
                    result.append(outage)
                    current = nil
                }
            }
        }
        if var outage = current {
            outage.seconds = end.timeIntervalSince(outage.from)
            result.append(outage)
        }
        return result
    }
}

/// How many sites were in each mode during one slice of time (averaged over the slice).
public struct ModeSample: Codable, Sendable, Hashable {
    public var from: Date
    public var sites: [String: Double]

    public init(from: Date, sites: [String: Double]) {
        self.from = from
        self.sites = sites
    }
}

/// `GET /v1/history`: the fleet over a window.
public struct FleetHistory: Codable, Sendable, Hashable {
    public var window: HistoryWindow
    /// Site-seconds recorded in each mode, and each mode's share of them.
    public var modeSeconds: [String: Double]
    public var modeShare: [String: Double]
    /// The sites that used the most of their budget in the window, most first.
    public var ranking: [BudgetPeak]
    /// `buckets` equal slices of the window, oldest first.
    public var series: [ModeSample]

    public init(window: HistoryWindow, modeSeconds: [String: Double], modeShare: [String: Double], ranking: [BudgetPeak], series: [ModeSample]) {
        self.window = window
        self.modeSeconds = modeSeconds
        self.modeShare = modeShare
        self.ranking = ranking
        self.series = series
    }
}

/// Accumulates spans into per-mode totals and a series of equal slices, one span at a time
/// (the fleet's spans are streamed from the store, never held at once).
public struct FleetSeriesBuilder: Sendable {
    public let window: HistoryWindow
    public let buckets: Int
    private var totals = [Double](repeating: 0, count: ConnectivityMode.allCases.count)
    private var slices: [[Double]]
    private let fromMs: Int64
    private let toMs: Int64
    private let sliceMs: Double

    public init(window: HistoryWindow, buckets: Int) {
        self.window = window
        self.buckets = max(1, buckets)
        self.fromMs = window.from.millisecondsSince1970
        self.toMs = window.to.millisecondsSince1970
        self.sliceMs = Double(toMs - fromMs) / Double(max(1, buckets))
        self.slices = Array(repeating: [Double](repeating: 0, count: ConnectivityMode.allCases.count), count: max(1, buckets))
    }

    /// Adds one span, `[startMs, endMs)` in milliseconds (an open span: `Int64.max`).
    public mutating func add(_ mode: ConnectivityMode, startMs: Int64, endMs: Int64) {
        let a = max(startMs, fromMs)
        let b = min(endMs, toMs)
        guard b > a, let m = ConnectivityMode.allCases.firstIndex(of: mode) else { return }
        totals[m] += Double(b - a) / 1000
        var index = max(0, min(buckets - 1, Int(Double(a - fromMs) / sliceMs)))
        while index < buckets {
            let sliceStart = Double(fromMs) + Double(index) * sliceMs
            let sliceEnd = sliceStart + sliceMs
            if Double(b) <= sliceStart { break }
            let overlap = min(Double(b), sliceEnd) - max(Double(a), sliceStart)
            if overlap > 0 { slices[index][m] += overlap / sliceMs }
            index += 1
        }
    }

    /// Adds `count` spans of `mode` that the database grouped by the slice they start in and the
    /// slice they end in (PostgreSQL's `width_bucket` over the window: 0 before it, `buckets + 1`
    /// after it), with the sums of their starts and ends in milliseconds. Exact, like `add` span
    /// by span: a slice inside the group's range is covered by all of them, the first and last
    /// slices by what the sums say.
    public mutating func addGroup(_ mode: ConnectivityMode, startBucket: Int, endBucket: Int, count: Int, startSumMs: Double, endSumMs: Double) {
        guard count > 0, let m = ConnectivityMode.allCases.firstIndex(of: mode) else { return }
        let n = Double(count)
        let first = max(0, min(buckets - 1, startBucket - 1))
        let last = max(0, min(buckets - 1, endBucket - 1))
        let starts = startBucket <= 0 ? n * Double(fromMs) : startSumMs
        let ends = endBucket > buckets ? n * Double(toMs) : endSumMs
        totals[m] += (ends - starts) / 1000
        func sliceStart(_ k: Int) -> Double { Double(fromMs) + Double(k) * sliceMs }
        if first >= last {
            slices[first][m] += (ends - starts) / sliceMs
            return
        }
        slices[first][m] += (n * sliceStart(first + 1) - starts) / sliceMs
        if last > first + 1 { for k in (first + 1)..<last { slices[k][m] += n } }
        slices[last][m] += (ends - n * sliceStart(last)) / sliceMs
    }

    public func finish(ranking: [BudgetPeak]) -> FleetHistory {
        var seconds: [String: Double] = [:]
        var share: [String: Double] = [:]
        let all = totals.reduce(0, +)
        for (i, mode) in ConnectivityMode.allCases.enumerated() {
            seconds[mode.rawValue] = totals[i]
            share[mode.rawValue] = all > 0 ? totals[i] / all : 0
        }
        let series = slices.enumerated().map { index, counts in
            var sites: [String: Double] = [:]
            for (i, mode) in ConnectivityMode.allCases.enumerated() { sites[mode.rawValue] = (counts[i] * 100).rounded() / 100 }
            return ModeSample(from: Date(millisecondsSince1970: fromMs + Int64(Double(index) * sliceMs)), sites: sites)
        }
        return FleetHistory(window: window, modeSeconds: seconds, modeShare: share, ranking: ranking, series: series)
    }
}

/// Which stored events to read: `GET /v1/events` and `edgefleet events`.
public struct EventQuery: Sendable, Hashable {
    public var site: SiteID?
    public var types: Set<FleetEventType>
    public var since: Date?
    public var until: Date?
    /// Only events after this id (the page cursor).
    public var after: Int64?
    public var limit: Int

    public init(site: SiteID? = nil, types: Set<FleetEventType> = [], since: Date? = nil, until: Date? = nil, after: Int64? = nil, limit: Int = 100) {
        self.site = site
        self.types = types
        self.since = since
        self.until = until
        self.after = after
        self.limit = limit
    }
}

/// One page of stored events, oldest first; `nextCursor` asks for the page after it, absent
/// on the last page (as it stands now: events stored later come after it).
public struct EventPage: Codable, Sendable, Hashable {
    public var events: [FleetEvent]
    public var nextCursor: String?

    public init(events: [FleetEvent], nextCursor: String?) {
        self.events = events
        self.nextCursor = nextCursor
    }
}

/// What an event store keeps of an event besides its indexed columns (id, instant, site, type):
/// the optional fields, with instants as milliseconds. About half the size of the event's JSON.
public struct StoredEventBody: Codable, Sendable, Hashable {
    var from: String?
    var to: String?
    var level: AlertLevel?
    var remainingS: Double?
    var operationID: String?
    var kind: OperationKind?
    var note: String?
    var epoch: Int64?
    var rollout: String?
    var contactMs: Int64?
    var deadlineMs: Int64?

    public init(_ e: FleetEvent) {
        (from, to, level, remainingS, operationID, kind, note, epoch, rollout) =
            (e.from, e.to, e.level, e.remainingS, e.operationID, e.kind, e.note, e.epoch, e.rollout)
        contactMs = e.contactAt?.millisecondsSince1970
        deadlineMs = e.deadline?.millisecondsSince1970
    }

    /// The JSON text stored.
    public static func encode(_ event: FleetEvent) throws -> String {
        try FleetJSON.text(StoredEventBody(event))
    }

    /// The event back from its columns and stored text (nil when the type or site is not valid).
    public static func event(id: Int64, atMs: Int64, site: String?, type: String, body: String) -> FleetEvent? {
        guard let type = FleetEventType(rawValue: type), let b = try? FleetJSON.decode(StoredEventBody.self, from: Array(body.utf8)) else { return nil }
        var siteID: SiteID?
        if let site {
            guard let valid = try? SiteID(site) else { return nil }
            siteID = valid
        }
        var event = FleetEvent(
            type: type, site: siteID, at: Date(millisecondsSince1970: atMs), from: b.from, to: b.to, level: b.level, remainingS: b.remainingS,
            operationID: b.operationID, kind: b.kind, note: b.note, epoch: b.epoch, rollout: b.rollout,
            contactAt: b.contactMs.map(Date.init(millisecondsSince1970:)), deadline: b.deadlineMs.map(Date.init(millisecondsSince1970:)))
        event.id = id
        return event
    }
}

/// The fleet's per-site peak of budget used, gathered span by span (the top N at the end).
public struct BudgetRanking: Sendable {
    private var best: [String: (share: Double, atMs: Int64, contactMs: Int64, deadlineMs: Int64)] = [:]
    let toMs: Int64

    public init(window: HistoryWindow) {
        toMs = window.to.millisecondsSince1970
    }

    /// A span away from Azure (semi-connected or disconnected) with its contact and deadline.
    public mutating func add(site: String, endMs: Int64, contactMs: Int64, deadlineMs: Int64) {
        guard deadlineMs > contactMs else { return }
        let atMs = min(endMs, toMs)
        let share = Double(atMs - contactMs) / Double(deadlineMs - contactMs)
        if let known = best[site], known.share >= share { return }
        best[site] = (share, atMs, contactMs, deadlineMs)
    }

    public func top(_ n: Int) -> [BudgetPeak] {
        best.sorted { $0.value.share != $1.value.share ? $0.value.share > $1.value.share : $0.key < $1.key }.prefix(n).compactMap { site, peak in
            guard let id = try? SiteID(site) else { return nil }
            return BudgetPeak(
                site: id, share: peak.share, at: Date(millisecondsSince1970: peak.atMs), usedS: Double(peak.atMs - peak.contactMs) / 1000,
                budgetS: Double(peak.deadlineMs - peak.contactMs) / 1000)
        }
    }
}
