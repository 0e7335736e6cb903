/// The root under which every EdgeFleet topic lives, `edgefleet/v1` by default.
/// One or more topic levels, no wildcards, no empty level, not starting with `$`.
public struct TopicRoot: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public static let `default` = try! TopicRoot("edgefleet/v1")

    public init(_ text: String) throws(IdentifierError) {
        guard !text.isEmpty else { throw IdentifierError("topic root must not be empty") }
        guard !text.hasPrefix("$") else { throw IdentifierError("topic root '\(text)' must not start with '$'") }
        guard !text.contains("+"), !text.contains("#") else {
            throw IdentifierError("topic root '\(text)' must not contain the wildcards + or #")
        }
        guard !text.split(separator: "/", omittingEmptySubsequences: false).contains(where: \.isEmpty) else {
            throw IdentifierError("topic root '\(text)' must not have empty levels (leading, trailing or double '/')")
        }
        guard !text.unicodeScalars.contains(where: { $0.value == 0 }) else {
            throw IdentifierError("topic root must not contain NUL")
        }
        rawValue = text
    }

    public var description: String { rawValue }
}

/// What a site agent publishes about itself.
public enum SiteChannel: String, Sendable, Hashable, CaseIterable {
    case presence, heartbeat, status
}

/// Every topic of the contract, as a value.
public enum FleetTopic: Sendable, Hashable {
    /// `{root}/sites/{site}/presence|heartbeat|status`, published by the site's agent.
    case site(SiteID, SiteChannel)
    /// `{root}/fleet/sites/{site}`: the aggregator's retained view of one site.
    case siteView(SiteID)
    /// `{root}/fleet/status`: the fleet summary.
    case fleetStatus
    /// `{root}/fleet/events`: mode changes, alerts and operation events.
    case fleetEvents
    /// `{root}/aggregator/presence`: the aggregator's own presence (with replicas: the leader's).
    case aggregatorPresence
    /// `{root}/aggregator/replicas/{replica}/presence`: one aggregator replica's presence and
    /// role (replicas on PostgreSQL), with its Last Will.
    case replicaPresence(SiteID)
}

/// How a topic's messages travel (docs/contract.md, "Topics"): the one place that says it, so
/// that no publisher chooses (the agent sent heartbeats at QoS 0 and the simulator at QoS 1).
public struct TopicDelivery: Sendable, Hashable {
    /// MQTT QoS: 0 at most once, 1 at least once.
    public var qos: Int
    /// Kept by the broker for late subscribers.
    public var retained: Bool
}

extension FleetTopic {
    /// The contract's QoS and retain flag for this topic.
    public var delivery: TopicDelivery {
        switch self {
        case .site(_, .presence): TopicDelivery(qos: 1, retained: true)
        case .site(_, .heartbeat): TopicDelivery(qos: 0, retained: false)  // a missed one is not replayed: the next one says more
        case .site(_, .status): TopicDelivery(qos: 1, retained: true)
        case .siteView: TopicDelivery(qos: 1, retained: true)
        case .fleetStatus: TopicDelivery(qos: 1, retained: true)
        case .fleetEvents: TopicDelivery(qos: 1, retained: false)
        case .aggregatorPresence: TopicDelivery(qos: 1, retained: true)
        case .replicaPresence: TopicDelivery(qos: 1, retained: true)
        }
    }
}

/// Why a topic did not parse as one of the contract's topics.
public enum TopicParseError: Error, Sendable, Hashable, CustomStringConvertible {
    case outsideRoot(String)
    case unknownTopic(String)
    case invalidSiteID(topic: String, problem: String)

    public var description: String {
        switch self {
        case .outsideRoot(let t): "topic '\(t)' is not under the EdgeFleet topic root"
        case .unknownTopic(let t): "topic '\(t)' is not an EdgeFleet topic"
        case .invalidSiteID(let t, let p): "topic '\(t)' names an invalid site: \(p)"
        }
    }
}

/// Builds and parses the contract's topic names under one root.
public struct FleetTopics: Sendable, Hashable {
    public let root: TopicRoot

    public init(root: TopicRoot = .default) { self.root = root }

