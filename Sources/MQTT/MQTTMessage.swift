/// MQTT v5 properties carried by a PUBLISH that an application may care about.
public struct MQTTPublishProperties: Sendable, Hashable {
    /// How long the broker keeps the message for a subscriber that is not there yet.
    public var messageExpiry: Duration?
    /// Name/value pairs; names may repeat, order is kept.
    public var userProperties: [UserProperty]
    public var contentType: String?
    public var responseTopic: String?
    public var correlationData: [UInt8]?

    public init(
        messageExpiry: Duration? = nil, userProperties: [UserProperty] = [], contentType: String? = nil,
        responseTopic: String? = nil, correlationData: [UInt8]? = nil
    ) {
        self.messageExpiry = messageExpiry
        self.userProperties = userProperties
        self.contentType = contentType
        self.responseTopic = responseTopic
        self.correlationData = correlationData
    }

    public var isEmpty: Bool {
        messageExpiry == nil && userProperties.isEmpty && contentType == nil && responseTopic == nil
            && correlationData == nil
    }

    /// One MQTT v5 user property.
    public struct UserProperty: Sendable, Hashable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }
}

/// A message received from the broker, copied out of libmosquitto's callback.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    /// Whether the broker delivered this from its retained store (a late subscriber).
    public var retain: Bool
    public var properties: MQTTPublishProperties

    public init(
        topic: String, payload: [UInt8], qos: MQTTQoS = .atMostOnce, retain: Bool = false,
        properties: MQTTPublishProperties = MQTTPublishProperties()
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }

    /// The payload decoded as UTF-8 (invalid sequences replaced).
    public var payloadString: String { String(decoding: payload, as: UTF8.self) }
}

/// The state of the client's link to the broker.
public enum MQTTConnectionState: Sendable, Hashable, CustomStringConvertible {
    /// Not started yet.
    case idle
    /// A connection attempt is under way.
    case connecting
    /// The broker accepted the connection; `sessionPresent` when it kept an earlier session.
    case connected(sessionPresent: Bool)
    /// The link is down; `reason` is why (`nil` after a clean disconnect). The client
    /// tries again after its backoff unless it is shutting down.
    case disconnected(reason: MQTTError?)
    /// Shut down for good; the handle is destroyed.
    case stopped

    public var isConnected: Bool {
        if case .connected = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .idle: "idle"
        case .connecting: "connecting"
        case .connected(let present): present ? "connected (session resumed)" : "connected"
        case .disconnected(let reason): reason.map { "disconnected: \($0)" } ?? "disconnected"
        case .stopped: "stopped"
        }
    }
}

/// The messages a client receives, in arrival order: an `AsyncSequence` of
/// `MQTTMessage`. The loop thread hands them over in batches (one per socket
/// read pass), which this sequence unpacks. One consumer; it ends when the
/// client shuts down.
public struct MQTTMessages: AsyncSequence, Sendable {
    public typealias Element = MQTTMessage
    let batches: AsyncStream<[MQTTMessage]>

    public struct AsyncIterator: AsyncIteratorProtocol {
        var batches: AsyncStream<[MQTTMessage]>.AsyncIterator
        var current: [MQTTMessage] = []
        var index = 0

        public mutating func next() async -> MQTTMessage? {
            while index == current.count {
                guard let batch = await batches.next() else { return nil }
                current = batch
                index = 0
            }
            defer { index += 1 }
            return current[index]
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> MQTTMessage? {
            while index == current.count {
                guard let batch = await batches.next(isolation: actor) else { return nil }
                current = batch
                index = 0
            }
            defer { index += 1 }
            return current[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(batches: batches.makeAsyncIterator())
    }
}
