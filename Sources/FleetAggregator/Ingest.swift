public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Why an incoming message was dropped. Each is counted (`edgefleet_messages_rejected_total{reason=...}`).
public enum RejectReason: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Larger than `maxPayloadBytes`.
    case tooLarge = "too-large"
    /// Not a topic of the contract (`{root}/sites/{site}/presence|heartbeat|status`).
    case unknownTopic = "unknown-topic"
    /// The topic's site level is not a valid site id.
    case invalidSiteID = "invalid-site-id"
    /// Not JSON, or not a JSON object.
    case malformedJSON = "malformed-json"
    /// A `schema` other than the one this version reads on that topic.
    case unknownSchema = "unknown-schema"
    /// JSON of the right schema with a missing or mistyped field.
    case invalidPayload = "invalid-payload"
    /// The payload's `site` is not the topic's.
    case siteMismatch = "site-mismatch"
    /// `lastContactAgeS` below zero (or not a finite number).
    case negativeAge = "negative-age"
    /// A time or age no real agent can send: before 2020, or years in the future.
    case absurdTimestamp = "absurd-timestamp"
    /// A heartbeat or status from a site that has not announced itself with a presence.
    case unannouncedSite = "unannounced-site"
    /// A presence from a new site while the fleet is at `maxSites`.
    case siteLimit = "site-limit"

    public var description: String { rawValue }
}

/// A validated message from a site's agent.
public enum SiteInput: Sendable, Hashable {
    case presence(Presence)
    case heartbeat(Heartbeat)
    case status(SiteStatus)

    public var site: SiteID {
        switch self {
        case .presence(let p): p.site
        case .heartbeat(let h): h.site
        case .status(let s): s.site
        }
    }

    /// The agent instance the message names, if it names one.
    public var instance: String? {
        switch self {
        case .presence(let p): p.instance
        case .heartbeat(let h): h.instance
        case .status(let s): s.instance
        }
    }
}

/// A dropped message: the reason, the topic and a short explanation for the log.
public struct Rejection: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: RejectReason
    public var topic: String
    public var detail: String

    public var description: String { "\(reason) on \(topic): \(detail)" }
}

/// Decodes and validates what arrives on the site topics. Never throws anything but a
/// `Rejection`; a message it returns is safe to apply.
public struct IngestDecoder: Sendable {
    public var topics: FleetTopics
    public var maxPayloadBytes: Int
    private let decoder = FleetJSON.decoder()

    /// Times before this are no real agent's (the product did not exist).
    static let earliest = Date(timeIntervalSince1970: 1_577_836_800)  // 2020-01-01
    static let earliestCertificate = Date(timeIntervalSince1970: 946_684_800)  // 2000-01-01
    /// How far ahead of the aggregator's clock a site's clock may be before its times are absurd.
    static let maximumLead: TimeInterval = 5 * 365 * 86_400
    /// Ages beyond this (about 20 years) are absurd.
    static let maximumAge: Double = 20 * 365 * 86_400

    public init(topics: FleetTopics, maxPayloadBytes: Int) {
        self.topics = topics
        self.maxPayloadBytes = maxPayloadBytes
    }