    /// The topic name for `topic`.
    public func name(_ topic: FleetTopic) -> String {
        let r = root.rawValue
        switch topic {
        case .site(let site, let channel): return "\(r)/sites/\(site.rawValue)/\(channel.rawValue)"
        case .siteView(let site): return "\(r)/fleet/sites/\(site.rawValue)"
        case .fleetStatus: return "\(r)/fleet/status"
        case .fleetEvents: return "\(r)/fleet/events"
        case .aggregatorPresence: return "\(r)/aggregator/presence"
        case .replicaPresence(let replica): return "\(r)/aggregator/replicas/\(replica.rawValue)/presence"
        }
    }

    /// The filter matching one channel of every site, e.g. `edgefleet/v1/sites/+/heartbeat`.
    public func everySite(_ channel: SiteChannel) -> String { "\(root.rawValue)/sites/+/\(channel.rawValue)" }

    /// The filter matching everything a site may publish: `{root}/sites/{site}/#`.
    public func siteFilter(_ site: SiteID) -> String { "\(root.rawValue)/sites/\(site.rawValue)/#" }

    /// The filter matching every fleet topic: `{root}/fleet/#`.
    public var fleetFilter: String { "\(root.rawValue)/fleet/#" }

    /// The filter matching every retained site view: `{root}/fleet/sites/+`.
    public var everySiteView: String { "\(root.rawValue)/fleet/sites/+" }

    /// Parses a topic name. Anything that is not exactly one of the contract's
    /// topics, or that names an invalid site, is an error (never a crash).
    public func parse(_ topic: String) -> Result<FleetTopic, TopicParseError> {
        // The site channels (every message from every agent) on the bytes, without splitting.
        if let fast = parseSiteChannel(topic) { return .success(fast) }
        let prefix = root.rawValue + "/"
        guard topic.hasPrefix(prefix) else { return .failure(.outsideRoot(topic)) }
        let levels = topic.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        func site(_ level: Substring) -> Result<SiteID, TopicParseError> {
            do {
                return .success(try SiteID(String(level)))
            } catch {
                return .failure(.invalidSiteID(topic: topic, problem: error.description))
            }
        }
        switch levels.count {
        case 2 where levels[0] == "fleet" && levels[1] == "status": return .success(.fleetStatus)
        case 2 where levels[0] == "fleet" && levels[1] == "events": return .success(.fleetEvents)
        case 2 where levels[0] == "aggregator" && levels[1] == "presence": return .success(.aggregatorPresence)
        case 4 where levels[0] == "aggregator" && levels[1] == "replicas" && levels[3] == "presence":
            return site(levels[2]).map { .replicaPresence($0) }
        case 3 where levels[0] == "fleet" && levels[1] == "sites":
            return site(levels[2]).map { .siteView($0) }
        case 3 where levels[0] == "sites":
            guard let channel = SiteChannel(rawValue: String(levels[2])) else { return .failure(.unknownTopic(topic)) }
            return site(levels[1]).map { .site($0, channel) }
        default:
            return .failure(.unknownTopic(topic))
        }
    }

    /// `{root}/sites/{site}/{channel}` with a valid site id, read on the UTF-8 bytes; nil for
    /// anything else (which `parse` then reads the general way, with its error).
    private func parseSiteChannel(_ topic: String) -> FleetTopic? {
        var topic = topic
        return topic.withUTF8 { bytes -> FleetTopic? in
            let root = root.rawValue.utf8
            let sites: StaticString = "/sites/"
            guard bytes.count > root.count + sites.utf8CodeUnitCount + 2, bytes.starts(with: root) else { return nil }
            var at = root.count
            for i in 0..<sites.utf8CodeUnitCount where bytes[at + i] != sites.utf8Start[i] { return nil }
            at += sites.utf8CodeUnitCount
            let siteStart = at
            while at < bytes.count, bytes[at] != 0x2F {
                let b = bytes[at]
                guard (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || (b == 0x2D && at != siteStart) else { return nil }
                at += 1
            }
            guard at < bytes.count, (1...63).contains(at - siteStart) else { return nil }
            let channel = UnsafeBufferPointer(rebasing: bytes[(at + 1)...])
            let found = SiteChannel.allCases.first { $0.rawValue.utf8.elementsEqual(channel) }
            guard let found, let site = try? SiteID(String(decoding: UnsafeBufferPointer(rebasing: bytes[siteStart..<at]), as: UTF8.self)) else {
                return nil
            }
            return .site(site, found)
        }
    }
}