    public func decode(topic: String, payload: [UInt8], now: Date) -> Result<SiteInput, Rejection> {
        func reject(_ reason: RejectReason, _ detail: String) -> Result<SiteInput, Rejection> {
            .failure(Rejection(reason: reason, topic: topic, detail: detail))
        }
        guard payload.count <= maxPayloadBytes else {
            return reject(.tooLarge, "\(payload.count) bytes, the limit is \(maxPayloadBytes)")
        }
        let site: SiteID
        let channel: SiteChannel
        switch topics.parse(topic) {
        case .success(.site(let s, let c)):
            site = s
            channel = c
        case .success:
            return reject(.unknownTopic, "not a site topic")
        case .failure(.invalidSiteID(_, let problem)):
            return reject(.invalidSiteID, problem)
        case .failure(let error):
            return reject(.unknownTopic, error.description)
        }

        let input: SiteInput
        do {
            switch channel {
            case .presence: input = .presence(try decoder.decode(Presence.self, from: Data(payload)))
            case .heartbeat:
                // The canonical shape by a single scan; anything else by the full decoder (the definition).
                input = .heartbeat(try HeartbeatScanner.scan(payload) ?? decoder.decode(Heartbeat.self, from: Data(payload)))
            case .status: input = .status(try StatusScanner.scan(payload) ?? decoder.decode(SiteStatus.self, from: Data(payload)))
            }
        } catch {
            return .failure(classify(error, topic: topic, payload: payload))
        }
        guard input.site == site else {
            return reject(.siteMismatch, "the payload says site '\(input.site)'")
        }

        if let instance = input.instance, !AgentInstance.isValid(instance) {
            return reject(.invalidPayload, "instance must be 1 to 64 characters of a-z, 0-9 and '-'")
        }
        func plausible(_ date: Date) -> Bool {
            date >= Self.earliest && date.timeIntervalSince(now) <= Self.maximumLead
        }
        switch input {
        case .presence(let p):
            guard plausible(p.at) else { return reject(.absurdTimestamp, "at \(RFC3339.format(p.at))") }
            if let interval = p.heartbeatIntervalS, !(interval.isFinite && interval >= 0.1 && interval <= 86_400) {
                return reject(.invalidPayload, "heartbeatIntervalS \(interval) is not between 0.1 s and one day")
            }
        case .heartbeat(let h):
            guard plausible(h.sentAt) else { return reject(.absurdTimestamp, "sentAt \(RFC3339.format(h.sentAt))") }
            if let age = h.azure.lastContactAgeS {
                guard age.isFinite, age >= 0 else { return reject(.negativeAge, "lastContactAgeS \(age)") }
                guard age <= Self.maximumAge else { return reject(.absurdTimestamp, "lastContactAgeS \(age)") }
            }
            // A certificate that expired before 2000 is no real cluster's (a zero date, a bug):
            // taken at face value it would make the site disconnected at once.
            if let expiry = h.certificates?.earliestNotAfter, expiry < Self.earliestCertificate {
                return reject(.absurdTimestamp, "certificates.earliestNotAfter \(RFC3339.format(expiry))")
            }
        case .status(let s):
            guard plausible(s.at) else { return reject(.absurdTimestamp, "at \(RFC3339.format(s.at))") }
            if let labels = s.labels, let problem = SiteLabels.problem(labels) { return reject(.invalidPayload, "labels: \(problem)") }
        }
        return .success(input)
    }

    /// Tells malformed JSON from a foreign schema from a payload with a bad field. Runs
    /// only for messages that failed to decode, so good traffic pays for one decode.
    private func classify(_ error: any Error, topic: String, payload: [UInt8]) -> Rejection {
        struct SchemaOnly: Decodable { var schema: String? }
        if let error = error as? PayloadError {
            switch error {
            case .unsupportedSchema(let found, _): return Rejection(reason: .unknownSchema, topic: topic, detail: "schema '\(found)'")
            case .invalidSiteID(let problem): return Rejection(reason: .siteMismatch, topic: topic, detail: "the payload's site: \(problem)")
            case .invalidTimestamp(let text): return Rejection(reason: .invalidPayload, topic: topic, detail: "timestamp '\(text)'")
            }
        }
        guard let probe = try? decoder.decode(SchemaOnly.self, from: Data(payload)) else {
            return Rejection(reason: .malformedJSON, topic: topic, detail: "not a JSON object")
        }
        if probe.schema == nil {
            return Rejection(reason: .unknownSchema, topic: topic, detail: "no schema field")
        }
        return Rejection(reason: .invalidPayload, topic: topic, detail: Self.describe(error))
    }

    static func describe(_ error: any Error) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            let parent = path(context)
            return "missing field \(parent.isEmpty ? "" : parent + ".")\(key.stringValue)"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context),
            DecodingError.dataCorrupted(let context):
            return "field \(path(context)): \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }
}
